/**
 * Output checkpoint directories, published atomically: everything is written into a staging directory beside
 * the target (same filesystem, so the final rename is atomic) and renamed into place only when complete. An
 * interrupted run leaves at most a `.moe-staging-*` directory, never a half checkpoint under the target name.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { constants } from 'node:fs';
import { access, copyFile, lstat, mkdir, readFile, readdir, realpath, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fail, isMoeError } from '../errors.js';
import type { HFConfig } from './checkpoint.js';
import { PASSTHROUGH_FILES } from './checkpoint.js';
import { editJsonText, type JsonStyle } from '../model/configjson.js';
import { checkPassthroughFile } from './files.js';
import { failWrite, osCause } from './oserror.js';
import { CheckpointWriter, type TensorSpec, type WriterOptions } from './writer.js';

export interface OutputOptions {
  force?: boolean;
  /** input directory: refused as output, and the source of tokenizer/generation files */
  inputDir?: string;
  /** every other input the command reads (statistics, parts, plan, recipe, data files): the output may not overlap any */
  inputs?: readonly string[];
  /** start from an empty staging directory (commands that do not resume: calibrate) */
  fresh?: boolean;
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

/** The files and directories moe writes into an output (and so may replace with --force); anything else is the user's. */
const MOE_OUTPUT_NAMES: readonly RegExp[] = [
  /^config\.json$/,
  /^model(-\d{5}-of-\d{5})?\.safetensors$/,
  /^model\.safetensors\.index\.json$/,
  /^moe-[\w.-]+\.json$/,
  /^model\.gguf$/,
  /^tensor-types\.txt$/,
  /^imatrix\.gguf$/,
  // calibration statistics (src/calibrate/artifact.ts) and their Gram matrices
  /^stats\.json$/,
  /^layer-\d+\.\w+\.bin$/,
  /^grams$/,
];

function moeWrote(name: string): boolean {
  return PASSTHROUGH_FILES.includes(name) || MOE_OUTPUT_NAMES.some((re) => re.test(name));
}

/** Bytes of a report read to recognise it (reports are a few hundred KB at most). */
const MAX_MARKER_BYTES = 64 * 2 ** 20;

/** True when `dir/name` is a regular file of moe's: a report whose `tool` names moe, or a statistics artifact's stats.json. */
async function isMarker(dir: string, name: string): Promise<boolean> {
  const isReport = /^moe-.*report.*\.json$/.test(name);
  if (!isReport && name !== 'stats.json') return false;
  const p = join(dir, name);
  const st = await lstat(p).catch(() => undefined);
  if (!st?.isFile() || st.size > MAX_MARKER_BYTES) return false;
  try {
    const j = JSON.parse(await readFile(p, 'utf8')) as { tool?: unknown; format?: unknown } | null;
    if (!j || typeof j !== 'object' || Array.isArray(j)) return false;
    // a report is named moe-<command>-report.json; those that carry `tool` (all but GGUF's) must name moe there too
    if (isReport) return j.tool === undefined ? j.format === 'gguf' : typeof j.tool === 'string' && /^moe\b/.test(j.tool);
    return j.format === 'moe-calibration-stats';
  } catch {
    return false;
  }
}

/**
 * What --force may replace: an empty directory, or a directory moe wrote (its report names moe, and it holds nothing
 * but files moe writes). A user's directory, a file, or a moe output the user added files to is refused (exit 4),
 * with the command that removes it by hand: moe never deletes what it cannot prove is its own.
 */
export async function checkReplaceable(target: string, shown: string): Promise<void> {
  const st = await lstat(target).catch(() => undefined);
  if (!st) return;
  const byHand = `remove it by hand (rm -r ${JSON.stringify(shown)}) if it should go`;
  if (!st.isDirectory()) fail('OutputExists', `--force replaces only a directory moe wrote, and ${shown} is not a directory; ${byHand}`);
  let entries: string[];
  try {
    entries = await readdir(target);
  } catch (e) {
    fail('OutputError', `cannot list ${shown}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (entries.length === 0) return;
  const foreign = entries.filter((f) => !moeWrote(f)).sort();
  if (foreign.length) {
    fail('OutputExists', `--force replaces only an output moe wrote, and ${shown} holds ${JSON.stringify(foreign[0])}, which moe did not write; ${byHand}`);
  }
  let marked = false;
  for (const f of entries) if (await isMarker(target, f)) marked = true;
  if (!marked) fail('OutputExists', `--force replaces only an output moe wrote, and ${shown} has no moe report; ${byHand}`);
}

/** An empty path (an unset variable in a CI script) would mean the working directory: refused, not guessed. */
export function checkOutputPath(out: unknown, flag = '--out'): asserts out is string {
  if (typeof out !== 'string' || out.trim() === '') fail('Usage', `${flag} is empty (an unset variable?): give the output directory`);
}

/**
 * The overlap rule, for every input a command reads: the output may not be an input, lie inside one, or contain
 * one (publishing over it, --force or not, would delete the input).
 */
export async function checkOverlap(out: string, input: string, what = 'an input'): Promise<void> {
  const target = await canonical(out);
  const inp = await canonical(input);
  if (inp === target) fail('OutputExists', `--out ${out} is ${what} (${input}): an input is never modified`);
  if (inside(target, inp)) fail('OutputExists', `--out ${out} is inside ${what} (${input}); an input is never modified`);
  if (inside(inp, target)) fail('OutputExists', `--out ${out} contains ${what} (${input}); refusing to replace it`);
}

/** Check an output target before any work is done, so a run fails in its first second, not its last. */
export async function checkOutputTarget(out: string, opts: OutputOptions = {}): Promise<void> {
  checkOutputPath(out);
  const target = await canonical(out);
  if (opts.inputDir) {
    const input = await canonical(opts.inputDir);
    if (input === target) fail('OutputExists', `--out must differ from --model (${out}): the input is never modified`);
    if (inside(target, input)) fail('OutputExists', `--out ${out} is inside the input model directory; the input is never modified`);
    if (inside(input, target)) fail('OutputExists', `--out ${out} contains the input model; refusing to replace it`);
  }
  const exists = await pathExists(target);
  if (exists && !opts.force) fail('OutputExists', `output ${out} already exists (use --force to replace it)`);
  for (const p of opts.inputs ?? []) if (typeof p === 'string' && p !== '') await checkOverlap(out, p);
  if (exists) await checkReplaceable(target, out);
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
  await probeWritable(out, ancestor);
}

/**
 * The writability probe: the staging directory (and any missing parent) is created in `dir`, the nearest existing
 * ancestor of the output, so a directory there must be creatable. Checked with access(2) and statfs(2), which leave no
 * trace (dry runs too), before any heavy work: a read-only mount, a directory this user may not write or a full disk
 * fails in the first second with its real cause, not after the scoring pass (where mkdir -p says ENOENT on EROFS).
 */
async function probeWritable(out: string, dir: string): Promise<void> {
  try {
    await access(dir, constants.W_OK | constants.X_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    const why =
      code === 'EROFS' ? 'is on a read-only filesystem' : code === 'EACCES' || code === 'EPERM' ? 'is not writable by this user' : 'cannot be written';
    fail('OutputError', `cannot write ${out}: ${dir} ${why} (${code})`);
  }
  const fs = await statfs(dir).catch(() => undefined);
  // bavail counts the blocks an unprivileged user may use; root may also use the reserve (bfree)
  const free = fs ? (process.getuid?.() === 0 ? fs.bfree : fs.bavail) : 1;
  if (free <= 0) fail('OutputError', `cannot write ${out}: no space left on the filesystem of ${dir} (ENOSPC)`);
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

/**
 * Publish order: a command's report is part of its output, so it is written into the staging directory and only a
 * complete output (report included) is published. Inside deferPublish(), OutputDir.publish() only marks the staged
 * output ready; writeReport() then writes the report into it and publishes it, and whatever is still ready when the
 * scope's work succeeds is published then. When the work fails nothing of it is published.
 */
const publishScope = new AsyncLocalStorage<Map<string, OutputDir>>();

/**
 * The identity of the current run (src/io/fingerprint.ts), set by the command line around a command. A staging
 * directory left by a run of another identity (other model, data or options) is discarded, never resumed: resuming
 * it would publish a checkpoint mixed from both runs.
 */
const identityScope = new AsyncLocalStorage<string>();

export function withRunIdentity<T>(fingerprint: string, fn: () => Promise<T>): Promise<T> {
  return identityScope.run(fingerprint, fn);
}

const FINGERPRINT_FILE = '.moe-fingerprint';

/** Keep what a staging directory holds only when it was started by a run of this identity; else empty it and say so. */
async function adoptStaging(staging: string, out: string, fingerprint: string): Promise<void> {
  // hidden-state resume files (.moe-resume-*, src/pipeline/resume.ts) carry their own key (model fingerprint, pass
  // settings, windows) and are checked against it when read; this run may already have written one before its output opens
  const entries = (await readdir(staging)).filter((f) => f !== LOCK_FILE && f !== FINGERPRINT_FILE && !f.startsWith('.moe-resume-'));
  const previous = (await readFile(join(staging, FINGERPRINT_FILE), 'utf8').catch(() => '')).trim();
  if (entries.length > 0 && previous !== fingerprint) {
    for (const f of entries) await rm(join(staging, f), { recursive: true, force: true });
    process.stderr.write(`moe: ${staging} held an unfinished run of ${out} with other inputs or options; discarded it, starting over\n`);
  }
  await writeFile(join(staging, FINGERPRINT_FILE), fingerprint + '\n');
}

export async function deferPublish<T>(fn: () => Promise<T>): Promise<T> {
  const ready = new Map<string, OutputDir>();
  const v = await publishScope.run(ready, fn);
  for (const d of [...ready.values()]) await d.publishNow();
  return v;
}

/** Where an output's files are right now: its staging directory while its publishing is deferred, else `out`. */
export function stagedPath(out: string): string {
  return publishScope.getStore()?.get(resolve(out))?.staging ?? out;
}

/** Write a command's report into its output: into the staged output, then publish it (or, published already, into it). */
export async function writeReport(out: string, file: string, report: unknown): Promise<void> {
  const d = publishScope.getStore()?.get(resolve(out));
  if (d) {
    await d.writeJson(file, report);
    await d.publishNow();
    return;
  }
  try {
    await writeFile(join(out, file), JSON.stringify(report, null, 2) + '\n');
  } catch (e) {
    failWrite(join(out, file), e);
  }
}

/**
 * Fault injection for tests: with MOE_FAULT=enospc:<file name>, writing that file of an output fails as on a full
 * disk (tests cannot always mount a small tmpfs).
 */
export function injectedFault(name: string): void {
  if (process.env.MOE_FAULT === `enospc:${name}`) {
    const e = new Error('ENOSPC: no space left on device') as NodeJS.ErrnoException;
    e.code = 'ENOSPC';
    throw e;
  }
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
      if (opts.fresh) for (const f of await readdir(staging)) if (f !== LOCK_FILE) await rm(join(staging, f), { recursive: true, force: true });
      const fingerprint = identityScope.getStore();
      if (fingerprint !== undefined) await adoptStaging(staging, out, fingerprint);
    } catch (e) {
      if (isMoeError(e)) throw e;
      fail('OutputError', `cannot create a staging directory beside ${out}: ${osCause(e)}`);
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
      injectedFault(name);
      await writeFile(this.path(name), JSON.stringify(value, null, 2) + '\n');
    } catch (e) {
      failWrite(this.path(name), e);
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
      failWrite(this.path('config.json'), e);
    }
  }

  /** Tokenizer and generation files travel with every output unchanged. */
  async copyPassthrough(fromDir: string): Promise<string[]> {
    const copied: string[] = [];
    const present = new Set(await readdir(fromDir));
    for (const f of PASSTHROUGH_FILES) {
      if (present.has(f)) {
        // checked at open too; again here, right before the copy, so a file swapped meanwhile is not copied either
        await checkPassthroughFile(fromDir, f);
        try {
          await copyFile(join(fromDir, f), this.path(f));
        } catch (e) {
          fail('OutputError', `cannot copy ${f} into ${this.staging}: ${osCause(e)}`);
        }
        copied.push(f);
      }
    }
    return copied;
  }

  async openWriter(tensors: readonly TensorSpec[], opts?: WriterOptions): Promise<CheckpointWriter> {
    // every tensor of a command's output is checked for NaN/Inf as it is written (src/io/finite.ts)
    return CheckpointWriter.create(this.staging, tensors, { ...opts, finiteOnly: true });
  }

  /**
   * Rename the staging directory into place. An existing target (allowed by --force) is replaced. The run's own
   * bookkeeping files (`.moe-*`: lock, journal, resume state) are removed first and never published.
   */
  async publish(): Promise<void> {
    const ready = publishScope.getStore();
    if (ready) {
      ready.set(this.target, this);
      return;
    }
    await this.publishNow();
  }

  /** publish() without deferral (see deferPublish). */
  async publishNow(): Promise<void> {
    publishScope.getStore()?.delete(this.target);
    try {
      for (const f of await readdir(this.staging)) if (f.startsWith('.moe-')) await rm(join(this.staging, f), { recursive: true, force: true });
      if (await pathExists(this.target)) {
        if (!this.opts.force) fail('OutputExists', `output ${this.target} appeared while running (use --force to replace it)`);
        // checked before the run too; again now, since what is there now is what the rename removes
        await checkReplaceable(this.target, this.target);
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
      fail('OutputError', `cannot move ${this.staging} into place as ${this.target}: ${osCause(e)}`);
    }
  }

  async discard(): Promise<void> {
    live.delete(this);
    publishScope.getStore()?.delete(this.target);
    await rm(this.staging, { recursive: true, force: true });
  }
}
