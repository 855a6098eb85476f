/**
 * Hostile inputs: each must give a MoeError with a one-line message through the library, and through a CLI-style
 * child process a non-zero exit, one stderr line, no stack trace, quickly and without a large allocation.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode, isMoeError, type ErrorCode } from '../../src/errors.js';
import { Checkpoint, configInt, safeShardPath } from '../../src/io/checkpoint.js';
import { parseHeader, SafetensorsFile } from '../../src/io/safetensors.js';
import { MIXTRAL_CONFIG, rawSafetensors, tempDir, validFile, writeCheckpointDir } from './helpers.js';

const tmp = tempDir('moe-hostile-');
const entry = join(tmp.dir, 'cli-entry.mjs');
beforeAll(async () => {
  await build({
    entryPoints: [fileURLToPath(new URL('./cli-entry.ts', import.meta.url))],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile: entry,
    logLevel: 'silent',
  });
});
afterAll(() => tmp.cleanup());

interface Case {
  name: string;
  code: ErrorCode;
  /** builds the checkpoint directory and returns it */
  make: (dir: string) => string;
  keys?: string;
  message?: RegExp;
}

const { header: H, bytes: VALID } = validFile();
const data32 = VALID.subarray(VALID.byteLength - 32);
const withHeader =
  (h: unknown, data: Uint8Array | number = data32) =>
  (dir: string) =>
    writeCheckpointDir(dir, rawSafetensors(h, data));

function shardedDir(dir: string, weightMap: Record<string, unknown> | string, shard: Uint8Array = VALID): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(MIXTRAL_CONFIG));
  writeFileSync(join(dir, 'model-00001-of-00001.safetensors'), shard);
  writeFileSync(join(dir, 'model.safetensors.index.json'), typeof weightMap === 'string' ? weightMap : JSON.stringify({ metadata: {}, weight_map: weightMap }));
  return dir;
}

const CASES: Case[] = [
  {
    name: 'truncated file',
    code: 'MetadataIncompleteBuffer',
    make: (d) => writeCheckpointDir(d, VALID.subarray(0, VALID.byteLength - 4)),
    message: /truncated/,
  },
  { name: 'trailing bytes', code: 'MetadataIncompleteBuffer', make: (d) => writeCheckpointDir(d, Buffer.concat([VALID, Buffer.alloc(3)])) },
  { name: 'file shorter than the length prefix', code: 'HeaderTooSmall', make: (d) => writeCheckpointDir(d, VALID.subarray(0, 5)) },
  { name: 'header length larger than the file', code: 'InvalidHeaderLength', make: (d) => writeCheckpointDir(d, rawSafetensors(H, data32, 10_000n)) },
  { name: 'header length 2^60', code: 'HeaderTooLarge', make: (d) => writeCheckpointDir(d, rawSafetensors(H, data32, 2n ** 60n)) },
  { name: 'header length 2^64-1', code: 'HeaderTooLarge', make: (d) => writeCheckpointDir(d, rawSafetensors(H, data32, 2n ** 64n - 1n)) },
  {
    name: 'header not UTF-8',
    code: 'InvalidHeader',
    make: (d) => {
      const b = rawSafetensors(H, data32);
      b[10] = 0xff;
      return writeCheckpointDir(d, b);
    },
  },
  { name: 'header not JSON', code: 'InvalidHeaderDeserialization', make: withHeader('{"a": {"dtype": "F32",\n\n "shape": [2, 3}') },
  { name: 'header a JSON array', code: 'InvalidHeaderDeserialization', make: withHeader([1, 2]) },
  {
    name: 'overlapping offsets',
    code: 'InvalidOffset',
    make: withHeader({ ...H, b: { dtype: 'BF16', shape: [4], data_offsets: [20, 28] } }, 28),
    message: /overlap/,
  },
  { name: 'offsets out of range', code: 'InvalidOffset', make: withHeader({ ...H, b: { dtype: 'BF16', shape: [4], data_offsets: [1000, 1008] } }) },
  { name: 'negative offset', code: 'InvalidOffset', make: withHeader({ ...H, b: { dtype: 'BF16', shape: [4], data_offsets: [-8, 0] } }) },
  { name: 'end before begin', code: 'InvalidOffset', make: withHeader({ ...H, b: { dtype: 'BF16', shape: [0], data_offsets: [32, 24] } }) },
  { name: 'petabyte tensor claimed', code: 'MetadataIncompleteBuffer', make: withHeader({ a: { dtype: 'F32', shape: [1e15], data_offsets: [0, 4e15] } }) },
  { name: 'shape product overflow', code: 'InvalidShape', make: withHeader({ a: { dtype: 'F32', shape: [1e15, 1e15], data_offsets: [0, 24] } }) },
  { name: 'fractional dimension', code: 'InvalidShape', make: withHeader({ a: { dtype: 'F32', shape: [2.5], data_offsets: [0, 10] } }) },
  { name: 'unknown dtype', code: 'UnknownDtype', make: withHeader({ ...H, b: { dtype: 'F4', shape: [4], data_offsets: [24, 32] } }), message: /"F4"/ },
  {
    name: 'shape/length mismatch',
    code: 'TensorInvalidInfo',
    make: withHeader({ ...H, a: { dtype: 'F32', shape: [2, 4], data_offsets: [0, 24] } }),
    message: /32 bytes but its offsets span 24/,
  },
  {
    name: 'shard path with ../',
    code: 'UnsafePath',
    make: (d) => shardedDir(d, { a: '../model-00001-of-00001.safetensors', b: 'model-00001-of-00001.safetensors' }),
  },
  { name: 'shard path hidden ../', code: 'UnsafePath', make: (d) => shardedDir(d, { a: 'sub/../../x.safetensors' }) },
  { name: 'absolute shard path', code: 'UnsafePath', make: (d) => shardedDir(d, { a: '/etc/passwd' }) },
  { name: 'index without weight_map', code: 'InvalidIndex', make: (d) => shardedDir(d, '{"metadata": {}}') },
  { name: 'index not JSON', code: 'InvalidIndex', make: (d) => shardedDir(d, '{"weight_map": ') },
  {
    name: 'index maps a tensor the shard lacks',
    code: 'InvalidIndex',
    make: (d) => shardedDir(d, { a: 'model-00001-of-00001.safetensors', zz: 'model-00001-of-00001.safetensors' }),
  },
  { name: 'index names a missing shard', code: 'MissingFile', make: (d) => shardedDir(d, { a: 'model-00002-of-00002.safetensors' }) },
  {
    name: 'no weights',
    code: 'MissingFile',
    make: (d) => {
      mkdirSync(d);
      writeFileSync(join(d, 'config.json'), '{}');
      return d;
    },
  },
  {
    name: 'config.json missing',
    code: 'MissingFile',
    make: (d) => {
      mkdirSync(d);
      writeFileSync(join(d, 'model.safetensors'), VALID);
      return d;
    },
  },
  { name: 'config.json not JSON', code: 'InvalidConfig', make: (d) => writeCheckpointDir(d, VALID, '{"model_type": mixtral}') },
  { name: 'config.json not an object', code: 'InvalidConfig', make: (d) => writeCheckpointDir(d, VALID, '[]') },
  {
    name: 'generation_config.json not JSON',
    code: 'InvalidConfig',
    make: (d) => {
      writeCheckpointDir(d, VALID);
      writeFileSync(join(d, 'generation_config.json'), '{"eos_token_id": 2,');
      return d;
    },
  },
  {
    name: 'config.json missing keys',
    code: 'InvalidConfig',
    keys: 'hidden_size,num_local_experts',
    make: (d) => writeCheckpointDir(d, VALID, { model_type: 'mixtral', hidden_size: 8 }),
    message: /missing required key 'num_local_experts'/,
  },
  { name: 'config.json key of the wrong type', code: 'InvalidConfig', keys: 'hidden_size', make: (d) => writeCheckpointDir(d, VALID, { hidden_size: '8' }) },
];

async function openAndRead(dir: string, keys?: string): Promise<void> {
  const ck = await Checkpoint.open(dir);
  try {
    for (const k of keys ? keys.split(',') : []) configInt(ck.config, k);
    for (const n of ck.tensorNames) await ck.readF32(n);
  } finally {
    await ck.close();
  }
}

describe('hostile checkpoints through the library', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      const dir = c.make(join(tmp.dir, `lib-${c.name.replace(/\W+/g, '_')}`));
      const t0 = performance.now();
      const err = await openAndRead(dir, c.keys).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(performance.now() - t0).toBeLessThan(3000);
      expect(isMoeError(err), String(err)).toBe(true);
      if (!isMoeError(err)) return;
      expect(err.code).toBe(c.code);
      expect(err.message).not.toMatch(/\n/);
      expect(err.message.length).toBeLessThan(400);
      if (c.message) expect(err.message).toMatch(c.message);
    });
  }
  it('the valid base file opens (so each case fails for its own reason)', async () => {
    const dir = writeCheckpointDir(join(tmp.dir, 'valid'), VALID);
    await openAndRead(dir, 'hidden_size,num_local_experts');
    const ok = shardedDir(join(tmp.dir, 'valid-sharded'), { a: 'model-00001-of-00001.safetensors', b: 'model-00001-of-00001.safetensors' });
    const ck = await Checkpoint.open(ok);
    expect([...(await ck.readF32('b'))]).toEqual([1, 2, 3, 4]);
    expect([...(await ck.readF32('a'))]).toEqual([0, 1, 2, 3, 4, 5]);
    await ck.close();
  });
});

describe('hostile checkpoints through a CLI process', () => {
  it('each exits non-zero with one stderr line, no stack trace, small RSS', async () => {
    const base = spawnSync(process.execPath, [entry, writeCheckpointDir(join(tmp.dir, 'cli-valid'), VALID)], {
      encoding: 'utf8',
      env: { ...process.env, MOE_REPORT_RSS: '1' },
    });
    expect(base.status).toBe(0);
    expect(base.stdout).toMatch(/tensors 2/);
    const results = await mapLimit(CASES, 4, (c) => runCli(c.make(join(tmp.dir, `cli-${c.name.replace(/\W+/g, '_')}`)), c.keys));
    CASES.forEach((c, i) => {
      const r = results[i]!;
      const lines = r.stderr.trimEnd().split('\n');
      expect({ name: c.name, status: r.status, lines: lines.length, prefix: lines[0]!.startsWith('moe: '), stack: /\n\s+at /.test(r.stderr) }).toEqual({
        name: c.name,
        status: ExitCode.badInput,
        lines: 1,
        prefix: true,
        stack: false,
      });
      const rss = Number(/maxrss_kb (\d+)/.exec(r.stdout)?.[1]);
      // a Node process idles at ~50 MB; any allocation sized by a hostile header (GBs) would show here
      expect(rss).toBeLessThan(200_000);
      expect(r.ms).toBeLessThan(15_000);
    });
  });
});

describe('hostile checkpoints through `moe inspect`', () => {
  // the real command (model families, openModel) on a subset of the cases, run from source with tsx
  const picked = ['header length 2^60', 'unknown dtype', 'shard path with ../'];
  it('exits 3 with one line and no stack trace', async () => {
    const cases: Case[] = [
      ...CASES.filter((c) => picked.includes(c.name)),
      {
        name: 'mixtral config missing num_local_experts',
        code: 'InvalidConfig',
        make: (d) => {
          const { num_local_experts: _, ...rest } = MIXTRAL_CONFIG;
          return writeCheckpointDir(d, VALID, rest);
        },
      },
    ];
    expect(cases.length).toBe(picked.length + 1);
    const inspectEntry = fileURLToPath(new URL('./inspect-entry.ts', import.meta.url));
    const results = await mapLimit(cases, 4, (c) =>
      runProcess(['--import', 'tsx', inspectEntry, 'inspect', '--model', c.make(join(tmp.dir, `inspect-${c.name.replace(/\W+/g, '_')}`)), '--no-probe']),
    );
    cases.forEach((c, i) => {
      const r = results[i]!;
      const lines = r.stderr.trimEnd().split('\n');
      expect({ name: c.name, status: r.status, lines: lines.length, prefix: lines[0]!.startsWith('moe: '), stack: /\n\s+at /.test(r.stderr) }).toEqual({
        name: c.name,
        status: ExitCode.badInput,
        lines: 1,
        prefix: true,
        stack: false,
      });
    });
    expect(results.at(-1)!.stderr).toMatch(/num_local_experts/);
  });
});

function runCli(dir: string, keys?: string): Promise<{ status: number | null; stdout: string; stderr: string; ms: number }> {
  return runProcess([entry, dir, ...(keys ? [keys] : [])]);
}

function runProcess(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string; ms: number }> {
  return new Promise((res) => {
    const t0 = performance.now();
    const p = spawn(process.execPath, args, { env: { ...process.env, MOE_REPORT_RSS: '1' }, timeout: 30_000 });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('close', (status) => res({ status, stdout, stderr, ms: performance.now() - t0 }));
  });
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

describe('direct API edges', () => {
  it('parseHeader never trusts sizes', () => {
    const t0 = performance.now();
    const h = Buffer.from(JSON.stringify({ a: { dtype: 'U8', shape: [2 ** 52], data_offsets: [0, 2 ** 52] } }));
    expect(() => parseHeader(h, 100)).toThrowError(expect.objectContaining({ code: 'MetadataIncompleteBuffer' }));
    expect(performance.now() - t0).toBeLessThan(1000);
  });
  it('deeply nested JSON is refused before parsing, and never overflows the stack in a message', () => {
    const deep = '{"a": {"dtype": "F32", "shape": ' + '['.repeat(200_000) + ']'.repeat(200_000) + ', "data_offsets": [0, 0]}}';
    const t0 = performance.now();
    expect(() => parseHeader(Buffer.from(deep), 8 + deep.length)).toThrowError(
      expect.objectContaining({ code: 'InvalidHeaderDeserialization', message: expect.stringContaining('nests deeper') }),
    );
    expect(performance.now() - t0).toBeLessThan(2000);
    // at the depth limit it parses, and the invalid shape is quoted without recursion trouble
    const ok = '{"a": {"dtype": "F32", "shape": ' + '['.repeat(14) + ']'.repeat(14) + ', "data_offsets": [0, 0]}}';
    expect(() => parseHeader(Buffer.from(ok), 8 + ok.length)).toThrowError(expect.objectContaining({ code: 'InvalidShape' }));
    // brackets inside strings (escaped quotes included) do not count
    const str = JSON.stringify({ __metadata__: { note: '[[[[[[[[[[[[[[[[[[[[[[[[\\"{{{{{{{{{{{{{{{{{{{{' } });
    expect(parseHeader(Buffer.from(str), 8 + str.length).metadata.note).toMatch(/^\[\[/);
  });
  it('a directory given as a shard file is a clean error', async () => {
    mkdirSync(join(tmp.dir, 'adir'));
    await expect(SafetensorsFile.open(join(tmp.dir, 'adir'))).rejects.toMatchObject({ code: 'MissingFile' });
  });
  it('safeShardPath keeps legitimate names', () => {
    expect(safeShardPath('/m', 'model-00001-of-00002.safetensors')).toBe('/m/model-00001-of-00002.safetensors');
    expect(safeShardPath('/m', 'sub/x.safetensors')).toBe('/m/sub/x.safetensors');
    expect(safeShardPath('/m', '..x.safetensors')).toBe('/m/..x.safetensors');
    for (const bad of ['../x', 'a/../../x', '/abs', 'a\\..\\x', '', 'a\0b', 3]) {
      expect(() => safeShardPath('/m', bad)).toThrowError(expect.objectContaining({ code: 'UnsafePath' }));
    }
  });
  it('a missing tensor is TensorNotFound', async () => {
    const ck = await Checkpoint.open(writeCheckpointDir(join(tmp.dir, 'nf'), VALID));
    await expect(ck.readF32('nope')).rejects.toMatchObject({ code: 'TensorNotFound' });
    expect(() => ck.shape('nope')).toThrowError(expect.objectContaining({ code: 'TensorNotFound' }));
    await ck.close();
  });
});
