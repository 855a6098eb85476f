/**
 * Our k-quant block fit against llama.cpp's own quantizer on the same rows and importance matrix: for Q2_K-Q6_K, the
 * fraction of equal bytes and the importance-weighted squared error (sum over values of imatrix_i * (x_i - x^_i)^2)
 * as a ratio to llama.cpp's, for the fit now (kernels/ggml/kfit.ts, a port of quantize_row_q*_K_impl) and for
 * the earlier fit (fitBlockParams' least-squares sweep, kept for the 32-value types), measured in the same run.
 *   npx tsx bench/gguf-kfit.ts --quant /tmp/gguf-quant [--rows 64 --n 512] [--write-fixture test/gguf/fixtures/kfit-llama.json]
 * /tmp/gguf-quant is bench/gguf-quant.c built against a llama.cpp checkout (its header says how).
 * --write-fixture records llama.cpp's bytes for the seeded rows test/gguf/kfit.test.ts builds (2 rows of 512).
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  KQUANT_SPECS,
  blockGrid,
  dequantizeMatrix,
  fitBlockParams,
  nearestCode,
  packBlock,
  quantizeMatrix,
  rowWeights,
  type KQuantType,
} from '../kernels/ggml/kquants.js';
import { kfitRows } from '../test/gguf/kfit-rows.js';
import { equalFraction as equal, llamaQuantizer, weightedError } from './gguf-harness.js';

const { values } = parseArgs({
  options: { quant: { type: 'string' }, rows: { type: 'string', default: '64' }, n: { type: 'string', default: '512' }, 'write-fixture': { type: 'string' } },
});
if (!values.quant) throw new Error('give --quant PATH (bench/gguf-quant.c built against llama.cpp)');
const TYPES: KQuantType[] = ['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'];
const llama = llamaQuantizer(values.quant, 'kfit');

/** The fit before kfit.ts: fitBlockParams' sweep on imatrix_i * sqrt(sigma^2 + x_i^2), then the nearest codes. */
function earlier(type: KQuantType, x: Float32Array, im: Float32Array, rows: number, n: number): Uint8Array {
  const s = KQUANT_SPECS[type];
  const out = new Uint8Array(rows * (n / s.block) * s.bytes);
  for (let r = 0; r < rows; r++) {
    const xs = Float64Array.from(x.subarray(r * n, (r + 1) * n));
    const w = rowWeights(xs, n, s.block, im);
    for (let b = 0; b < n / s.block; b++) {
      const blk = fitBlockParams(type, xs, w, b * s.block);
      const { dl, ml } = blockGrid(type, blk);
      for (let i = 0; i < s.block; i++) blk.q[i] = nearestCode(xs[b * s.block + i]!, dl[Math.floor(i / s.sub)]!, ml[Math.floor(i / s.sub)]!, s.qmin, s.qmax);
      packBlock(type, blk, out, (r * (n / s.block) + b) * s.bytes);
    }
  }
  return out;
}

const err = (type: KQuantType, b: Uint8Array, x: Float32Array, im: Float32Array, rows: number, n: number) =>
  weightedError(dequantizeMatrix(type, b, rows, n), x, im, n);

const rows = Number(values.rows);
const n = Number(values.n);
const { x, im } = kfitRows(rows, n);
console.log(`${rows} rows of ${n} (weights ~ N(0, 0.02^2), heavy-tailed importance)`);
console.log('type  equal bytes now  err now/llama.cpp  equal bytes before  err before/llama.cpp');
for (const type of TYPES) {
  const ref = llama(type, x, im, rows, n);
  const now = quantizeMatrix(type, x, rows, n, im);
  const old = earlier(type, x, im, rows, n);
  const e = err(type, ref, x, im, rows, n);
  console.log(
    `${type}  ${equal(now, ref).toFixed(4)}  ${(err(type, now, x, im, rows, n) / e).toFixed(4)}  ${equal(old, ref).toFixed(4)}  ${(err(type, old, x, im, rows, n) / e).toFixed(4)}`,
  );
}
if (values['write-fixture']) {
  const f = kfitRows(2, 512);
  const fixture = Object.fromEntries(TYPES.map((t) => [t, Buffer.from(llama(t, f.x, f.im, 2, 512)).toString('hex')]));
  writeFileSync(
    values['write-fixture'],
    `${JSON.stringify({ source: 'llama.cpp ggml_quantize_chunk via bench/gguf-quant.c, rows of test/gguf/kfit-rows.ts kfitRows(2, 512)', ...fixture }, null, 1)}\n`,
  );
  console.log(`wrote ${values['write-fixture']}`);
}
