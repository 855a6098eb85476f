/** The tiny Mixtral the quantize tests share: word tokenizer and 60 lines of random-word calibration text. */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { seededRandom } from '../../kernels/random.js';
import { writeWordTokenizer, wordLines } from '../eval/tokenizer.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

export async function makeQuantizeModel(root: string, layers: number): Promise<{ model: string; calib: string }> {
  const model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 4, layers, intermediate: 64, seed: 3 });
  await writeWordTokenizer(model);
  const calib = join(root, 'calib.txt');
  await writeFile(calib, wordLines(60, seededRandom(5)).join('\n') + '\n');
  return { model, calib };
}
