/**
 * A minimal F16 GGUF (version 3) of a Mixtral checkpoint, for the throughput comparison against llama.cpp in
 * bench/forward.ts only: llama.cpp's `llama` architecture with experts (how its converter writes Mixtral), the
 * linears in F16, norms and router in F32, and a placeholder SentencePiece vocabulary (the bench feeds token ids,
 * never text). This is not the project's GGUF output (src/gguf/, issue 17); it exists so the bench does not wait
 * for it.
 *
 * Two layout facts from llama.cpp's convert_hf_to_gguf.py (LlamaModel):
 * - q_proj and k_proj rows are permuted from HF's rotate-half order to llama.cpp's interleaved RoPE pairs: within
 *   each head, row 2j + t comes from row t * (d / 2) + j (k_proj with the kv head count);
 * - experts are stacked into one 3-D tensor per projection: ffn_{gate,up}_exps [E, I, H], ffn_down_exps [E, H, I]
 *   (GGUF lists dimensions innermost first, so those are written [H, I, E] and [I, H, E]).
 */
import { open } from 'node:fs/promises';
import { f32ToF16Bits } from '../../src/io/dtype.js';
import type { Model } from '../../src/model/open.js';

const GGUF_UINT32 = 4;
const GGUF_INT32 = 5;
const GGUF_FLOAT32 = 6;
const GGUF_BOOL = 7;
const GGUF_STRING = 8;
const GGUF_ARRAY = 9;
const GGML_F32 = 0;
const GGML_F16 = 1;
const ALIGN = 32;

type Meta =
  | [string, 'u32' | 'i32' | 'f32' | 'bool' | 'str', number | string]
  | [string, 'arr-str', string[]]
  | [string, 'arr-f32', number[]]
  | [string, 'arr-i32', number[]];

class Bytes {
  private parts: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.parts.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  i32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }
  u64(v: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  concat(): Buffer {
    return Buffer.concat(this.parts);
  }
}

interface GgufTensor {
  name: string;
  /** dimensions innermost first (GGUF order) */
  ne: number[];
  type: typeof GGML_F32 | typeof GGML_F16;
  data: () => Promise<Float32Array>;
}

/** HF rotate-half rows -> llama.cpp interleaved rows, per head of d rows. */
function permuteRope(w: Float32Array, heads: number, inF: number): Float32Array {
  const rows = w.length / inF;
  const d = rows / heads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < d / 2; j++)
      for (let t = 0; t < 2; t++) out.set(w.subarray((h * d + t * (d / 2) + j) * inF, (h * d + t * (d / 2) + j + 1) * inF), (h * d + 2 * j + t) * inF);
  return out;
}

/** Write `model` (a Mixtral checkpoint) as an F16 GGUF at `path`. */
export async function writeMixtralGguf(model: Model, path: string): Promise<void> {
  const v = model.view;
  const { hidden: H, vocab: V, heads, kvHeads, headDim: d } = v.dims;
  const c = v.config as Record<string, number>;
  const E = v.layers[0]!.block.kind === 'moe' ? (v.layers[0]!.block as { experts: unknown[] }).experts.length : 0;
  const I = v.dims.expertIntermediate;
  const k = v.routing.topK;
  const read = (n: string) => model.ckpt.readF32(n);
  const tensors: GgufTensor[] = [{ name: 'token_embd.weight', ne: [H, V], type: GGML_F16, data: () => read(v.embed) }];
  for (const layer of v.layers) {
    const b = `blk.${layer.index}`;
    const t = layer.attention.tensors;
    tensors.push({ name: `${b}.attn_norm.weight`, ne: [H], type: GGML_F32, data: () => read(layer.inputNorm.weight) });
    tensors.push({ name: `${b}.attn_q.weight`, ne: [H, heads * d], type: GGML_F16, data: async () => permuteRope(await read(t.q_proj!), heads, H) });
    tensors.push({ name: `${b}.attn_k.weight`, ne: [H, kvHeads * d], type: GGML_F16, data: async () => permuteRope(await read(t.k_proj!), kvHeads, H) });
    tensors.push({ name: `${b}.attn_v.weight`, ne: [H, kvHeads * d], type: GGML_F16, data: () => read(t.v_proj!) });
    tensors.push({ name: `${b}.attn_output.weight`, ne: [heads * d, H], type: GGML_F16, data: () => read(t.o_proj!) });
    tensors.push({ name: `${b}.ffn_norm.weight`, ne: [H], type: GGML_F32, data: () => read(layer.postAttnNorm.weight) });
    if (layer.block.kind !== 'moe') throw new Error('writeMixtralGguf: every layer must be an MoE layer');
    const blk = layer.block;
    tensors.push({ name: `${b}.ffn_gate_inp.weight`, ne: [H, E], type: GGML_F32, data: () => read(blk.router.weight) });
    const stack = (pick: (e: (typeof blk.experts)[number]) => string, n: number) => async () => {
      const out = new Float32Array(E * n);
      for (let e = 0; e < E; e++) out.set(await read(pick(blk.experts[e]!)), e * n);
      return out;
    };
    tensors.push({ name: `${b}.ffn_gate_exps.weight`, ne: [H, I, E], type: GGML_F16, data: stack((e) => e.gate.tensor, I * H) });
    tensors.push({ name: `${b}.ffn_up_exps.weight`, ne: [H, I, E], type: GGML_F16, data: stack((e) => e.up.tensor, I * H) });
    tensors.push({ name: `${b}.ffn_down_exps.weight`, ne: [I, H, E], type: GGML_F16, data: stack((e) => e.down.tensor, I * H) });
  }
  tensors.push({ name: 'output_norm.weight', ne: [H], type: GGML_F32, data: () => read(v.finalNorm.weight) });
  tensors.push({ name: 'output.weight', ne: [H, V], type: GGML_F16, data: () => read(v.lmHead ?? v.embed) });

  // placeholder SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, then plain pieces
  const tokens: string[] = ['<unk>', '<s>', '</s>'];
  const types: number[] = [2, 3, 3];
  for (let i = 0; i < 256 && tokens.length < V; i++) {
    tokens.push(`<0x${i.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(6);
  }
  while (tokens.length < V) {
    tokens.push(`\u2581t${tokens.length}`);
    types.push(1);
  }
  const meta: Meta[] = [
    ['general.architecture', 'str', 'llama'],
    ['general.name', 'str', 'moe-bench'],
    ['general.alignment', 'u32', ALIGN],
    ['general.file_type', 'u32', 1],
    ['llama.vocab_size', 'u32', V],
    ['llama.context_length', 'u32', Math.min(Number(c['max_position_embeddings'] ?? 4096), 32768)],
    ['llama.embedding_length', 'u32', H],
    ['llama.block_count', 'u32', v.layers.length],
    ['llama.feed_forward_length', 'u32', I],
    ['llama.attention.head_count', 'u32', heads],
    ['llama.attention.head_count_kv', 'u32', kvHeads],
    ['llama.attention.key_length', 'u32', d],
    ['llama.attention.value_length', 'u32', d],
    ['llama.rope.dimension_count', 'u32', d],
    ['llama.rope.freq_base', 'f32', Number(c['rope_theta'] ?? 10000)],
    ['llama.attention.layer_norm_rms_epsilon', 'f32', Number(c['rms_norm_eps'] ?? 1e-5)],
    ['llama.expert_count', 'u32', E],
    ['llama.expert_used_count', 'u32', k],
    ['tokenizer.ggml.model', 'str', 'llama'],
    ['tokenizer.ggml.tokens', 'arr-str', tokens],
    ['tokenizer.ggml.scores', 'arr-f32', tokens.map(() => 0)],
    ['tokenizer.ggml.token_type', 'arr-i32', types],
    ['tokenizer.ggml.bos_token_id', 'u32', 1],
    ['tokenizer.ggml.eos_token_id', 'u32', 2],
    ['tokenizer.ggml.unknown_token_id', 'u32', 0],
    ['tokenizer.ggml.add_bos_token', 'bool', 0],
  ];
  const head = new Bytes();
  head.push(Buffer.from('GGUF', 'ascii'));
  head.u32(3);
  head.u64(tensors.length);
  head.u64(meta.length);
  for (const [key, type, value] of meta) {
    head.str(key);
    const scalar: Record<string, [number, () => void]> = {
      u32: [GGUF_UINT32, () => head.u32(value as number)],
      i32: [GGUF_INT32, () => head.i32(value as number)],
      bool: [GGUF_BOOL, () => head.push(Buffer.from([value as number]))],
      f32: [GGUF_FLOAT32, () => head.f32(value as number)],
      str: [GGUF_STRING, () => head.str(value as string)],
    };
    const sc = scalar[type];
    if (sc) {
      head.u32(sc[0]);
      sc[1]();
    } else {
      head.u32(GGUF_ARRAY);
      const arr = value as (string | number)[];
      head.u32(type === 'arr-str' ? GGUF_STRING : type === 'arr-f32' ? GGUF_FLOAT32 : GGUF_INT32);
      head.u64(arr.length);
      for (const x of arr) {
        if (type === 'arr-str') head.str(x as string);
        else if (type === 'arr-f32') head.f32(x as number);
        else head.i32(x as number);
      }
    }
  }
  const sizes = tensors.map((t) => t.ne.reduce((a, b) => a * b, 1) * (t.type === GGML_F16 ? 2 : 4));
  let off = 0;
  const offsets: number[] = [];
  for (const [i, t] of tensors.entries()) {
    offsets.push(off);
    off += Math.ceil(sizes[i]! / ALIGN) * ALIGN;
    head.str(t.name);
    head.u32(t.ne.length);
    for (const n of t.ne) head.u64(n);
    head.u32(t.type);
    head.u64(offsets[i]!);
  }
  const pad = (n: number) => Buffer.alloc((ALIGN - (n % ALIGN)) % ALIGN);
  head.push(pad(head.length));
  const fh = await open(path, 'w');
  try {
    let pos = 0;
    const write = async (b: Buffer) => {
      await fh.write(b, 0, b.length, pos);
      pos += b.length;
    };
    await write(head.concat());
    for (const [i, t] of tensors.entries()) {
      const x = await t.data();
      let b: Buffer;
      if (t.type === GGML_F32) b = Buffer.from(x.buffer, x.byteOffset, x.byteLength);
      else {
        b = Buffer.alloc(x.length * 2);
        for (let j = 0; j < x.length; j++) b.writeUInt16LE(f32ToF16Bits(x[j]!), 2 * j);
      }
      await write(b);
      await write(pad(sizes[i]!));
    }
  } finally {
    await fh.close();
  }
}
