/**
 * What the serving test files share: the trained fixture and its calibration text, a scratch directory made before
 * the file's tests and removed after them (wasm backend), and `run`, one `quantize` into a fresh directory of it
 * (RTN on 1024 calibration tokens in windows of 128 unless the request says otherwise).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { quantize, type QuantizeRequest } from '../../src/quantize/pipeline.js';
import { initBackend } from '../../src/runtime/backend.js';

export const FIX = join(import.meta.dirname, '..', 'fixtures');
export const model = join(FIX, 'tiny-mixtral');
export const calib = join(FIX, 'text', 'calib.txt');

/**
 * Registers the scratch directory's hooks for the calling test file. Inside its tests, `root()` is the directory and
 * `fresh(tag)` a path in it no other call returns (tag + a counter shared with `run`).
 */
export function servingWorkspace(prefix: string) {
  let dir: string | undefined;
  beforeAll(async () => {
    await initBackend('wasm');
    dir = await mkdtemp(join(tmpdir(), prefix));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  const root = () => dir!;
  let n = 0;
  const fresh = (tag: string) => join(root(), `${tag}${n++}`);
  const run = async (req: Partial<QuantizeRequest> & { bits: number }, m = model) => {
    const out = fresh('q');
    const rep = await quantize({ model: m, out, method: 'rtn', calib, calibTokens: 1024, seqLen: 128, ...req });
    return { out, rep };
  };
  return { root, fresh, run };
}
