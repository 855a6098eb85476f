/**
 * --method auto (src/gguf/choice.ts): each expert projection takes GPTQ or importance-weighted rounding, whichever
 * gives the lower error on tokens held back from the fit, and the bytes written are the chosen quantizer's.
 * - synthetic: one linear fitted on inputs of low rank. Held-back tokens from the same distribution make GPTQ win
 *   (it compensates along the directions the inputs take); isotropic held-back tokens make the rounding win (GPTQ
 *   pushed its errors into the directions the fit never saw). The same choice code must pick each side.
 * - end to end: `moe quantize --format gguf --method auto` on the trained fixture; layer 0's gate (its inputs are
 *   the full-precision model's, so they can be rebuilt here) holds, expert by expert, either GPTQ's bytes or the
 *   rounding's from the fit tokens, the one with the lower held-back output error, and the counts are the report's.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dequantizeGgml, quantizeGgml } from '../../kernels/ggml/codecs.js';
import { gptqGgml } from '../../kernels/ggml/gptq.js';
import { accumulateHessian, prepareGptq } from '../../kernels/quant/gptq.js';
import { loadWindowSet } from '../../src/data/windows.js';
import { chooseEncoding, fitInput, heldGates, holdBack } from '../../src/gguf/choice.js';
import { GGUF_FILE } from '../../src/gguf/export.js';
import type { GgufQuantizeReport } from '../../src/gguf/quantize-report.js';
import { readGguf, readGgufTensor } from '../../src/gguf/reader.js';
import { openModel } from '../../src/model/open.js';
import { mlpForward, outputError } from '../../src/quantize/expert.js';
import { quantize } from '../../src/quantize/pipeline.js';
import { routedTokens, type Routed } from '../../src/quantize/routed.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { streamModel } from '../../src/runtime/stream.js';
import { rng, useWasm } from '../quantize/tf.js';

const diag = (h: Float64Array, n: number) => Float64Array.from({ length: n }, (_, i) => h[i * n + i]!);

/** sum over rows of ||(Wq - W) x||^2 */
function linearError(w: Float32Array, wq: Float32Array, out: number, inF: number, x: Float32Array, n: number): number {
  let e = 0;
  for (let t = 0; t < n; t++)
    for (let o = 0; o < out; o++) {
      let s = 0;
      for (let i = 0; i < inF; i++) s += (wq[o * inF + i]! - w[o * inF + i]!) * x[t * inF + i]!;
      e += s * s;
    }
  return e;
}

await useWasm();

describe('holdBack', () => {
  it('holds back rows every-1, 2*every-1, ... and their gates, and keeps the rest in order', () => {
    const x = Float32Array.from({ length: 10 * 2 }, (_, i) => i);
    const s = holdBack(x, 10, 2, 4);
    expect([s.nFit, s.nHeld]).toEqual([8, 2]);
    expect([...s.held]).toEqual([6, 7, 14, 15]);
    expect([...s.fit]).toEqual([0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 16, 17, 18, 19]);
    expect([
      ...heldGates(
        Float32Array.from({ length: 10 }, (_, i) => i / 10),
        4,
      ),
    ]).toEqual([0.3, 0.7].map(Math.fround));
  });
});

describe('chooseEncoding', () => {
  const out = 16;
  const inF = 256;
  const r = rng(17);
  const w = Float32Array.from({ length: out * inF }, () => r());
  // inputs of rank 8 (plus a little noise): GPTQ can compensate each error along the other columns
  const basis = Array.from({ length: 8 }, () => Float32Array.from({ length: inF }, () => r()));
  const lowRank = (n: number) => {
    const x = new Float32Array(n * inF);
    for (let t = 0; t < n; t++) {
      const c = basis.map(() => r());
      for (let i = 0; i < inF; i++) x[t * inF + i] = c.reduce((a, ci, k) => a + ci * basis[k]![i]!, 0) + 0.05 * r();
    }
    return x;
  };
  const nFit = 400;
  const xFit = lowRank(nFit);
  const h = new Float64Array(inF * inF);
  accumulateHessian(h, xFit, nFit, inF);
  const fi = fitInput(xFit, nFit, inF, 0.01);
  const lin = { out, in: inF, w };
  const gptqBytes = gptqGgml('Q2_K', w, out, inF, prepareGptq(h, inF, { damp: 0.01 }), diag(h, inF)).bytes;
  const roundBytes = quantizeGgml('Q2_K', w, out, inF, diag(h, inF));
  const byGptq = dequantizeGgml('Q2_K', gptqBytes, out, inF);
  const byRound = dequantizeGgml('Q2_K', roundBytes, out, inF);

  it('takes GPTQ when the held-back tokens are like the fit tokens, and writes its bytes', () => {
    const nh = 100;
    const xh = lowRank(nh);
    const c = chooseEncoding('Q2_K', lin, fi, (d) => linearError(w, d, out, inF, xh, nh));
    expect(c.by).toBe('gptq');
    expect(c.errors!.gptq).toBeCloseTo(linearError(w, byGptq, out, inF, xh, nh), 6);
    expect(c.errors!.rounding).toBeCloseTo(linearError(w, byRound, out, inF, xh, nh), 6);
    expect(c.errors!.gptq).toBeLessThan(0.5 * c.errors!.rounding);
    expect(Buffer.from(c.bytes).equals(Buffer.from(gptqBytes))).toBe(true);
    expect([...c.deq]).toEqual([...byGptq]);
  });

  it('takes the rounding when the held-back tokens go where the fit tokens never went, and writes its bytes', () => {
    const nh = 100;
    const xh = Float32Array.from({ length: nh * inF }, () => r());
    const c = chooseEncoding('Q2_K', lin, fi, (d) => linearError(w, d, out, inF, xh, nh));
    expect(c.by).toBe('rounding');
    expect(c.errors!.rounding).toBeCloseTo(linearError(w, byRound, out, inF, xh, nh), 6);
    expect(c.errors!.rounding).toBeLessThan(c.errors!.gptq);
    expect(Buffer.from(c.bytes).equals(Buffer.from(roundBytes))).toBe(true);
    expect([...c.deq]).toEqual([...byRound]);
  });

  it('a type GPTQ has no rounding for takes the rounding, unmeasured', () => {
    let calls = 0;
    const c = chooseEncoding('F16', lin, fi, () => calls++);
    expect([c.by, c.errors, calls]).toEqual(['rounding', undefined, 0]);
  });
});

const M = 'test/fixtures/tiny-mixtral';
const CALIB = 'test/fixtures/text/calib.txt';
const dir = await mkdtemp(join(tmpdir(), 'moe-gguf-choice-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('moe quantize --format gguf --method auto', () => {
  let rep: GgufQuantizeReport;
  const outDir = join(dir, 'q');
  beforeAll(async () => {
    rep = (await quantize({
      model: M,
      calib: CALIB,
      calibTokens: 512,
      seqLen: 64,
      bits: 6,
      format: 'gguf',
      method: 'auto',
      candidates: ['q4_k', 'q6_k'],
      out: outDir,
    })) as unknown as GgufQuantizeReport;
  }, 600_000);

  it("layer 0's gate holds, expert by expert, the bytes of the encoding with the lower held-back error", async () => {
    // GPTQ here runs on the tfjs backend the run chose, as the run's did
    const { windows } = await loadWindowSet(M, CALIB, { seqLen: 64, maxTokens: 512 });
    let routed: Routed[] = [];
    let weights: SwiGLUWeights[] = [];
    let H = 0;
    const m = await openModel(M);
    try {
      await streamModel(
        m,
        windows,
        {
          onMoeLayer: (inp) => {
            if (inp.layer.index !== 0) return;
            routed = routedTokens(inp);
            weights = inp.experts;
            H = inp.hidden;
          },
        },
        { stopAfterLayer: 0 },
      );
    } finally {
      await m.ckpt.close();
    }
    const name = 'blk.0.ffn_gate_exps.weight';
    const f = await readGguf(join(outDir, GGUF_FILE));
    const t = f.tensors.find((x) => x.name === name)!;
    const all = await readGgufTensor(f, name);
    const E = weights.length;
    const slice = all.length / E;
    const act = { kind: 'silu' } as const;
    const count = { gptq: 0, rounding: 0 };
    for (let e = 0; e < E; e++) {
      const r = routed[e]!;
      const g = weights[e]!.gate;
      const s = holdBack(r.x, r.n, H, 4);
      expect(s.nFit).toBeGreaterThanOrEqual(32);
      const h = new Float64Array(H * H);
      accumulateHessian(h, s.fit, s.nFit, H);
      const gb = gptqGgml(t.type as 'Q4_K', g.w, g.out, g.in, prepareGptq(h, H, { damp: 0.01 }), diag(h, H)).bytes;
      const rb = quantizeGgml(t.type, g.w, g.out, g.in, diag(h, H));
      const gates = heldGates(r.gates, 4);
      const ref = mlpForward(weights[e]!, s.held, s.nHeld, act);
      const err = (b: Uint8Array) =>
        outputError(ref, { ...weights[e]!, gate: { ...g, w: dequantizeGgml(t.type, b, g.out, g.in) } }, s.held, s.nHeld, gates, act);
      const want = err(gb) <= err(rb) ? 'gptq' : 'rounding';
      count[want]++;
      const got = Buffer.from(all.subarray(e * slice, (e + 1) * slice));
      expect(got.equals(Buffer.from(want === 'gptq' ? gb : rb)), `expert ${e}: ${want}`).toBe(true);
    }
    expect(rep.units.find((u) => u.tensor === name)!.encodings).toEqual(count);
    const total = rep.units.reduce((a, u) => a + (u.encodings ? u.encodings.gptq + u.encodings.rounding : 0), 0);
    expect(rep.encodings!.gptq + rep.encodings!.rounding).toBe(total);
    // every routed expert slice (4 layers x 3 projections x 8 experts) had enough tokens to be measured
    expect(total).toBe(4 * 3 * E);
    expect(rep.encodings!.rounding).toBeGreaterThan(0);
    expect(rep.encodings!.gptq).toBeGreaterThan(0);
  }, 300_000);

  it('--method auto is refused for --format gptq, and without --calib', async () => {
    await expect(quantize({ model: M, calib: CALIB, bits: 4, method: 'auto', out: join(dir, 'x') })).rejects.toThrow(
      /^auto: the choice between GPTQ and llama.cpp's rounding per tensor is for --format gguf/,
    );
    await expect(quantize({ model: M, bits: 4, format: 'gguf', method: 'auto', out: join(dir, 'y') })).rejects.toThrow(
      /^auto measures GPTQ and the rounding on calibration tokens: give --calib FILE/,
    );
  });
});
