import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { makeTinyCheckpoint } from '../helpers/families.js';

let dir: string;
let model: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'moe-decompose-cli-'));
  model = join(dir, 'in');
  await makeTinyCheckpoint('mixtral', model, { experts: 4, layers: 2, seed: 9 });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    out += String(s);
    return true;
  });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
    err += String(s);
    return true;
  });
  try {
    const code = await main(['node', 'moe', 'decompose', ...args]);
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

describe('moe decompose (CLI)', () => {
  it('--dry-run --json prints the report with ranks and the achieved ratio', async () => {
    const r = await run(['--model', model, '--ratio', '0.5', '--mode', 'svd', '--uniform', '--dry-run', '--json', '--backend', 'wasm']);
    expect(r.code).toBe(0);
    const rep = JSON.parse(r.out);
    expect(rep.tool).toBe('moe decompose');
    expect(rep.units).toHaveLength(24);
    expect(rep.units[0].rank).toBe(Math.floor((16 * 32 * 0.5) / 48));
    expect(rep.params.achievedRatio).toBeLessThanOrEqual(0.5);
    expect(rep.params.achievedRatio).toBeGreaterThan(0.4);
  });

  it('bad input exits non-zero with one line', async () => {
    const bad = await run(['--model', model, '--ratio', 'abc', '--mode', 'svd', '--dry-run']);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/^moe: --ratio must be a number/);
    const cal = await run(['--model', model, '--ratio', '0.5', '--dry-run', '--backend', 'wasm']);
    expect(cal.code).toBe(2);
    expect(cal.err.trim().split('\n')).toHaveLength(1);
    expect(cal.err).toMatch(/--calib/);
    const missing = await run(['--model', join(dir, 'nope'), '--ratio', '0.5', '--mode', 'svd', '--dry-run', '--backend', 'wasm']);
    expect(missing.code).toBe(3);
  });
});
