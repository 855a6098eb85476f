/**
 * GPTQ into llama.cpp's block formats on a real layer: the trained fixture's layer-1 experts, each from the tokens
 * the router sends it. Error compensation must lower the Hessian-weighted error tr(dW H dW^T) below the format's
 * own importance-weighted rounding (the same fit with the Hessian diagonal as importance matrix, what llama.cpp
 * does with an imatrix), and the bytes it writes must decode (our decoder, checked bit for bit against gguf-py and
 * llama.cpp elsewhere) to exactly the values it fed back.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { gptqGgml, hessianError } from '../../kernels/ggml/gptq.js';
import { dequantizeMatrix, quantizeMatrix } from '../../kernels/ggml/kquants.js';
import { accumulateHessian, prepareGptq } from '../../kernels/quant/gptq.js';
import { loadWindowSet } from '../../src/data/windows.js';
import { openModel } from '../../src/model/open.js';
import type { SwiGLUWeights } from '../../src/runtime/api.js';
import { streamModel } from '../../src/runtime/stream.js';
import { activate, linearT } from '../../src/quantize/expert.js';
import { useWasm } from '../quantize/tf.js';

const M = 'test/fixtures/tiny-mixtral';
interface Routed {
  w: SwiGLUWeights;
  x: Float32Array;
  n: number;
}
let experts: Routed[] = [];

beforeAll(async () => {
  await useWasm();
  const { windows } = await loadWindowSet(M, 'test/fixtures/text/calib.txt', { seqLen: 64, maxTokens: 1024 });
  const m = await openModel(M);
  try {
    await streamModel(
      m,
      windows,
      {
        onMoeLayer: (inp) => {
          if (inp.layer.index !== 1) return;
          const { T, k, idx, w } = inp.routing;
          const H = inp.hidden;
          experts = inp.experts.slice(0, 3).map((ew, e) => {
            const rows: number[] = [];
            for (let t = 0; t < T; t++) for (let j = 0; j < k; j++) if (idx[t * k + j] === e && w[t * k + j] !== 0) rows.push(t);
            const x = new Float32Array(rows.length * H);
            rows.forEach((t, r) => x.set(inp.x.subarray(t * H, (t + 1) * H), r * H));
            return { w: ew, x, n: rows.length };
          });
        },
      },
      { stopAfterLayer: 1 },
    );
  } finally {
    await m.ckpt.close();
  }
}, 120_000);

function hessian(x: Float32Array, n: number, inF: number): Float64Array {
  const h = new Float64Array(inF * inF);
  accumulateHessian(h, x, n, inF);
  return h;
}

describe('GPTQ with the block format as its rounding', () => {
  it("lowers the Hessian-weighted error below the format's importance-weighted rounding (Q4_K on down, Q5_0/Q4_0 on 128-wide gate/up)", () => {
    expect(experts.length).toBe(3);
    for (const ex of experts) {
      expect(ex.n).toBeGreaterThan(100);
      // down_proj: 256 inputs (whole Q4_K blocks), from the expert's own activations
      const a = activate(linearT(ex.x, ex.n, ex.w.gate), linearT(ex.x, ex.n, ex.w.up), { kind: 'silu' });
      const cases = [
        { type: 'Q4_K', lin: ex.w.down, x: a },
        { type: 'Q2_K', lin: ex.w.down, x: a },
        { type: 'Q5_0', lin: ex.w.gate, x: ex.x },
        { type: 'Q4_0', lin: ex.w.up, x: ex.x },
      ] as const;
      for (const c of cases) {
        const { out, in: inF, w } = c.lin;
        const h = hessian(c.x, ex.n, inF);
        const diag = Float32Array.from({ length: inF }, (_, i) => h[i * inF + i]!);
        const rtn = dequantizeMatrix(c.type, quantizeMatrix(c.type, w, out, inF, diag), out, inF);
        const g = gptqGgml(c.type, w, out, inF, prepareGptq(h, inF, { damp: 0.01 }), diag);
        // the bytes decode to exactly what GPTQ fed back
        const dec = dequantizeMatrix(c.type, g.bytes, out, inF);
        const bad = dec.findIndex((v, i) => v !== g.deq[i]);
        expect(bad, `${c.type}: value ${bad} decodes to ${dec[bad]}, GPTQ fed back ${g.deq[bad]}`).toBe(-1);
        const eR = hessianError(w, rtn, out, inF, h);
        const eG = hessianError(w, g.deq, out, inF, h);
        // measured 0.21-0.44 of the rounding's error on these experts
        expect(eG, `${c.type} ${out}x${inF}`).toBeLessThan(0.6 * eR);
      }
    }
  });
});
