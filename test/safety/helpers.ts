/** Shared fixtures of the safety tests: a tiny model with a word tokenizer and calibration text, decoys, snapshots. */
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { seededRandom } from '../../kernels/random.js';
import { wordLines, writeWordTokenizer } from '../eval/tokenizer.js';
import { makeTinyCheckpoint, type TinyOptions } from '../helpers/families.js';

/** A tiny Mixtral with a word tokenizer at `dir`, and `calib.txt` beside it. */
export async function tinyModel(dir: string, opts: TinyOptions = {}): Promise<{ model: string; calib: string }> {
  await makeTinyCheckpoint('mixtral', dir, { experts: 4, layers: 2, seed: 3, ...opts });
  await writeWordTokenizer(dir);
  const calib = `${dir}.calib.txt`;
  writeFileSync(calib, wordLines(24, seededRandom(5)).join('\n') + '\n');
  return { model: dir, calib };
}

/** Every file under dir (links not followed) with its bytes or link target, for "survives byte for byte". */
export function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, prefix: string) => {
    for (const e of readdirSync(d).sort()) {
      const p = join(d, e);
      const st = lstatSync(p);
      if (st.isSymbolicLink()) out[prefix + e] = `link:${readlinkSync(p)}`;
      else if (st.isDirectory()) walk(p, `${prefix}${e}/`);
      else if (st.isFile()) out[prefix + e] = readFileSync(p).toString('base64');
      else out[prefix + e] = 'special';
    }
  };
  walk(dir, '');
  return out;
}

/** A directory of the user's that moe must never delete. */
export function decoy(dir: string): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'thesis.tex'), 'four years of work\n');
  mkdirSync(join(dir, 'figures'), { recursive: true });
  writeFileSync(join(dir, 'figures', 'plot.pdf'), 'pdf');
  return dir;
}

/** One `moe: ...` line on stderr and nothing else. */
export function oneLine(stderr: string, pattern: RegExp): void {
  const lines = stderr.split('\n').filter((l) => l.length > 0);
  expect(lines, stderr).toHaveLength(1);
  expect(lines[0]!).toMatch(/^moe: /);
  expect(lines[0]!).toMatch(pattern);
}

/** Names beside `dir` that a staging directory would have (nothing published, nothing half-written). */
export function stagingLeft(parent: string): string[] {
  return readdirSync(parent).filter((f) => f.startsWith('.moe-staging-'));
}
