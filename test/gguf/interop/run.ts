/**
 * Interop check of our block quantizers against gguf-py 0.19 (`gguf.quants.dequantize`, a reference decoder
 * independent of ours): every type's tensors, quantized by us with and without an importance matrix on hard
 * rows (outliers, all-positive, all-negative, constant, zero), are written to one GGUF beside our own decoding;
 * dequant.py decodes them with gguf-py and compares bit for bit. Run by `npm run test:gguf-py` (from .ci/run),
 * which makes the Python environment from requirements.txt.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeGguf, type GgufWriteTensor } from '../../../src/gguf/writer.js';
import { BLOCK_TYPES, ggmlCodec } from '../../../kernels/ggml/codecs.js';
import { seededRandom } from '../../../kernels/random.js';

const python = process.argv[2] ?? 'python3';
const dir = mkdtempSync(join(tmpdir(), 'moe-gguf-py-'));
try {
  const r = seededRandom(11);
  const n = 512;
  const rows = 8;
  const x = new Float32Array(rows * n);
  for (let i = 0; i < x.length; i++) x[i] = (r() * 2 - 1) * 0.05;
  for (let i = 0; i < n; i++) {
    x[1 * n + i] = Math.abs(x[1 * n + i]!) + 0.01; // all positive
    x[2 * n + i] = -Math.abs(x[2 * n + i]!) - 0.01; // all negative
    x[3 * n + i] = 0.25; // constant
    x[4 * n + i] = 0; // zero
  }
  x[5 * n + 7] = 3; // outliers
  x[5 * n + 300] = -5;
  const imatrix = Float32Array.from({ length: n }, () => 0.1 + 10 * r() ** 3);
  const tensors: GgufWriteTensor[] = [];
  for (const type of BLOCK_TYPES) {
    const c = ggmlCodec(type);
    for (const [tag, im] of [
      ['plain', undefined],
      ['imatrix', imatrix],
    ] as const) {
      const q = c.quantize(x, rows, n, im);
      const deq = c.dequantize(q, rows, n);
      if (q.length !== (rows * n * c.bytes) / c.block) throw new Error(`${type}: ${q.length} bytes`);
      tensors.push({ name: `${type}.${tag}`, type, ne: [n, rows], produce: () => q });
      tensors.push({ name: `${type}.${tag}.moe_deq`, type: 'F32', ne: [n, rows], produce: () => new Uint8Array(deq.buffer) });
    }
  }
  const file = join(dir, 'quants.gguf');
  await writeGguf(file, {}, tensors);
  const res = spawnSync(python, [join(import.meta.dirname, 'dequant.py'), file], { encoding: 'utf8' });
  process.stdout.write(res.stdout ?? '');
  process.stderr.write(res.stderr ?? '');
  if (res.status !== 0) process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
