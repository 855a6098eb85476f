/**
 * GPT-2-style byte-level BPE: trainer, encoder, and the Hugging Face tokenizer.json it is saved as.
 *
 * Text is split by the GPT-2 pre-tokenizer regex, each piece's UTF-8 bytes are mapped to printable characters
 * (bytes_to_unicode), and merges are applied lowest rank first, leftmost first on ties. Every byte is in the base
 * alphabet, so any text encodes and decode(encode(text)) == text. Ids: 0 <unk>, 1 <s>, 2 </s>, then the 256 byte
 * symbols in byte order, then one id per merge in merge order.
 */

/** The pre-tokenizer of GPT-2 (and of @huggingface/tokenizers' ByteLevel with use_regex). */
export const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

export const SPECIAL_TOKENS = ['<unk>', '<s>', '</s>'] as const;
export const UNK_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;
const FIRST_BYTE_ID = SPECIAL_TOKENS.length;

/** GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves). */
export const BYTE_TO_CHAR: string[] = (() => {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const map = new Array<string>(256);
  bs.forEach((b, i) => (map[b] = String.fromCodePoint(cs[i]!)));
  return map;
})();

const utf8 = new TextEncoder();

export function pretokenize(text: string): string[] {
  return text.match(GPT2_SPLIT) ?? [];
}

function bytePiece(piece: string): string {
  let s = '';
  for (const b of utf8.encode(piece)) s += BYTE_TO_CHAR[b]!;
  return s;
}

export interface BpeModel {
  /** token string (byte-level characters) per id */
  tokens: string[];
  /** merges in rank order, as pairs of token strings */
  merges: [string, string][];
}

/**
 * Learn merges until the vocabulary (specials + 256 bytes + merges) reaches vocabSize. Word-frequency BPE with
 * incremental pair counts: a merge only revisits the words that contain the merged pair.
 */
export function trainBpe(lines: Iterable<string>, vocabSize: number): BpeModel {
  const wordFreq = new Map<string, number>();
  for (const line of lines) for (const p of pretokenize(line)) wordFreq.set(p, (wordFreq.get(p) ?? 0) + 1);

  const tokens: string[] = [...SPECIAL_TOKENS, ...BYTE_TO_CHAR];
  const words: number[][] = [];
  const freqs: number[] = [];
  for (const [w, f] of wordFreq) {
    words.push([...utf8.encode(w)].map((b) => FIRST_BYTE_ID + b));
    freqs.push(f);
  }
  const KEY = 1 << 16;
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (wi: number, sign: 1 | -1) => {
    const w = words[wi]!;
    const f = freqs[wi]! * sign;
    for (let i = 0; i + 1 < w.length; i++) {
      const k = w[i]! * KEY + w[i + 1]!;
      pairCount.set(k, (pairCount.get(k) ?? 0) + f);
      if (sign > 0) {
        let s = pairWords.get(k);
        if (!s) pairWords.set(k, (s = new Set()));
        s.add(wi);
      }
    }
  };
  for (let wi = 0; wi < words.length; wi++) addPairs(wi, 1);

  const merges: [string, string][] = [];
  while (tokens.length < vocabSize) {
    let best = -1;
    let bestCount = 0;
    for (const [k, c] of pairCount) {
      if (c > bestCount || (c === bestCount && c > 0 && k < best)) {
        best = k;
        bestCount = c;
      }
    }
    if (best < 0 || bestCount < 2) break;
    const a = Math.floor(best / KEY);
    const b = best % KEY;
    const id = tokens.length;
    tokens.push(tokens[a]! + tokens[b]!);
    merges.push([tokens[a]!, tokens[b]!]);
    const affected = pairWords.get(best)!;
    pairWords.delete(best);
    for (const wi of affected) {
      addPairs(wi, -1);
      const w = words[wi]!;
      const out: number[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          out.push(id);
          i++;
        } else out.push(w[i]!);
      }
      words[wi] = out;
      addPairs(wi, 1);
    }
    pairCount.delete(best);
  }
  return { tokens, merges };
}

export class BpeEncoder {
  private readonly ids = new Map<string, number>();
  private readonly ranks = new Map<string, number>();
  private readonly cache = new Map<string, number[]>();
  private readonly charToByte = new Map<string, number>();
  private readonly decoder = new TextDecoder('utf-8', { fatal: false });

  constructor(readonly model: BpeModel) {
    model.tokens.forEach((t, i) => this.ids.set(t, i));
    model.merges.forEach(([a, b], r) => this.ranks.set(a + ' ' + b, r));
    BYTE_TO_CHAR.forEach((c, b) => this.charToByte.set(c, b));
  }

  get vocabSize(): number {
    return this.model.tokens.length;
  }

  private encodePiece(piece: string): number[] {
    const hit = this.cache.get(piece);
    if (hit) return hit;
    const sym = [...bytePiece(piece)];
    for (;;) {
      let bestRank = Infinity;
      let at = -1;
      for (let i = 0; i + 1 < sym.length; i++) {
        const r = this.ranks.get(sym[i]! + ' ' + sym[i + 1]!);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          at = i;
        }
      }
      if (at < 0) break;
      sym.splice(at, 2, sym[at]! + sym[at + 1]!);
    }
    const ids = sym.map((s) => this.ids.get(s) ?? UNK_ID);
    if (this.cache.size < 500_000) this.cache.set(piece, ids);
    return ids;
  }

  /** Token ids of one line, without special tokens (the runtime's convention). */
  encode(text: string): number[] {
    const out: number[] = [];
    for (const p of pretokenize(text)) for (const id of this.encodePiece(p)) out.push(id);
    return out;
  }

  decode(ids: readonly number[]): string {
    const bytes: number[] = [];
    for (const id of ids) {
      if (id < FIRST_BYTE_ID) continue;
      for (const c of this.model.tokens[id]!) bytes.push(this.charToByte.get(c)!);
    }
    return this.decoder.decode(new Uint8Array(bytes));
  }
}

/** The Hugging Face tokenizer.json for a byte-level BPE model; encode() with special tokens prepends <s>. */
export function tokenizerJson(model: BpeModel): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  model.tokens.forEach((t, i) => (vocab[t] = i));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((content, id) => ({
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
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [BOS_ID], tokens: ['<s>'] } },
    },
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
      vocab,
      merges: model.merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

export const TOKENIZER_CONFIG = {
  add_bos_token: true,
  add_eos_token: false,
  bos_token: '<s>',
  eos_token: '</s>',
  unk_token: '<unk>',
  pad_token: null,
  clean_up_tokenization_spaces: false,
  model_max_length: 512,
  tokenizer_class: 'PreTrainedTokenizerFast',
  added_tokens_decoder: Object.fromEntries(
    SPECIAL_TOKENS.map((content, id) => [
      String(id),
      {
        content,
        lstrip: false,
        normalized: false,
        rstrip: false,
        single_word: false,
        special: true,
      },
    ]),
  ),
};

export const SPECIAL_TOKENS_MAP = { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' };

/** Rebuild the model from a saved tokenizer.json (so later runs reuse the committed tokenizer). */
export function modelFromTokenizerJson(json: { model: { vocab: Record<string, number>; merges: (string | [string, string])[] } }): BpeModel {
  const tokens: string[] = [];
  for (const [t, i] of Object.entries(json.model.vocab)) tokens[i] = t;
  const merges = json.model.merges.map((m) => (Array.isArray(m) ? m : (m.split(' ', 2) as [string, string])));
  return { tokens, merges };
}
