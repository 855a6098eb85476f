/** Layer-parallel runs: `--shard i/n` parts joined by `moe assemble` equal one unsharded run, byte for byte. */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assembleShards } from '../../src/model/shard.js';
import { prune } from '../../src/prune/pipeline.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { outputFiles } from '../helpers/files.js';

let root: string;
let model: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-shard-'));
  model = join(root, 'mixtral');
  await makeTinyCheckpoint('mixtral', model, { experts: 8, layers: 3 });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('prune --shard i/n + moe assemble', () => {
  it('each part holds only its layers; the assembled checkpoint equals the unsharded output', async () => {
    const whole = join(root, 'whole');
    await prune({ model, out: whole, keep: 5, method: 'random', seed: 4 });
    const parts = [0, 1].map((i) => join(root, `part-${i}`));
    for (const [i, p] of parts.entries()) await prune({ model, out: p, keep: 5, method: 'random', seed: 4, shard: { index: i, count: 2 } });
    const names = async (p: string) => {
      const buf = await readFile(join(p, 'model.safetensors'));
      const n = Number(buf.readBigUInt64LE(0));
      return Object.keys(JSON.parse(buf.subarray(8, 8 + n).toString())).filter((k) => k !== '__metadata__');
    };
    const n0 = await names(parts[0]!);
    const n1 = await names(parts[1]!);
    expect(n1.every((t) => /^model\.layers\.1\./.test(t))).toBe(true);
    expect(n0.some((t) => t === 'model.embed_tokens.weight')).toBe(true);
    expect(n0.filter((t) => /^model\.layers\.1\./.test(t))).toEqual([]);

    const r = await runMoe(['assemble', parts[1]!, parts[0]!, '--out', join(root, 'assembled'), '--quiet']);
    expect(r.code).toBe(0);
    expect(await outputFiles(join(root, 'assembled'))).toEqual(await outputFiles(whole));
  });

  it('refuses parts of different plans, a missing shard and a shard given twice', async () => {
    const other = join(root, 'other-1');
    await prune({ model, out: other, keep: 5, method: 'random', seed: 5, shard: { index: 1, count: 2 } });
    const p0 = join(root, 'part-0');
    await expect(assembleShards([p0, other], join(root, 'x1'))).rejects.toThrow(/different plan/);
    await expect(assembleShards([p0], join(root, 'x2'))).rejects.toThrow(/missing shard 1\/2/);
    await expect(assembleShards([p0, p0], join(root, 'x3'))).rejects.toThrow(/given twice/);
    const r = await runMoe(['assemble', model, '--out', join(root, 'x4')]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^moe: .*not a shard/);
  });
});
