/**
 * `moe quantize --format gguf` on the trained fixture (128-wide gate/up rows: llama.cpp's 32-block fallbacks;
 * 256-wide down rows: the k-quants): the allocation's bytes are the file's bytes and within --bits exactly, the
 * tensor-type list parses back to the same choices, the importance matrix is llama-imatrix's GGUF layout with each
 * expert's own token counts, and bad combinations are refused before any work.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GGUF_FILE } from '../../src/gguf/export.js';
import { IMATRIX_FILE, ImatrixCollector, readImatrix, writeImatrix } from '../../src/gguf/imatrix.js';
import { quantizableByLlama, typeOptions } from '../../src/gguf/quantize.js';
import type { GgufQuantizeReport } from '../../src/gguf/quantize-report.js';
import { readGguf } from '../../src/gguf/reader.js';
import { parseTensorTypes, TENSOR_TYPES_FILE, typeFromList } from '../../src/gguf/tensortypes.js';
import { quantize } from '../../src/quantize/pipeline.js';
import { runMoe } from '../helpers/cli.js';

const M = 'test/fixtures/tiny-mixtral';
const CALIB = 'test/fixtures/text/calib.txt';
const dir = await mkdtemp(join(tmpdir(), 'moe-gguf-quantize-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

const BITS = 5.6;
let rep: GgufQuantizeReport;
const out = join(dir, 'q');
beforeAll(async () => {
  rep = (await quantize({
    model: M,
    calib: CALIB,
    calibTokens: 512,
    seqLen: 32,
    bits: BITS,
    format: 'gguf',
    candidates: ['q4_k', 'q6_k'],
    out,
  })) as unknown as GgufQuantizeReport;
}, 300_000);

describe('moe quantize --format gguf', () => {
  it("the routed experts' bytes in the file are the allocation's and within --bits x weights / 8", async () => {
    const f = await readGguf(join(out, GGUF_FILE));
    const experts = f.tensors.filter((t) => /_exps\.weight$/.test(t.name));
    expect(experts.length).toBe(12);
    const params = experts.reduce((a, t) => a + t.ne.reduce((x, y) => x * y, 1), 0);
    const bytes = experts.reduce((a, t) => a + t.bytes, 0);
    expect(rep.programs.experts.limitBytes).toBe(Math.floor((BITS * params) / 8));
    expect(rep.programs.experts.usedBytes).toBe(bytes);
    expect(bytes).toBeLessThanOrEqual(rep.programs.experts.limitBytes);
    expect(rep.expertBpw).toBeCloseTo((8 * bytes) / params, 12);
    // both options were used: the budget lies strictly between all-cheap and all-dear
    const types = new Set(experts.map((t) => t.type));
    expect(types.size).toBeGreaterThan(2);
    // the non-expert program stays within what its tensors take at --dense-bits' type
    expect(rep.programs.dense!.usedBytes).toBeLessThanOrEqual(rep.programs.dense!.limitBytes);
    // every tensor is in the file with the type the report gives, and llama.cpp's fallbacks for 128-wide rows
    const byName = new Map(f.tensors.map((t) => [t.name, t]));
    for (const t of rep.tensors) expect(byName.get(t.name)?.type, t.name).toBe(t.type);
    for (const t of experts) expect(t.ne[0] === 128 ? ['Q5_0', 'Q8_0'] : ['Q4_K', 'Q6_K'], t.name).toContain(t.type);
    expect(rep.summary.fileBytes).toBe(f.fileBytes);
  });

  it('options are the distinct types after the fallback, each at its exact bytes', () => {
    expect(typeOptions([128, 256, 8], ['Q2_K', 'Q3_K', 'Q4_K', 'Q6_K'])).toEqual([
      { type: 'Q4_0', requested: ['Q2_K', 'Q3_K'], bytes: (128 / 32) * 18 * 256 * 8 },
      { type: 'Q5_0', requested: ['Q4_K'], bytes: 4 * 22 * 2048 },
      { type: 'Q8_0', requested: ['Q6_K'], bytes: 4 * 34 * 2048 },
    ]);
    expect(typeOptions([256, 128], ['Q2_K', 'Q6_K']).map((o) => [o.type, o.bytes])).toEqual([
      ['Q2_K', 84 * 128],
      ['Q6_K', 210 * 128],
    ]);
  });

  it("the tensor-type list parses back to every quantized tensor's type, and names only what llama-quantize quantizes", async () => {
    const text = await readFile(join(out, TENSOR_TYPES_FILE), 'utf8');
    const list = parseTensorTypes(text);
    const f = await readGguf(join(out, GGUF_FILE));
    const listed = rep.tensors.filter((t) => quantizableByLlama({ name: t.name, ne: t.ne, cls: 'attn', f32: false, load: async () => new Float32Array(0) }));
    expect(list.length).toBe(listed.length);
    for (const t of f.tensors) {
      const want = listed.some((l) => l.name === t.name) ? t.type : undefined;
      expect(typeFromList(list, t.name), t.name).toBe(want);
    }
    // norms and routers are not listed; blk.1 entries never match blk.10-style names
    expect(typeFromList(list, 'blk.0.ffn_gate_inp.weight')).toBeUndefined();
    expect(typeFromList(list, 'blk.10.attn_q.weight')).toBeUndefined();
  });

  it("the importance matrix is llama-imatrix's GGUF: sums of squares and each expert's own token count", async () => {
    const im = await readImatrix(join(out, IMATRIX_FILE));
    expect(im.datasets).toEqual([CALIB]);
    // a window is BOS + --seq-len tokens
    expect(im.chunkSize).toBe(33);
    const T = rep.calibTokens;
    expect(im.chunkCount * im.chunkSize).toBe(T);
    const gate = im.entries.get('blk.2.ffn_gate_exps.weight')!;
    expect(gate.nIn).toBe(128);
    expect(gate.counts.length).toBe(8);
    // top-2 routing: every token reaches two experts
    expect(gate.counts.reduce((a, b) => a + b, 0)).toBe(2 * T);
    expect(im.entries.get('blk.2.ffn_down_exps.weight')!.nIn).toBe(256);
    expect([...im.entries.get('blk.2.ffn_up_exps.weight')!.sums]).toEqual([...gate.sums]);
    for (const n of ['attn_q', 'attn_k', 'attn_v', 'attn_output']) expect([...im.entries.get(`blk.0.${n}.weight`)!.counts]).toEqual([T]);
    for (const e of im.entries.values()) for (const s of e.sums) expect(s).toBeGreaterThanOrEqual(0);
    // token_embd is a lookup, not a product: llama-imatrix has no entry for it, nor do we
    expect(im.entries.has('token_embd.weight')).toBe(false);
  });

  it('the imatrix file round-trips through our reader (float32 values, sorted names)', async () => {
    const c = new ImatrixCollector();
    c.add('0:a', Float32Array.from([1, 2, 3, 0.5, 0.25, 0.125]), 2, 3, 1, 2);
    c.add('0:b', Float32Array.from([0.1, 0.2]), 1, 2);
    const entries = c.named(
      new Map([
        ['blk.0.z.weight', '0:a'],
        ['blk.0.y.weight', '0:b'],
        ['blk.0.x.weight', '0:missing'],
      ]),
    );
    const p = join(dir, 'im.gguf');
    await writeImatrix(p, { entries, datasets: ['d.txt'], chunkCount: 3, chunkSize: 64 });
    const back = await readImatrix(p);
    expect([...back.entries.keys()]).toEqual(['blk.0.y.weight', 'blk.0.z.weight']);
    const z = back.entries.get('blk.0.z.weight')!;
    expect([...z.counts]).toEqual([0, 2]);
    expect([...z.sums]).toEqual([0, 0, 0, ...[1 + 0.25, 4 + 1 / 16, 9 + 1 / 64].map(Math.fround)]);
    expect([...back.entries.get('blk.0.y.weight')!.sums]).toEqual([0.1, 0.2].map((v) => Math.fround(Math.fround(v) ** 2)));
    expect(back).toMatchObject({ datasets: ['d.txt'], chunkCount: 3, chunkSize: 64 });
    const f = await readGguf(p);
    expect(f.tensors.map((t) => [t.name, t.ne])).toEqual([
      ['blk.0.y.weight.in_sum2', [2, 1]],
      ['blk.0.y.weight.counts', [1, 1]],
      ['blk.0.z.weight.in_sum2', [3, 2]],
      ['blk.0.z.weight.counts', [1, 2]],
    ]);
  });

  it('refuses what a GGUF cannot hold, before any work, with the flag named', async () => {
    const base = ['quantize', '--model', M, '--format', 'gguf', '--out', join(dir, 'never')];
    const cases: [string[], RegExp][] = [
      [['--candidates', 'f16', '--bits', '3'], /--bits has no meaning for the unquantized GGUF/],
      [['--candidates', 'f16,q4_k', '--calib', CALIB, '--bits', '4'], /stands alone/],
      [['--bits', '4'], /GPTQ needs calibration/],
      [['--bits', '4', '--method', 'rtn'], /needs calibration text to measure errors/],
      [['--bits', '4', '--calib', CALIB, '--shard', '0/2'], /--shard is not available with --format gguf/],
      [['--bits', '4', '--calib', CALIB, '--act-order'], /--act-order is not available/],
      [['--bits', '4', '--calib', CALIB, '--group-size', '64'], /--group-size is not available/],
      // the default candidates' smallest: 128-wide gate/up at 4.5 bpw (IQ4_NL/Q4_0 fallbacks), down IQ2_XXS (2.0625)
      [['--bits', '3', '--calib', CALIB], /below the smallest GGUF size .* 3\.6875 bpw/],
    ];
    for (const [args, msg] of cases) {
      const r = await runMoe([...base, ...args]);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toMatch(msg);
    }
    const r = await runMoe(['quantize', '--model', M, '--bits', '3', '--candidates', 'q4_k', '--method', 'rtn', '--out', join(dir, 'never')]);
    expect(r.stderr).toMatch(/ggml type names \(q4_k\) are for --format gguf/);
  });

  it('moe inspect reads the GGUF: sizes per class and type from the header, as the report has them', async () => {
    const r = await runMoe(['inspect', '--model', out, '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.format).toBe('gguf');
    expect(j.architecture).toBe('llama');
    expect(j.metadata['llama.expert_count']).toBe(8);
    expect(j.summary.byClass.expert.bpw).toBeCloseTo(rep.expertBpw, 12);
    expect(j.summary.byType).toEqual(rep.summary.byType);
    const text = await runMoe(['inspect', '--model', join(out, GGUF_FILE)]);
    expect(text.stdout).toMatch(/expert +12 tensors .* bpw/);
  });

  it('--candidates f16 writes the unquantized GGUF (no calibration, no --bits)', async () => {
    const r = await runMoe(['quantize', '--model', M, '--format', 'gguf', '--candidates', 'F16', '--out', join(dir, 'f16')]);
    expect(r.code).toBe(0);
    const f = await readGguf(join(dir, 'f16', GGUF_FILE));
    expect(new Set(f.tensors.map((t) => t.type))).toEqual(new Set(['F16', 'F32']));
    expect(r.stdout).toMatch(/expert +12 tensors .* 16\.000 bpw/);
  });
});
