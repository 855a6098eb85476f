/**
 * Resume state of quantize's apply pass: the hidden states [T, H] after the last decoder layer whose output
 * tensors are all written, plus what the report needs from the finished layers (GPTQ's fallbacks). It lives in the
 * output's staging directory (OutputDir.publish never publishes `.moe-*` files), is written atomically (temporary
 * file, then rename) and is keyed by a digest of everything that determines the pass, so a run with other flags,
 * another plan, other calibration text or another model never resumes from it.
 *
 * File layout: "MOERSM01", u32 LE byte length n of a JSON header, the header, zero padding to a multiple of 4, then
 * the hidden states as float32 LE.
 */
import { createHash } from 'node:crypto';
import { open, readFile, rename, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fail } from '../errors.js';

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

export async function saveResumeState<X>(dir: string, key: string, state: ResumeState<X>): Promise<void> {
  const json = Buffer.from(JSON.stringify({ key, after: state.after, values: state.hidden.length, extra: state.extra }), 'utf8');
  const head = 8 + 4 + json.byteLength;
  const pad = (4 - (head % 4)) % 4;
  const prefix = Buffer.alloc(head + pad);
  MAGIC.copy(prefix, 0);
  prefix.writeUInt32LE(json.byteLength, 8);
  json.copy(prefix, 12);
  const path = join(dir, RESUME_FILE);
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
}

/** The state saved under this key, or undefined (no file, another key, or a damaged file). */
export async function loadResumeState<X>(dir: string, key: string, values: number): Promise<ResumeState<X> | undefined> {
  let buf: Buffer;
  try {
    buf = await readFile(join(dir, RESUME_FILE));
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
