/**
 * Our IQ2_XXS / IQ2_XS / IQ2_S quantizer (kernels/ggml/iq2.ts) against llama.cpp's own on the same rows and
 * importance matrix: the fraction of equal bytes and the importance-weighted squared error (sum over values of
 * imatrix_i * (x_i - x^_i)^2) as a ratio to llama.cpp's, and the same error of Q2_K (llama.cpp's fit, kfit.ts) for
 * scale, all in one run.
 *   npx tsx bench/gguf-iq2.ts --quant /tmp/gguf-quant [--rows 64 --n 512] [--write-fixture test/gguf/fixtures/iq2-llama.json]
 * /tmp/gguf-quant is bench/gguf-quant.c built against a llama.cpp checkout (its header says how).
 * --write-fixture records llama.cpp's bytes for the seeded rows test/gguf/iq2.test.ts checks (kfitRows(2, 512)), and
 * for IQ2_S also without an importance matrix.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { IQ2_TYPES, dequantizeMatrixIq2, quantizeMatrixIq2, type Iq2Type } from '../kernels/ggml/iq2.js';
import { dequantizeMatrix, quantizeMatrix } from '../kernels/ggml/kquants.js';
import { kfitRows } from '../test/gguf/kfit-rows.js';
import { equalFraction as equal, llamaQuantizer, weightedError as err } from './gguf-harness.js';

const { values } = parseArgs({
  options: { quant: { type: 'string' }, rows: { type: 'string', default: '64' }, n: { type: 'string', default: '512' }, 'write-fixture': { type: 'string' } },
});
if (!values.quant) throw new Error('give --quant PATH (bench/gguf-quant.c built against llama.cpp)');
const llama = llamaQuantizer(values.quant, 'iq2');

const rows = Number(values.rows);
const n = Number(values.n);
const { x, im } = kfitRows(rows, n);
// zero runs as in a zero-padded model (bench/gguf-pad-model.ts): every fourth row's second half, and 16-value runs
for (let r = 0; r < rows; r += 4) x.fill(0, r * n + n / 2, (r + 1) * n);
for (let r = 1; r < rows; r += 8) x.fill(0, r * n + 48, r * n + 64);
console.log(`${rows} rows of ${n} (weights ~ N(0, 0.02^2), heavy-tailed importance, some zero runs)`);
const q2k = err(dequantizeMatrix('Q2_K', quantizeMatrix('Q2_K', x, rows, n, im), rows, n), x, im, n);
console.log('type     equal bytes  err ours/llama.cpp  err llama.cpp/Q2_K');
for (const type of IQ2_TYPES) {
  const t0 = performance.now();
  const ours = quantizeMatrixIq2(type, x, rows, n, im);
  const ms = performance.now() - t0;
  const ref = llama(type, x, im, rows, n);
  const e = err(dequantizeMatrixIq2(type, ref, rows, n), x, im, n);
  console.log(
    `${type.padEnd(8)} ${equal(ours, ref).toFixed(4)}  ${(err(dequantizeMatrixIq2(type, ours, rows, n), x, im, n) / e).toFixed(4)}  ${(e / q2k).toFixed(4)}  (ours ${ms.toFixed(0)} ms)`,
  );
}
{
  const ours = quantizeMatrixIq2('IQ2_S', x, rows, n);
  const ref = llama('IQ2_S', x, undefined, rows, n);
  console.log(`IQ2_S without imatrix: equal bytes ${equal(ours, ref).toFixed(4)}`);
}
{
  // the interop suite's hard rows (test/gguf/interop/run.ts): all positive, all negative, constant, zero, outliers
  const hn = 512;
  const h = new Float32Array(6 * hn);
  for (let i = 0; i < hn; i++) {
    h[i] = x[i]!;
    h[hn + i] = Math.abs(x[hn + i]!) + 0.01;
    h[2 * hn + i] = -Math.abs(x[2 * hn + i]!) - 0.01;
    h[3 * hn + i] = 0.25;
    h[5 * hn + i] = x[5 * hn + i]!;
  }
  h[5 * hn + 7] = 3;
  h[5 * hn + 300] = -5;
  const him = im.subarray(0, hn);
  const eq = IQ2_TYPES.map((t) => `${t} ${equal(quantizeMatrixIq2(t, h, 6, hn, him), llama(t, h, Float32Array.from(him), 6, hn)).toFixed(4)}`);
  console.log(`hard rows (positive, negative, constant, zero, outliers), equal bytes: ${eq.join(', ')}`);
}
if (values['write-fixture']) {
  const f = kfitRows(2, 512);
  const fixture: Record<string, string> = { source: 'llama.cpp ggml_quantize_chunk via bench/gguf-quant.c, rows of test/gguf/kfit-rows.ts kfitRows(2, 512)' };
  for (const t of IQ2_TYPES as readonly Iq2Type[]) fixture[t] = Buffer.from(llama(t, f.x, f.im, 2, 512)).toString('hex');
  fixture.IQ2_S_noimatrix = Buffer.from(llama('IQ2_S', f.x, undefined, 2, 512)).toString('hex');
  writeFileSync(values['write-fixture'], `${JSON.stringify(fixture, null, 1)}\n`);
  console.log(`wrote ${values['write-fixture']}`);
}
