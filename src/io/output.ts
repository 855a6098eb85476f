/**
 * Output checkpoint directories, published atomically: everything is written into a staging directory beside
 * the target (same filesystem, so the final rename is atomic) and renamed into place only when complete. An
 * interrupted run leaves at most a `.moe-staging-*` directory, never a half checkpoint under the target name.
 */
import { copyFile, mkdir, readFile, readdir, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fail, isMoeError } from '../errors.js';
import type { HFConfig } from './checkpoint.js';
import { PASSTHROUGH_FILES } from './checkpoint.js';
import { editJsonText, type JsonStyle } from '../model/configjson.js';
import { CheckpointWriter, type TensorSpec, type WriterOptions } from './writer.js';

export interface OutputOptions {
  force?: boolean;
  /** input directory: refused as output, and the source of tokenizer/generation files */
  inputDir?: string;
}

export async function pathExists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/** The real path of p (symlinks resolved) when it exists, else its absolute path. */
async function canonical(p: string): Promise<string> {
  try {
    return await realpath(p);
  } catch {
    // resolve the nearest existing ancestor so a target under a symlinked parent compares correctly
    const parent = dirname(resolve(p));
    if (parent === resolve(p)) return resolve(p);
    return join(await canonical(parent), basename(resolve(p)));
  }
}

function inside(child: string, parent: string): boolean {
  const r = relative(parent, child);
  return r !== '' && r !== '..' && !r.startsWith('..' + sep) && !isAbsolute(r);
}

/** Check an output target before any work is done, so a run fails in its first second, not its last. */
export async function checkOutputTarget(out: string, opts: OutputOptions = {}): Promise<void> {
  const target = await canonical(out);
  if (opts.inputDir) {
    const input = await canonical(opts.inputDir);
    if (input === target) fail('OutputExists', `--out must differ from --model (${out}): the input is never modified`);
    if (inside(target, input)) fail('OutputExists', `--out ${out} is inside the input model directory; the input is never modified`);
    if (inside(input, target)) fail('OutputExists', `--out ${out} contains the input model; refusing to replace it`);
  }
  if (await pathExists(target)) {
    if (!opts.force) fail('OutputExists', `output ${out} already exists (use --force to replace it)`);
  }
  // missing parents are created with the staging directory (like mkdir -p); the nearest existing ancestor must be
  // a directory. Nothing is created here, so dry runs leave no trace.
  let ancestor = dirname(target);
  for (;;) {
    const st = await stat(ancestor).catch(() => undefined);
    if (st) {
      if (!st.isDirectory()) fail('OutputError', `cannot create ${out}: ${ancestor} is not a directory`);
      break;
    }
    const up = dirname(ancestor);
    if (up === ancestor) break;
    ancestor = up;
  }
}

/**
 * The staging directory of an output is named after the output alone, so that a run killed mid-write and
 * restarted with the same command finds what it already wrote (see CheckpointWriter.create).
 */
export function stagingDirFor(out: string): string {
  const target = resolve(out);
  return join(dirname(target), `.moe-staging-${basename(target)}`);
}

const LOCK_FILE = '.moe-lock';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** One writer per staging directory: a second concurrent run to the same output is refused, a dead one's lock is taken over. */
async function lockStaging(staging: string, out: string): Promise<void> {
  const lock = join(staging, LOCK_FILE);
  const holder = Number((await readFile(lock, 'utf8').catch(() => '')).trim());
  if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && alive(holder)) {
    fail('OutputExists', `another moe process (pid ${holder}) is writing ${out}; wait for it to finish or stop it`);
  }
  await writeFile(lock, String(process.pid));
}

/** Staging directories not yet published or discarded, so an interrupt handler can remove them. */
const live = new Set<OutputDir>();

/**
 * Remove every unpublished staging directory (await it in a SIGINT/SIGTERM handler before
 * exiting with ExitCode.interrupted): an interrupted run leaves nothing behind, not even a staging directory.
 */
export async function discardActiveOutputs(): Promise<void> {
  await Promise.allSettled([...live].map((o) => o.discard()));
}

export class OutputDir {
  private constructor(
    readonly target: string,
    /** where files are written until publish() */
    readonly staging: string,
    private readonly opts: OutputOptions,
  ) {}

  /**
   * Create (or, after an interrupted run of the same output, reopen) the staging directory for `out`. What an
   * earlier run left there is reused only where it provably matches the new plan (the writer checks headers).
   */
  static async create(out: string, opts: OutputOptions = {}): Promise<OutputDir> {
    await checkOutputTarget(out, opts);
    const staging = stagingDirFor(out);
    try {
      await mkdir(staging, { recursive: true });
      await lockStaging(staging, out);
    } catch (e) {
      if (isMoeError(e)) throw e;
      fail('OutputError', `cannot create a staging directory beside ${out}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const dir = new OutputDir(resolve(out), staging, opts);
    live.add(dir);
    return dir;
  }

  path(name: string): string {
    return join(this.staging, name);
  }

  async writeJson(name: string, value: unknown): Promise<void> {
    try {
      await writeFile(this.path(name), JSON.stringify(value, null, 2) + '\n');
    } catch (e) {
      fail('OutputError', `cannot write ${this.path(name)}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }

  /** config.json; with the input's text, written as an edit of it (untouched values keep their bytes and types) */
  async writeConfig(config: HFConfig, originalText?: string, style?: JsonStyle): Promise<void> {
    if (originalText === undefined) {
      await this.writeJson('config.json', config);
      return;
    }
    try {
      await writeFile(this.path('config.json'), editJsonText(originalText, config, style));
    } catch (e) {
      fail('OutputError', `cannot write ${this.path('config.json')}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }

  /** Tokenizer and generation files travel with every output unchanged. */
  async copyPassthrough(fromDir: string): Promise<string[]> {
    const copied: string[] = [];
    const present = new Set(await readdir(fromDir));
    for (const f of PASSTHROUGH_FILES) {
      if (present.has(f)) {
        try {
          await copyFile(join(fromDir, f), this.path(f));
        } catch (e) {
          fail('OutputError', `cannot copy ${f} into ${this.staging}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        }
        copied.push(f);
      }
    }
    return copied;
  }

  async openWriter(tensors: readonly TensorSpec[], opts?: WriterOptions): Promise<CheckpointWriter> {
    return CheckpointWriter.create(this.staging, tensors, opts);
  }

  /**
   * Rename the staging directory into place. An existing target (allowed by --force) is replaced. The run's own
   * bookkeeping files (`.moe-*`: lock, journal, resume state) are removed first and never published.
   */
  async publish(): Promise<void> {
    try {
      for (const f of await readdir(this.staging)) if (f.startsWith('.moe-')) await rm(join(this.staging, f), { recursive: true, force: true });
      if (await pathExists(this.target)) {
        if (!this.opts.force) fail('OutputExists', `output ${this.target} appeared while running (use --force to replace it)`);
        const old = `${this.staging}.old`;
        await rename(this.target, old);
        await rename(this.staging, this.target);
        await rm(old, { recursive: true, force: true });
      } else {
        await rename(this.staging, this.target);
      }
      live.delete(this);
    } catch (e) {
      if (isMoeError(e)) throw e;
      fail('OutputError', `cannot move ${this.staging} into place as ${this.target}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }

  async discard(): Promise<void> {
    live.delete(this);
    await rm(this.staging, { recursive: true, force: true });
  }
}
