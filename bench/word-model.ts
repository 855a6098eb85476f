/**
 * A Mixtral-shaped synthetic BF16 model with a word-level tokenizer and random-word calibration text under `work`,
 * made once and reused by later runs (the memory benches compare runs on the same files).
 */
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeSynthetic } from './make-synthetic.js';
import { writeWordTokenizer, WORDS, wordLines } from '../test/eval/tokenizer.js';

export interface WordModelShape {
  hidden: number;
  intermediate: number;
  experts: number;
  layers: number;
}

export async function ensureWordModel(work: string, shape: WordModelShape): Promise<{ model: string; calib: string }> {
  const { hidden: H, intermediate: I, experts: E, layers: L } = shape;
  const model = join(work, `synth-h${H}-i${I}-e${E}-l${L}`);
  const calib = join(work, 'calib.txt');
  const exists = (p: string) =>
    stat(p).then(
      () => true,
      () => false,
    );
  await mkdir(work, { recursive: true });
  if (!(await exists(join(model, 'config.json')))) {
    await makeSynthetic({
      out: model,
      hidden: H,
      intermediate: I,
      experts: E,
      layers: L,
      heads: Math.max(1, H / 64),
      kvHeads: Math.max(1, H / 256),
      vocab: WORDS.length + 3,
      dtype: 'BF16',
      force: true,
      quiet: true,
    });
    await writeWordTokenizer(model);
  }
  if (!(await exists(calib))) {
    let s = 12345;
    const rnd = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
    await writeFile(calib, wordLines(4000, rnd).join('\n') + '\n');
  }
  return { model, calib };
}
