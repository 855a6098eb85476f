/**
 * Hidden-state resume of a forward pass, for every pipeline: the hidden states [T, H] after the last decoder layer
 * the pass completed, plus what the pipeline keeps from the finished layers (quantize: GPTQ's fallbacks after the
 * last layer whose tensors are all written; prune reconstruct, merge --calib, decompose's whitened score pass: the
 * plan entries of the finished layers). It lives in the output's staging directory (OutputDir.publish never
 * publishes `.moe-*` files), is written atomically (temporary file, then rename) and is keyed by a digest of
 * everything that determines the pass, so a run with other flags, another plan, other calibration text or another
 * model never resumes from it. The runtime's checkpoint hook (StreamCheckpoint in src/runtime/api.ts) restores it
 * at the start of a pass and saves it after each layer.
 *
 * File layout: "MOERSM01", u32 LE byte length n of a JSON header, the header, zero padding to a multiple of 4, then
 * the hidden states as float32 LE.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fail } from '../errors.js';
import { stagingDirFor } from '../io/output.js';
import type { StreamCheckpoint } from '../runtime/api.js';

/** quantize's apply pass (the name of version 1, kept so its journals keep resuming) */
export const RESUME_FILE = '.moe-resume-apply';
const MAGIC = Buffer.from('MOERSM01', 'ascii');

export interface ResumeState<X> {
  after: number;
  hidden: Float32Array;
  extra: X;
}

/** sha256 of the JSON of `parts` and the bytes of the calibration windows */
export function resumeKey(parts: unknown, windows: readonly Int32Array[]): string {
  const h = createHash('sha256').update(JSON.stringify(parts));
  for (const w of windows) {
    h.update(String(w.length));
    h.update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
  }
  return h.digest('hex');
}

/**
 * Fault injection for the kill-and-restart tests: with MOE_TEST_KILL_AFTER_LAYER=k the process dies like
 * `kill -9` right after the state after layer k is saved.
 */
function killHook(after: number, file: string): void {
  const k = process.env.MOE_TEST_KILL_AFTER_LAYER;
  // MOE_TEST_KILL_FILE narrows it to one pass's file (a command with two passes: decompose's score and apply)
  const only = process.env.MOE_TEST_KILL_FILE;
  if (only !== undefined && only !== '' && only !== file) return;
  if (k !== undefined && k !== '' && Number(k) === after) process.kill(process.pid, 'SIGKILL');
}

export async function saveResumeState<X>(dir: string, key: string, state: ResumeState<X>, file = RESUME_FILE): Promise<void> {
  const json = Buffer.from(JSON.stringify({ key, after: state.after, values: state.hidden.length, extra: state.extra }), 'utf8');
  const head = 8 + 4 + json.byteLength;
  const pad = (4 - (head % 4)) % 4;
  const prefix = Buffer.alloc(head + pad);
  MAGIC.copy(prefix, 0);
  prefix.writeUInt32LE(json.byteLength, 8);
  json.copy(prefix, 12);
  const path = join(dir, file);
  const tmp = `${path}.tmp`;
  let fh: FileHandle | undefined;
  try {
    // the hidden states are written from their own buffer, not copied into one with the header
    fh = await open(tmp, 'w');
    await fh.writeFile(prefix);
    await fh.writeFile(new Uint8Array(state.hidden.buffer, state.hidden.byteOffset, state.hidden.byteLength));
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
  } catch (e) {
    await fh?.close().catch(() => {});
    await rm(tmp, { force: true });
    fail('OutputError', `cannot write the resume state ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  killHook(state.after, file);
}

/** The state saved under this key, or undefined (no file, another key, or a damaged file). */
export async function loadResumeState<X>(dir: string, key: string, values: number, file = RESUME_FILE): Promise<ResumeState<X> | undefined> {
  let buf: Buffer;
  try {
    buf = await readFile(join(dir, file));
  } catch {
    return undefined;
  }
  try {
    if (buf.byteLength < 12 || !buf.subarray(0, 8).equals(MAGIC)) return undefined;
    const n = buf.readUInt32LE(8);
    const head = 12 + n;
    if (head > buf.byteLength) return undefined;
    const meta = JSON.parse(buf.subarray(12, head).toString('utf8')) as { key?: unknown; after?: unknown; values?: unknown; extra?: X };
    const start = head + ((4 - (head % 4)) % 4);
    if (meta.key !== key || meta.values !== values || buf.byteLength !== start + values * 4) return undefined;
    if (typeof meta.after !== 'number' || !Number.isInteger(meta.after) || meta.after < 0) return undefined;
    const hidden = new Float32Array(values);
    new Uint8Array(hidden.buffer).set(buf.subarray(start));
    return { after: meta.after, hidden, extra: meta.extra as X };
  } catch {
    return undefined;
  }
}

/**
 * The plan a scoring pass chose, kept in the staging directory (once the output is open) so a killed run
 * restarted with the same command skips scoring and the allocation: same key rules as the hidden states.
 */
export const PLAN_FILE = '.moe-plan-quantize.json';

export async function saveStagedPlan(dir: string, key: string, plan: unknown): Promise<void> {
  const path = join(dir, PLAN_FILE);
  const tmp = `${path}.tmp`;
  try {
    await writeFile(tmp, JSON.stringify({ key, plan }) + '\n');
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    fail('OutputError', `cannot write the plan ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export async function loadStagedPlan<P>(dir: string, key: string): Promise<P | undefined> {
  try {
    const f = JSON.parse(await readFile(join(dir, PLAN_FILE), 'utf8')) as { key?: unknown; plan?: P };
    return f.key === key ? f.plan : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Resume of a planning pass: a forward pass whose hook makes one small entry per MoE layer (a kept set, merge
 * groups, a unit's spectrum) and hands the compressed layer back, so later layers see it. After each layer the
 * hidden states and the entries so far are saved; a restarted run with the same key starts after the last saved
 * layer, with the saved entries in front of the ones it computes.
 */
export interface PassResume<E> {
  /** give to streamModel's `checkpoint` option */
  checkpoint: StreamCheckpoint;
  /** the hook's entry of one finished layer (in layer order) */
  record(layer: number, entry: E): void;
  /** every entry: the restored ones, then this run's */
  entries(): E[];
  /** the pass started after this layer (-1: from the start); and the layers whose entries this run computed */
  report(): { afterLayer: number; computed: number[] };
}

export interface PassResumeOptions {
  /**
   * whether a saved state after this layer may be used (checked before anything is restored): a pass that writes
   * while it runs resumes only after a layer whose tensors the writer's journal lists as finished
   */
  accept?(after: number): boolean | Promise<boolean>;
}

export function passResume<E>(opts: ({ out: string | undefined; file: string; key: string; values: number } & PassResumeOptions) | undefined): PassResume<E> {
  const restored: { layer: number; entry: E }[] = [];
  const mine: { layer: number; entry: E }[] = [];
  let afterLayer = -1;
  const dir = opts?.out !== undefined ? stagingDirFor(opts.out) : undefined;
  const checkpoint: StreamCheckpoint = {
    restore: async () => {
      if (!opts || !dir) return undefined;
      const st = await loadResumeState<{ entries: { layer: number; entry: E }[] }>(dir, opts.key, opts.values, opts.file);
      if (!st || !Array.isArray(st.extra?.entries)) return undefined;
      if (opts.accept && !(await opts.accept(st.after))) return undefined;
      restored.push(...st.extra.entries);
      afterLayer = st.after;
      return { after: st.after, hidden: st.hidden };
    },
    save: async (after, hidden) => {
      if (!opts || !dir) return;
      await mkdir(dir, { recursive: true });
      await saveResumeState(dir, opts.key, { after, hidden, extra: { entries: [...restored, ...mine] } }, opts.file);
    },
  };
  return {
    checkpoint,
    record: (layer, entry) => {
      mine.push({ layer, entry });
    },
    entries: () => [...restored, ...mine].map((e) => e.entry),
    report: () => ({ afterLayer, computed: mine.map((e) => e.layer) }),
  };
}
