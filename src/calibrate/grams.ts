/**
 * Input Gram matrices X^T X (float64) of a model's linears, accumulated during a calibration pass without keeping
 * activations, written per layer as soon as the layer is done:
 *   layer-L.attention.in        q/k/v (and MLA q_a/kv_a) input, all tokens          [H, H]
 *   layer-L.attention.o_proj.in o_proj input                                         [heads*dv, heads*dv]
 *   layer-L.input               MoE block input, all tokens (router, shared gate/up) [H, H]
 *   layer-L.expert-E.in         gate/up input, tokens routed to expert E             [H, H]
 *   layer-L.expert-E.down.in    down_proj input act(gate x) * up x, routed tokens    [I, I]
 *   layer-L.shared.down.in      shared expert's down_proj input                      [Is, Is]
 *   layer-L.mlp.down.in         dense layers' down_proj input                        [Id, Id]
 * MLA's inner projections (q_b_proj, kv_b_proj) are not covered.
 */
import { fail } from '../errors.js';
import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Model } from '../model/open.js';
import type { LinearInput, MoeLayerDone, StreamHooks } from '../runtime/api.js';
import { tokensPerExpert } from '../runtime/moe.js';

/** The experts' input Grams would be of x, where llama4's experts see w * x (src/runtime/moe.ts weightsInput). */
function refuseWeightedInputs(model: Model): void {
  if (model.view.routing.weightsInput)
    fail(
      'UnsupportedArchitecture',
      `${model.view.family} scales each routed expert's input by its router weight: Gram matrices of the experts' inputs are not collected for it`,
    );
}

/** bytes the --grams output will take (every file listed above, float64); refused first where they would be wrong */
export function gramBytes(model: Model): number {
  refuseWeightedInputs(model);
  const v = model.view;
  const { hidden: H, numExperts: E, heads } = v.dims;
  const dv = v.attention.mla ? v.attention.mla.vHeadDim : v.dims.headDim;
  let n = 0;
  for (const l of v.layers) {
    n += H * H + (heads * dv) ** 2;
    if (l.block.kind === 'dense') n += l.block.mlp.down.inFeatures ** 2;
    else {
      const I = l.block.experts[0]!.down.inFeatures;
      n += H * H + E * (H * H + I * I);
      if (l.block.shared) n += l.block.shared.down.inFeatures ** 2;
    }
  }
  return n * 8;
}

/** X^T X of the given rows of x [T, H], accumulated into g [H, H] (upper triangle; mirror() completes it). */
export function accumulateGram(g: Float64Array, x: Float32Array, H: number, rows: Int32Array | null, T: number): void {
  const n = rows ? rows.length : T;
  const xr = new Float64Array(H);
  for (let i = 0; i < n; i++) {
    const t = rows ? rows[i]! : i;
    for (let a = 0; a < H; a++) xr[a] = x[t * H + a]!;
    for (let a = 0; a < H; a++) {
      const va = xr[a]!;
      if (va === 0) continue;
      const o = a * H;
      for (let b = a; b < H; b++) g[o + b]! += va * xr[b]!;
    }
  }
}

function mirror(g: Float64Array, H: number): void {
  for (let a = 0; a < H; a++) for (let b = a + 1; b < H; b++) g[b * H + a] = g[a * H + b]!;
}

/** Hooks that accumulate every Gram above and write each layer's files into `dir` when the layer ends. */
export function gramWriter(model: Model, dir: string): { hooks: Pick<StreamHooks, 'onLinearInput' | 'onMoeLayerDone' | 'onLayerOutput'>; files: string[] } {
  const E = model.view.dims.numExperts;
  refuseWeightedInputs(model);
  const files: string[] = [];
  const acc = new Map<string, { g: Float64Array; n: number }>();
  const at = (name: string, n: number) => {
    let a = acc.get(name);
    if (!a) acc.set(name, (a = { g: new Float64Array(n * n), n }));
    return a.g;
  };
  const onLinearInput = (li: LinearInput) => {
    // a dense layer's gate/up input is not among the statistics calibrate saves (its files stay what they were)
    if (li.role === 'mlp.in') return;
    const name = li.role === 'experts.down.in' ? `layer-${li.layer}.expert-${li.expert}.down.in` : `layer-${li.layer}.${li.role}`;
    accumulateGram(at(name, li.cols), li.x, li.cols, null, li.rows);
  };
  const onMoeLayerDone = (info: MoeLayerDone) => {
    const l = info.layer.index;
    const H = info.hidden;
    accumulateGram(at(`layer-${l}.input`, H), info.x, H, null, info.T);
    const groups = tokensPerExpert(info.routing, E);
    for (let e = 0; e < E; e++) accumulateGram(at(`layer-${l}.expert-${e}.in`, H), info.x, H, groups[e]!.tokens, info.T);
  };
  const onLayerOutput = async (layer: number) => {
    await mkdir(dir, { recursive: true });
    for (const [name, { g, n }] of [...acc]) {
      if (!name.startsWith(`layer-${layer}.`)) continue;
      mirror(g, n);
      const file = `${name}.gram.bin`;
      const fh = await open(join(dir, file), 'w');
      try {
        await fh.write(new Uint8Array(g.buffer, g.byteOffset, g.byteLength));
      } finally {
        await fh.close();
      }
      files.push(file);
      acc.delete(name);
    }
  };
  return { hooks: { onLinearInput, onMoeLayerDone, onLayerOutput }, files };
}
