/**
 * Publish order: the report is part of the output. It is written inside the staging directory and the output is
 * renamed into place only when complete, so a full disk while writing the report publishes nothing (exit 4), and
 * the same command run again finishes the output.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from '../helpers/cli.js';
import { oneLine, stagingLeft, tinyModel } from './helpers.js';

let root: string;
let model: string;
let calib: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-pub-'));
  ({ model, calib } = await tinyModel(join(root, 'model')));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});
afterEach(() => {
  delete process.env.MOE_FAULT;
});

const CASES: [string, string[], string][] = [
  ['prune', ['prune', '--keep', '3', '--method', 'random'], 'moe-prune-report.json'],
  ['merge', ['merge', '--groups', '2', '--calib', '$C', '--seq-len', '8'], 'moe-merge-report.json'],
  ['quantize', ['quantize', '--bits', '7', '--candidates', '4', '--method', 'rtn'], 'moe-quantize-report.json'],
  ['decompose', ['decompose', '--ratio', '0.5', '--mode', 'svd'], 'moe-decompose-report.json'],
];

describe('the report is written before the output is published', () => {
  it.each(CASES)('%s: a full disk at the report publishes nothing (exit 4); the rerun completes it', async (name, args, report) => {
    const out = join(root, `${name}-out`);
    const cmd = [...args.map((a) => (a === '$C' ? calib : a)), '--model', model, '--out', out, '--quiet'];
    process.env.MOE_FAULT = `enospc:${report}`;
    const r = await runMoe(cmd);
    expect(r.code, r.stderr).toBe(4);
    oneLine(r.stderr, new RegExp(`cannot write .*${report.replace(/\./g, '\\.')}: ENOSPC`));
    expect(existsSync(out)).toBe(false);
    delete process.env.MOE_FAULT;
    const again = await runMoe(cmd);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(out, report), 'utf8')).tool).toMatch(/^moe /);
    expect(readdirSync(out)).toContain('config.json');
    expect(stagingLeft(root)).toEqual([]);
  });

  it('calibrate: the artifact is published whole or not at all', async () => {
    const out = join(root, 'stats');
    process.env.MOE_FAULT = 'enospc:stats.json';
    const r = await runMoe(['calibrate', '--model', model, '--data', calib, '--seq-len', '8', '--grams', '--out', out, '--quiet']);
    expect(r.code, r.stderr).toBe(4);
    // (--grams announces its size first, on purpose even with --quiet)
    oneLine(r.stderr.replace(/^--grams will write.*\n/, ''), /cannot write .*stats\.json: ENOSPC/);
    expect(existsSync(out)).toBe(false);
    // no temporary file of the run (Gram files included) is left anywhere
    expect(readdirSync(root).filter((f) => f.startsWith('.moe'))).toEqual([]);
  });
});
