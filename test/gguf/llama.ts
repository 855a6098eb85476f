/**
 * llama.cpp itself, through node-llama-cpp's prebuilt binaries (CPU build): load a GGUF and score token windows.
 * Windows are fed as token ids (no tokenization on llama.cpp's side), each in a fresh sequence; position i's
 * next-token distribution (greedy sampler, so the probabilities are the softmax of the raw logits) is scored
 * against token i+1, the convention `moe eval` uses.
 */
import { getLlama, LlamaLogLevel, type Llama, type LlamaModel, type Token } from 'node-llama-cpp';
import { dequantizeGgml, isBlockType } from '../../kernels/ggml/codecs.js';
import { kv } from '../../src/gguf/format.js';
import { readGguf, readGgufTensor } from '../../src/gguf/reader.js';
import { writeGguf, type GgufWriteTensor } from '../../src/gguf/writer.js';
import { toF32 } from '../../src/io/dtype.js';

let llamaP: Promise<Llama> | undefined;
export function llama(): Promise<Llama> {
  llamaP ??= getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, progressLogs: false, vramPadding: 0 });
  return llamaP;
}

export async function loadGguf(path: string): Promise<LlamaModel> {
  return (await llama()).loadModel({ modelPath: path, gpuLayers: 0 });
}

export interface LlamaScore {
  nll: number;
  scored: number;
  /** per window, per scored position: log p(next token) */
  logprobs: Float64Array[];
}

/** Sum of -log p(w[i+1] | w[..i]) over every window, as llama.cpp computes it. */
export async function llamaNll(model: LlamaModel, windows: readonly Int32Array[]): Promise<LlamaScore> {
  const S = windows[0]!.length;
  const ctx = await model.createContext({ contextSize: Math.max(64, S), batchSize: Math.max(64, S), sequences: 1, threads: 2 });
  try {
    const seq = ctx.getSequence();
    let nll = 0;
    let scored = 0;
    const logprobs: Float64Array[] = [];
    for (const w of windows) {
      await seq.clearHistory();
      const input = Array.from(w, (t, i) => (i < w.length - 1 ? ([t as Token, { generateNext: { probabilities: true } }] as const) : (t as Token)));
      const res = await seq.controlledEvaluate(input as Parameters<typeof seq.controlledEvaluate>[0]);
      const lp = new Float64Array(w.length - 1);
      for (let i = 0; i < w.length - 1; i++) {
        const p = res[i]?.next?.probabilities?.get(w[i + 1]! as Token);
        if (p === undefined) throw new Error(`llama.cpp gave no probability for token ${w[i + 1]} at position ${i}`);
        lp[i] = Math.log(p);
        nll -= lp[i]!;
        scored++;
      }
      logprobs.push(lp);
    }
    return { nll, scored, logprobs };
  } finally {
    await ctx.dispose();
  }
}

/** llama.cpp's mean NLL per scored token of a GGUF on the windows. */
export async function theirs(gguf: string, windows: Int32Array[]): Promise<number> {
  const lm = await loadGguf(gguf);
  try {
    const r = await llamaNll(lm, windows);
    return r.nll / r.scored;
  } finally {
    await lm.dispose();
  }
}

/** llama.cpp on a quantized file vs llama.cpp on its F32 twin holding our decoding of every tensor: |ppl ratio - 1|. */
export async function twinGap(file: string, windows: Int32Array[]): Promise<number> {
  const f = await readGguf(file);
  const twin: GgufWriteTensor[] = [];
  for (const t of f.tensors) {
    const b = await readGgufTensor(f, t.name);
    const rows = t.ne.slice(1).reduce((a, c) => a * c, 1);
    const v = isBlockType(t.type) ? dequantizeGgml(t.type, b, rows, t.ne[0]!) : toF32(b, t.type as 'F32');
    twin.push({ name: t.name, type: 'F32', ne: t.ne, produce: () => new Uint8Array(v.buffer, v.byteOffset, v.byteLength) });
  }
  const meta = new Map(f.metadata);
  meta.set('general.file_type', kv.u32(0));
  const path = `${file}.twin.gguf`;
  await writeGguf(path, meta, twin);
  const a = await theirs(file, windows);
  const b = await theirs(path, windows);
  return Math.abs(Math.exp(a - b) - 1);
}
