/**
 * Our IQ4_NL / IQ4_XS / IQ3_XXS / IQ3_S quantizers (kernels/ggml/iq4.ts, iq3.ts, ports of ggml-quants.c) against
 * llama.cpp's own on the same rows: the fraction of equal bytes per type, with the importance matrix and without
 * (llama.cpp then weights by x^2), and the importance-weighted squared error of ours as a ratio to llama.cpp's; then
 * the same on rows of special cases, where IQ3_S differs on purpose after an all-zero sub-block (iq3.ts says why).
 *   npx tsx bench/gguf-iq34.ts --quant /tmp/gguf-quant [--rows 64 --n 512] [--write-fixture test/gguf/fixtures/iq34-llama.json]
 * /tmp/gguf-quant is bench/gguf-quant.c built against a llama.cpp checkout (its header says how).
 * --write-fixture records llama.cpp's bytes for the seeded rows test/gguf/iq34.test.ts builds (2 rows of 512).
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { dequantizeGgml, isBlockType, quantizeGgml } from '../kernels/ggml/codecs.js';
import { llamaIq3sLayout } from '../kernels/ggml/iq3.js';
import type { GgmlType } from '../src/gguf/format.js';
import { hardRows, kfitRows } from '../test/gguf/kfit-rows.js';
import { equalFraction as equal, llamaQuantizer, weightedError } from './gguf-harness.js';

const { values } = parseArgs({
  options: {
    quant: { type: 'string' },
    rows: { type: 'string', default: '64' },
    n: { type: 'string', default: '512' },
    types: { type: 'string', default: 'IQ4_NL,IQ4_XS,IQ3_XXS,IQ3_S' },
    'write-fixture': { type: 'string' },
  },
});
if (!values.quant) throw new Error('give --quant PATH (bench/gguf-quant.c built against llama.cpp)');
const TYPES = values.types.split(',').filter((t) => isBlockType(t)) as GgmlType[];
const llama = llamaQuantizer(values.quant, 'iq34');

const err = (type: GgmlType, b: Uint8Array, x: Float32Array, im: Float32Array, rows: number, n: number) =>
  weightedError(dequantizeGgml(type, b, rows, n), x, im, n);

const rows = Number(values.rows);
const n = Number(values.n);
const { x, im } = kfitRows(rows, n);
console.log(`${rows} rows of ${n} (weights ~ N(0, 0.02^2), heavy-tailed importance)`);
console.log('type     equal bytes (imatrix)  err/llama.cpp  equal bytes (none)  err/llama.cpp');
for (const type of TYPES) {
  const cells: string[] = [];
  for (const w of [im, undefined]) {
    const ref = llama(type, x, w, rows, n);
    const ours = quantizeGgml(type, x, rows, n, w);
    cells.push(equal(ours, ref).toFixed(4), (err(type, ours, x, im, rows, n) / err(type, ref, x, im, rows, n)).toFixed(4));
  }
  console.log(`${type.padEnd(8)} ${cells.join('  ')}`);
}
// rows the formats' special cases meet: all positive, all negative, constant, zero, outliers, a zero 32-value
// sub-block inside a block (IQ3_S's writer skips it), tiny values
{
  const h = hardRows(512);
  const cells: string[] = [];
  for (const type of TYPES) {
    for (const w of [h.im, undefined]) {
      const ours = quantizeGgml(type, h.x, h.rows, 512, w);
      const ref = llama(type, h.x, w, h.rows, 512);
      // IQ3_S: ours writes every sub-block in its place, llama.cpp shifts those after an all-zero one (iq3.ts)
      const same = `${equal(ours, ref).toFixed(4)}${type === 'IQ3_S' ? ` (in llama.cpp's layout ${equal(llamaIq3sLayout(ours, h.x, h.rows, 512), ref).toFixed(4)})` : ''}`;
      const ratio = (err(type, ours, h.x, h.im, h.rows, 512) / err(type, ref, h.x, h.im, h.rows, 512)).toFixed(4);
      cells.push(`${type}${w ? '' : ' (none)'} ${same}, err/llama.cpp ${ratio}`);
    }
  }
  console.log(`hard rows:\n  ${cells.join('\n  ')}`);
}
if (values['write-fixture']) {
  const f = kfitRows(2, 512);
  const fixture: Record<string, string> = {};
  for (const t of TYPES) {
    fixture[`${t}.imatrix`] = Buffer.from(llama(t, f.x, f.im, 2, 512)).toString('hex');
    fixture[`${t}.plain`] = Buffer.from(llama(t, f.x, undefined, 2, 512)).toString('hex');
    const h = hardRows(512);
    fixture[`${t}.hard`] = Buffer.from(llama(t, h.x, h.im, h.rows, 512)).toString('hex');
  }
  writeFileSync(
    values['write-fixture'],
    `${JSON.stringify({ source: 'llama.cpp ggml_quantize_chunk via bench/gguf-quant.c, rows of test/gguf/kfit-rows.ts kfitRows(2, 512), with its importance (imatrix) and without (plain), and hardRows(512) with its importance (hard)', ...fixture }, null, 1)}\n`,
  );
  console.log(`wrote ${values['write-fixture']}`);
}
