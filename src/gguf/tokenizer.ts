/**
 * The tokenizer as llama.cpp reads it from GGUF metadata (`tokenizer.ggml.*`), written the way llama.cpp's
 * converter (convert_hf_to_gguf.py with gguf-py's SpecialVocab) writes it:
 *
 * - GPT-2-style byte-level BPE (tokenizer.json, model BPE with a ByteLevel pre-tokenizer): model "gpt2", the
 *   pre-tokenizer name when llama.cpp knows the tokenizer (pretokenizers.ts), tokens by id with their types
 *   (NORMAL, CONTROL for special added tokens, USER_DEFINED for other added tokens, UNUSED "[PADi]" for ids the
 *   vocabulary skips), merges as "a b".
 * - SentencePiece (tokenizer.model, the ModelProto protobuf): model "llama", pre "default", pieces with their
 *   scores and types, added tokens from added_tokens.json and tokenizer_config.json's added_tokens_decoder.
 * - Llama-style BPE in tokenizer.json only (byte_fallback with a Sequence decoder; gguf-py's LlamaHfVocab):
 *   model "llama", every score -1000, <0xNN> tokens of type BYTE, special tokens CONTROL.
 *
 * Special tokens (bos/eos/unk/pad ids, add_bos/add_eos) follow SpecialVocab: tokenizer_config.json's *_token
 * strings resolved through the vocabulary, then config.json's *_token_id; add_bos_token/add_eos_token from
 * tokenizer_config.json, else read off a TemplateProcessing post-processor.
 */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { fail } from '../errors.js';
import { GgufValueType, kv, type GgufValue } from './format.js';
import { KNOWN_PRE_TOKENIZERS, PROBE_TEXT } from './pretokenizers.js';

/** gguf-py TokenType (= SentencePiece's piece types). */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface GgufTokenizer {
  model: 'gpt2' | 'llama';
  /** tokenizer.ggml.pre, when llama.cpp knows the tokenizer */
  pre?: string;
  tokens: string[];
  types: number[];
  scores?: number[];
  merges?: string[];
  special: Partial<Record<'bos' | 'eos' | 'unk' | 'pad' | 'sep' | 'cls' | 'mask', number>>;
  addBos?: boolean;
  addEos?: boolean;
  addSpacePrefix?: boolean;
  chatTemplate?: string;
  /** how the pre-tokenizer was named, for the report */
  preNote: string;
}

const MAX_BYTES = 512 * 1024 * 1024;

async function readJson(path: string, optional: boolean): Promise<Record<string, unknown> | undefined> {
  try {
    const st = await stat(path);
    if (st.size > MAX_BYTES) fail('InvalidConfig', `${path} is too large (${st.size} bytes)`);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') {
      if (optional) return undefined;
      fail('MissingFile', `${path} not found (a GGUF carries the model's tokenizer)`);
    }
    throw e;
  }
  let v: unknown;
  try {
    v = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    fail('InvalidConfig', `${path}: not valid JSON (${(e as Error).message})`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) fail('InvalidConfig', `${path} must hold a JSON object`);
  return v as Record<string, unknown>;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

/** A token given as a string or an AddedToken dict ({content}). */
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObj(v) && typeof v['content'] === 'string') return v['content'];
  return undefined;
}

/** Python's str() of a list of ints: "[1, 2, 3]". */
function pyList(ids: readonly number[]): string {
  return `[${ids.join(', ')}]`;
}

/** llama.cpp's name for this BPE tokenizer's pre-tokenizer, by the probe-text hash (undefined when unknown). */
export function preTokenizerName(tokJson: Obj, tokConfig: Obj | undefined): { name?: string; hash: string } {
  const t = new Tokenizer(tokJson, tokConfig ?? {});
  // transformers' tokenizer.encode(text) adds the special tokens of the post-processor
  const ids = t.encode(PROBE_TEXT).ids;
  const hash = createHash('sha256').update(pyList(ids)).digest('hex');
  const name = KNOWN_PRE_TOKENIZERS[hash];
  return { ...(name ? { name } : {}), hash };
}

function specialTokens(
  tokJson: Obj | undefined,
  tokConfig: Obj | undefined,
  config: Obj,
  idOf: (s: string) => number | undefined,
): Pick<GgufTokenizer, 'special' | 'addBos' | 'addEos'> {
  const special: GgufTokenizer['special'] = {};
  const cfg: Obj = { ...(tokConfig ?? {}) };
  let addBos: boolean | undefined;
  let addEos: boolean | undefined;
  // TemplateProcessing: a leading special token is BOS (added), a trailing one EOS (SpecialVocab's crude parse)
  const pp = tokJson?.['post_processor'];
  const procs = isObj(pp) ? (Array.isArray(pp['processors']) ? (pp['processors'] as unknown[]) : [pp]) : [];
  for (const p of procs) {
    if (!isObj(p)) continue;
    if (p['type'] === 'RobertaProcessing') {
      addBos = true;
      addEos = true;
      continue;
    }
    if (p['type'] !== 'TemplateProcessing' || !Array.isArray(p['single']) || p['single'].length <= 1) continue;
    const single = p['single'] as Obj[];
    const first = (single[0]?.['SpecialToken'] as Obj | undefined)?.['id'];
    const last = (single[single.length - 1]?.['SpecialToken'] as Obj | undefined)?.['id'];
    const bosTok = tokenString(cfg['bos_token']);
    const eosTok = tokenString(cfg['eos_token']);
    if (typeof first === 'string') {
      if (!bosTok) cfg['bos_token'] = first;
      addBos = first === (tokenString(cfg['bos_token']) ?? first);
    }
    if (typeof last === 'string') {
      if (!eosTok) cfg['eos_token'] = last;
      addEos = last === (tokenString(cfg['eos_token']) ?? last);
    }
  }
  for (const typ of ['bos', 'eos', 'unk', 'sep', 'pad', 'cls', 'mask'] as const) {
    const s = tokenString(cfg[`${typ}_token`]);
    let id = s !== undefined ? idOf(s) : undefined;
    if (id === undefined) {
      const c = config[`${typ}_token_id`];
      if (typeof c === 'number' && Number.isInteger(c) && c >= 0) id = c;
      else if (Array.isArray(c) && typeof c[0] === 'number') id = c[0];
    }
    if (id !== undefined) special[typ] = id;
  }
  if (typeof tokConfig?.['add_bos_token'] === 'boolean') addBos = tokConfig['add_bos_token'];
  if (typeof tokConfig?.['add_eos_token'] === 'boolean') addEos = tokConfig['add_eos_token'];
  return { special, ...(addBos !== undefined ? { addBos } : {}), ...(addEos !== undefined ? { addEos } : {}) };
}

function chatTemplate(tokConfig: Obj | undefined): string | undefined {
  const t = tokConfig?.['chat_template'];
  if (typeof t === 'string') return t;
  // a list of named templates: the default one (gguf-py writes the others under tokenizer.chat_template.NAME)
  if (Array.isArray(t)) for (const e of t) if (isObj(e) && e['name'] === 'default' && typeof e['template'] === 'string') return e['template'];
  return undefined;
}

/** Added tokens by id from tokenizer.json. */
function addedTokens(tokJson: Obj): Map<number, { content: string; special: boolean; normalized: boolean }> {
  const m = new Map<number, { content: string; special: boolean; normalized: boolean }>();
  const a = tokJson['added_tokens'];
  if (Array.isArray(a))
    for (const t of a)
      if (isObj(t) && typeof t['id'] === 'number' && typeof t['content'] === 'string')
        m.set(t['id'], { content: t['content'], special: !!t['special'], normalized: !!t['normalized'] });
  return m;
}

/** gguf-py's does_token_look_special. */
function looksSpecial(s: string): boolean {
  return (
    ['<pad>', '<mask>', '<2mass>', '[@BOS@]'].includes(s) ||
    (s.startsWith('<|') && s.endsWith('|>')) ||
    (s.startsWith('<｜') && s.endsWith('｜>')) ||
    (s.startsWith('<unused') && s.endsWith('>'))
  );
}

function gpt2Tokenizer(tokJson: Obj, tokConfig: Obj | undefined, config: Obj, vocabSize: number): GgufTokenizer {
  const model = tokJson['model'] as Obj;
  const vocab = model['vocab'] as Record<string, number>;
  const added = addedTokens(tokJson);
  const byId = new Map<number, string>();
  for (const [tok, id] of Object.entries(vocab)) byId.set(id, tok);
  for (const [id, t] of added) byId.set(id, t.content);
  const maxId = Math.max(-1, ...byId.keys());
  if (maxId >= vocabSize) fail('InvalidConfig', `tokenizer has token id ${maxId}, beyond the model's vocabulary of ${vocabSize}`);
  const tokens: string[] = [];
  const types: number[] = [];
  for (let i = 0; i < vocabSize; i++) {
    const tok = byId.get(i);
    if (tok === undefined) {
      tokens.push(`[PAD${i}]`);
      types.push(TokenType.UNUSED);
      continue;
    }
    const a = added.get(i);
    if (a) {
      types.push(a.special || looksSpecial(tok) ? TokenType.CONTROL : TokenType.USER_DEFINED);
      tokens.push(a.special || looksSpecial(tok) ? tok : tok.replaceAll('▁', ' '));
    } else {
      types.push(TokenType.NORMAL);
      tokens.push(tok);
    }
  }
  // llama.cpp refuses a gpt2 vocabulary without a merges entry, so an empty list is written as one (gguf-py
  // omits it, and llama.cpp then cannot load the file)
  let merges: string[] = [];
  const mg = model['merges'];
  if (Array.isArray(mg) && mg.length) {
    if (typeof mg[0] === 'string') merges = mg as string[];
    else merges = (mg as string[][]).map((pair) => pair.map((part) => part.replaceAll(' ', String.fromCharCode(32 + 256))).join(' '));
  }
  const { name, hash } = preTokenizerName(tokJson, tokConfig);
  const idOf = (s: string) => {
    for (const [id, t] of added) if (t.content === s) return id;
    return vocab[s];
  };
  const ct = chatTemplate(tokConfig);
  return {
    model: 'gpt2',
    ...(name ? { pre: name } : {}),
    tokens,
    types,
    merges,
    ...specialTokens(tokJson, tokConfig, config, idOf),
    ...(ct ? { chatTemplate: ct } : {}),
    preNote: name
      ? `pre-tokenizer '${name}' (probe hash ${hash.slice(0, 12)})`
      : `pre-tokenizer not known to llama.cpp (probe hash ${hash.slice(0, 12)}): none written, llama.cpp uses its default`,
  };
}

/** Pieces of a SentencePiece ModelProto (field 1: repeated SentencePiece {1: piece, 2: score, 3: type}). */
export function parseSentencePiece(buf: Uint8Array, path: string): { piece: string; score: number; type: number }[] {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const dec = new TextDecoder();
  const bad = (why: string): never => fail('InvalidConfig', `${path}: not a SentencePiece model (${why})`);
  const varint = (p: { i: number }, end: number): number => {
    let v = 0;
    let mul = 1;
    for (let k = 0; k < 10; k++) {
      if (p.i >= end) bad('truncated varint');
      const b = buf[p.i++]!;
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
    }
    return bad('varint too long');
  };
  const skip = (p: { i: number }, wire: number, end: number) => {
    if (wire === 0) varint(p, end);
    else if (wire === 1) p.i += 8;
    else if (wire === 2) p.i += varint(p, end);
    else if (wire === 5) p.i += 4;
    else bad(`wire type ${wire}`);
    if (p.i > end) bad('field past the end');
  };
  const pieces: { piece: string; score: number; type: number }[] = [];
  const p = { i: 0 };
  while (p.i < buf.length) {
    const key = varint(p, buf.length);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field === 1 && wire === 2) {
      const len = varint(p, buf.length);
      const end = p.i + len;
      if (end > buf.length) bad('piece past the end');
      let piece = '';
      let score = 0;
      let type = 1;
      while (p.i < end) {
        const k = varint(p, end);
        const f = Math.floor(k / 8);
        const w = k & 7;
        if (f === 1 && w === 2) {
          const n = varint(p, end);
          piece = dec.decode(buf.subarray(p.i, p.i + n));
          p.i += n;
        } else if (f === 2 && w === 5) {
          score = dv.getFloat32(p.i, true);
          p.i += 4;
        } else if (f === 3 && w === 0) type = varint(p, end);
        else skip(p, w, end);
      }
      pieces.push({ piece, score, type });
    } else skip(p, wire, buf.length);
  }
  if (pieces.length === 0) bad('no pieces');
  return pieces;
}

async function sentencePieceTokenizer(
  dir: string,
  tokJson: Obj | undefined,
  tokConfig: Obj | undefined,
  config: Obj,
  vocabSize: number,
): Promise<GgufTokenizer> {
  const path = join(dir, 'tokenizer.model');
  const pieces = parseSentencePiece(new Uint8Array(await readFile(path)), path);
  const tokens = Array.from({ length: vocabSize }, (_, i) => `[PAD${i}]`);
  const scores = new Array<number>(vocabSize).fill(-10000);
  const types = new Array<number>(vocabSize).fill(TokenType.UNUSED);
  pieces.forEach((pc, i) => {
    if (i >= vocabSize) return;
    tokens[i] = pc.piece;
    scores[i] = pc.score;
    types[i] = pc.type >= 1 && pc.type <= 6 ? pc.type : TokenType.NORMAL;
  });
  const addedJson = await readJson(join(dir, 'added_tokens.json'), true);
  for (const [tok, id] of Object.entries(addedJson ?? {})) {
    if (typeof id !== 'number' || id >= vocabSize) continue;
    tokens[id] = tok;
    scores[id] = -1000;
    types[id] = TokenType.USER_DEFINED;
  }
  const decoder = tokConfig?.['added_tokens_decoder'];
  if (isObj(decoder)) {
    for (const [k, v] of Object.entries(decoder)) {
      const id = Number(k);
      if (!isObj(v) || typeof v['content'] !== 'string' || !Number.isInteger(id) || id >= vocabSize) continue;
      const special = !!v['special'] || looksSpecial(v['content']);
      types[id] = special ? TokenType.CONTROL : TokenType.USER_DEFINED;
      tokens[id] = special ? v['content'] : v['content'].replaceAll('▁', ' ');
      scores[id] = -1000;
    }
  }
  const idOf = (s: string) => {
    const i = tokens.indexOf(s);
    return i >= 0 ? i : undefined;
  };
  const ct = chatTemplate(tokConfig);
  const asp = tokConfig?.['add_prefix_space'];
  return {
    model: 'llama',
    pre: 'default',
    tokens,
    types,
    scores,
    ...specialTokens(tokJson, tokConfig, config, idOf),
    ...(typeof asp === 'boolean' ? { addSpacePrefix: asp } : {}),
    ...(ct ? { chatTemplate: ct } : {}),
    preNote: 'SentencePiece (tokenizer.model)',
  };
}

function llamaHfTokenizer(tokJson: Obj, tokConfig: Obj | undefined, config: Obj, vocabSize: number): GgufTokenizer {
  const model = tokJson['model'] as Obj;
  const vocab = model['vocab'] as Record<string, number>;
  const added = addedTokens(tokJson);
  const specials = new Set<number>([...added].filter(([, t]) => t.special).map(([id]) => id));
  const tokens = Array.from({ length: vocabSize }, (_, i) => `[PAD${i}]`);
  const types = new Array<number>(vocabSize).fill(TokenType.UNUSED);
  for (const [tok, id] of Object.entries(vocab)) {
    if (id >= vocabSize) fail('InvalidConfig', `tokenizer has token id ${id}, beyond the model's vocabulary of ${vocabSize}`);
    tokens[id] = tok;
    types[id] = /^<0x[0-9A-Fa-f]{2}>$/.test(tok) ? TokenType.BYTE : specials.has(id) ? TokenType.CONTROL : TokenType.NORMAL;
  }
  for (const [id, t] of added) {
    if (id >= vocabSize) continue;
    tokens[id] = t.content;
    types[id] = t.special ? TokenType.CONTROL : TokenType.USER_DEFINED;
  }
  const idOf = (s: string) => {
    for (const [id, t] of added) if (t.content === s) return id;
    return vocab[s];
  };
  const ct = chatTemplate(tokConfig);
  const asp = tokConfig?.['add_prefix_space'];
  return {
    model: 'llama',
    pre: 'default',
    tokens,
    types,
    scores: new Array<number>(vocabSize).fill(-1000),
    ...specialTokens(tokJson, tokConfig, config, idOf),
    ...(typeof asp === 'boolean' ? { addSpacePrefix: asp } : {}),
    ...(ct ? { chatTemplate: ct } : {}),
    preNote: 'Llama BPE with byte fallback (tokenizer.json)',
  };
}

function isByteLevel(pre: unknown): boolean {
  if (!isObj(pre)) return false;
  if (pre['type'] === 'ByteLevel') return true;
  if (pre['type'] === 'Sequence' && Array.isArray(pre['pretokenizers'])) return pre['pretokenizers'].some(isByteLevel);
  return false;
}

/** Read a model directory's tokenizer into llama.cpp's representation. */
export async function readGgufTokenizer(dir: string, config: Obj, vocabSize: number): Promise<GgufTokenizer> {
  const tokConfig = await readJson(join(dir, 'tokenizer_config.json'), true);
  const tokJson = await readJson(join(dir, 'tokenizer.json'), true);
  const hasSp = await stat(join(dir, 'tokenizer.model')).then(
    (s) => s.isFile(),
    () => false,
  );
  const model = tokJson && isObj(tokJson['model']) ? (tokJson['model'] as Obj) : undefined;
  // the converter's order for llama-family models: SentencePiece first, then tokenizer.json
  if (hasSp && !(model && model['type'] === 'BPE' && isByteLevel(tokJson!['pre_tokenizer'])))
    return sentencePieceTokenizer(dir, tokJson, tokConfig, config, vocabSize);
  if (!tokJson || !model) fail('MissingFile', `${dir}: no tokenizer.json or tokenizer.model (a GGUF carries the model's tokenizer)`);
  if (model['type'] !== 'BPE' || !isObj(model['vocab']))
    fail('UnsupportedArchitecture', `${dir}/tokenizer.json: tokenizer model '${String(model['type'])}' cannot be written to GGUF (BPE or SentencePiece)`);
  if (model['byte_fallback'] === true && isObj(tokJson['decoder']) && tokJson['decoder']['type'] === 'Sequence')
    return llamaHfTokenizer(tokJson, tokConfig, config, vocabSize);
  if (!isByteLevel(tokJson['pre_tokenizer']))
    fail('UnsupportedArchitecture', `${dir}/tokenizer.json: a BPE tokenizer without a ByteLevel pre-tokenizer or byte fallback cannot be written to GGUF`);
  return gpt2Tokenizer(tokJson, tokConfig, config, vocabSize);
}

/** The tokenizer.ggml.* metadata entries. */
export function tokenizerMetadata(t: GgufTokenizer): [string, GgufValue][] {
  const out: [string, GgufValue][] = [['tokenizer.ggml.model', kv.str(t.model)]];
  if (t.pre) out.push(['tokenizer.ggml.pre', kv.str(t.pre)]);
  out.push(['tokenizer.ggml.tokens', kv.arr(GgufValueType.STRING, t.tokens)]);
  if (t.scores) out.push(['tokenizer.ggml.scores', kv.arr(GgufValueType.FLOAT32, t.scores)]);
  out.push(['tokenizer.ggml.token_type', kv.arr(GgufValueType.INT32, t.types)]);
  if (t.merges) out.push(['tokenizer.ggml.merges', kv.arr(GgufValueType.STRING, t.merges)]);
  const names: Record<string, string> = { bos: 'bos', eos: 'eos', unk: 'unknown', sep: 'seperator', pad: 'padding', cls: 'cls', mask: 'mask' };
  for (const [k, id] of Object.entries(t.special)) out.push([`tokenizer.ggml.${names[k]}_token_id`, kv.u32(id)]);
  if (t.addBos !== undefined) out.push(['tokenizer.ggml.add_bos_token', kv.bool(t.addBos)]);
  if (t.addEos !== undefined) out.push(['tokenizer.ggml.add_eos_token', kv.bool(t.addEos)]);
  if (t.addSpacePrefix !== undefined) out.push(['tokenizer.ggml.add_space_prefix', kv.bool(t.addSpacePrefix)]);
  if (t.chatTemplate !== undefined) out.push(['tokenizer.chat_template', kv.str(t.chatTemplate)]);
  return out;
}
