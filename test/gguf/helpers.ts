/** Tiny checkpoints of every family with a tokenizer (a GGUF carries one), for the GGUF tests. */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTinyCheckpoint, type Family, type TinyOptions } from '../helpers/families.js';
import { seededRandom } from '../../kernels/random.js';

/** The families llama.cpp's converter supports among ours, and their llama.cpp architecture. */
export const GGUF_FAMILIES: Partial<Record<Family, string>> = {
  mixtral: 'llama',
  qwen2_moe: 'qwen2moe',
  qwen3_moe: 'qwen3moe',
  olmoe: 'olmoe',
  deepseek_v2: 'deepseek2',
  deepseek_v3: 'deepseek2',
  granitemoe: 'granitemoe',
  gpt_oss: 'gpt-oss',
};

/** A byte-level BPE tokenizer of `vocab` tokens (3 specials, then letters and pairs, no merges). */
export async function writeTinyTokenizer(dir: string, vocab = 64): Promise<void> {
  const v: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  for (let i = 3; i < vocab; i++) {
    const k = i - 3;
    v[k < 26 ? letters[k]! : letters[Math.floor((k - 26) / 26) % 26]! + letters[(k - 26) % 26]! + (k >= 26 * 27 ? String(k) : '')] = i;
  }
  const tok = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: ['<unk>', '<s>', '</s>'].map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: v,
      merges: [],
    },
  };
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tok));
  await writeFile(
    join(dir, 'tokenizer_config.json'),
    JSON.stringify({ tokenizer_class: 'PreTrainedTokenizerFast', bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' }),
  );
}

/**
 * A tiny checkpoint llama.cpp can represent: qwen2/qwen3 without their dense first layer (llama.cpp's qwen2moe and
 * qwen3moe have none); deepseek and olmoe with num_key_value_heads = num_attention_heads, as the released models have (llama.cpp's olmoe
 * requires it).
 */
export async function makeGgufCheckpoint(family: Family, dir: string, opts: TinyOptions = {}): Promise<void> {
  const config: Record<string, unknown> = { ...(opts.config ?? {}) };
  if (family === 'qwen2_moe' || family === 'qwen3_moe') config['mlp_only_layers'] ??= [];
  if (family === 'deepseek_v2' || family === 'deepseek_v3' || family === 'olmoe') config['num_key_value_heads'] ??= 4;
  await makeTinyCheckpoint(family, dir, { ...opts, config });
  await writeTinyTokenizer(dir, 64);
}

/** Random token windows (each starting with BOS id 1). */
export function randomWindows(n: number, len: number, vocab: number, seed = 7): Int32Array[] {
  const r = seededRandom(seed);
  return Array.from({ length: n }, () => Int32Array.from({ length: len }, (_, i) => (i === 0 ? 1 : 3 + Math.floor(r() * (vocab - 3)))));
}
