/**
 * Text -> token windows, the one convention `moe eval` and calibration share (docs/runtime.md):
 *
 * 1. read the file as lines; a trailing \r is removed; lines empty after trimming are skipped; other text is kept
 *    as is (no trimming);
 * 2. each line is tokenized on its own, without special tokens (tokenizer.json through @huggingface/tokenizers);
 * 3. the ids are concatenated into one stream, cut into consecutive windows of seqLen tokens; a last partial window
 *    is dropped; maxTokens keeps the first floor(maxTokens / seqLen) windows;
 * 4. each window is fed as [BOS] + window when the tokenizer has a BOS token, else alone. With BOS all seqLen tokens
 *    of the window are scored (logits at positions 0..L-1 predict window tokens 0..L-1); without, the first token
 *    has no prediction and L-1 are scored.
 *
 * BOS: tokenizer_config.json `bos_token` (an explicit null means none, as Qwen's), else special_tokens_map.json,
 * else config.json `bos_token_id`; the token string is resolved to its id through tokenizer.json.
 */
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { fail } from '../errors.js';

export const DEFAULT_SEQ_LEN = 256;
const MAX_TOKENIZER_BYTES = 200_000_000;

export interface WindowOptions {
  seqLen?: number;
  maxTokens?: number;
  /**
   * 'ids': the file is pre-tokenized (--calib-ids / --data-ids): one JSON array of token ids per line, for
   * checkpoints whose tokenizer moe cannot read (Kimi-K2's tiktoken.model). Lines are joined and windowed exactly
   * as tokenized text lines are, so a file of the ids the tokenizer gives yields the same windows as the text.
   */
  format?: 'text' | 'ids';
}

export interface WindowSet {
  /** the sequences as fed to the model: [BOS] + window, or the window alone */
  windows: Int32Array[];
  seqLen: number;
  bos: number | null;
  /** tokens in the whole file, and lines tokenized */
  streamTokens: number;
  lines: number;
  /** tokens scored over all windows */
  scoredTokens: number;
}

export interface ModelTokenizer {
  tokenizer: Tokenizer;
  bos: number | null;
}

async function readJson(path: string, what: string, optional: boolean): Promise<Record<string, unknown> | undefined> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(path);
  } catch {
    if (optional) return undefined;
    fail('MissingFile', `${what} not found: ${path} (the model directory needs its tokenizer to read text)`);
  }
  if (st.size > MAX_TOKENIZER_BYTES) fail('InvalidConfig', `${path}: ${st.size} bytes is too large for ${what}`);
  try {
    const v = JSON.parse(await readFile(path, 'utf8'));
    if (v === null || typeof v !== 'object' || Array.isArray(v)) fail('InvalidConfig', `${path}: ${what} must be a JSON object`);
    return v as Record<string, unknown>;
  } catch (e) {
    if ((e as { code?: string }).code === 'InvalidConfig') throw e;
    fail('InvalidConfig', `${path}: ${what} is not valid JSON (${(e as Error).message})`);
  }
}

function tokenContent(v: unknown): string | null | undefined {
  if (v === null) return null;
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

function idOfToken(tokJson: Record<string, unknown>, content: string): number | undefined {
  const added = tokJson['added_tokens'];
  if (Array.isArray(added)) {
    for (const a of added)
      if (a && typeof a === 'object' && (a as { content?: unknown }).content === content && typeof (a as { id?: unknown }).id === 'number')
        return (a as { id: number }).id;
  }
  const vocab = (tokJson['model'] as { vocab?: unknown } | undefined)?.vocab;
  if (vocab && typeof vocab === 'object' && !Array.isArray(vocab)) {
    const id = (vocab as Record<string, unknown>)[content];
    if (typeof id === 'number') return id;
  }
  if (Array.isArray(vocab)) {
    // unigram: [[piece, score], ...]
    const i = vocab.findIndex((p) => Array.isArray(p) && p[0] === content);
    if (i >= 0) return i;
  }
  return undefined;
}

/** The BOS id the windows start with, or null when the tokenizer has none. */
export function resolveBos(
  tokJson: Record<string, unknown>,
  tokConfig: Record<string, unknown> | undefined,
  specialMap: Record<string, unknown> | undefined,
  config: Record<string, unknown> | undefined,
  where = 'tokenizer',
): number | null {
  let content: string | null | undefined;
  if (tokConfig && 'bos_token' in tokConfig) content = tokenContent(tokConfig['bos_token']);
  else if (specialMap && 'bos_token' in specialMap) content = tokenContent(specialMap['bos_token']);
  if (content === null) return null;
  if (typeof content === 'string') {
    const id = idOfToken(tokJson, content);
    if (id === undefined) fail('InvalidConfig', `${where}: bos_token ${JSON.stringify(content)} is not in tokenizer.json's vocabulary`);
    return id;
  }
  return configBos(config);
}

/**
 * config.json's bos_token_id, or its text_config's in a multimodal container (Llama4ForConditionalGeneration keeps
 * the language model's special ids there, src/model/container.ts); null when neither has one.
 */
function configBos(config: Record<string, unknown> | undefined): number | null {
  const text = config?.['text_config'];
  const nested = text !== null && typeof text === 'object' && !Array.isArray(text) ? (text as Record<string, unknown>)['bos_token_id'] : undefined;
  const cid = config?.['bos_token_id'] ?? nested;
  return typeof cid === 'number' && Number.isInteger(cid) && cid >= 0 ? cid : null;
}

export async function loadTokenizer(modelDir: string): Promise<ModelTokenizer> {
  const tokJson = (await readJson(join(modelDir, 'tokenizer.json'), 'tokenizer.json', false))!;
  const tokConfig = await readJson(join(modelDir, 'tokenizer_config.json'), 'tokenizer_config.json', true);
  const specialMap = await readJson(join(modelDir, 'special_tokens_map.json'), 'special_tokens_map.json', true);
  const config = await readJson(join(modelDir, 'config.json'), 'config.json', true);
  let tokenizer: Tokenizer;
  try {
    tokenizer = new Tokenizer(tokJson, tokConfig ?? {});
  } catch (e) {
    fail('InvalidConfig', `${modelDir}/tokenizer.json: cannot build the tokenizer (${(e as Error).message})`);
  }
  return { tokenizer, bos: resolveBos(tokJson, tokConfig, specialMap, config, `${modelDir}/tokenizer_config.json`) };
}

/** Lines of a text file per the convention: trailing \r removed, blank lines skipped, the rest kept verbatim. */
export function splitLines(text: string): string[] {
  const out: string[] = [];
  for (let line of text.split('\n')) {
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line.trim().length === 0) continue;
    out.push(line);
  }
  return out;
}

export function encodeLines(tokenizer: Pick<Tokenizer, 'encode'>, lines: readonly string[]): Int32Array {
  const parts: number[][] = [];
  let n = 0;
  for (const line of lines) {
    const ids = tokenizer.encode(line, { add_special_tokens: false }).ids;
    parts.push(ids);
    n += ids.length;
  }
  const out = new Int32Array(n);
  let p = 0;
  for (const ids of parts) {
    out.set(ids, p);
    p += ids.length;
  }
  return out;
}

/** Consecutive windows of seqLen from a token stream, each fed with BOS in front when there is one. */
export function cutWindows(stream: Int32Array, seqLen: number, bos: number | null, maxTokens?: number, what = 'data'): Int32Array[] {
  if (!Number.isInteger(seqLen) || seqLen < 2) fail('Usage', `--seq-len must be an integer >= 2, got ${seqLen}`);
  if (maxTokens !== undefined && (!Number.isInteger(maxTokens) || maxTokens <= 0))
    fail('Usage', `the token limit (--max-tokens / --calib-tokens) must be a positive integer, got ${maxTokens}`);
  let n = Math.floor(stream.length / seqLen);
  if (n === 0) fail('InvalidData', `${what}: ${stream.length} tokens is fewer than one window of ${seqLen} (use more text or a smaller --seq-len)`);
  if (maxTokens !== undefined) {
    const keep = Math.floor(maxTokens / seqLen);
    if (keep === 0) fail('Usage', `the token limit ${maxTokens} (--max-tokens / --calib-tokens) is less than one window of ${seqLen} tokens`);
    n = Math.min(n, keep);
  }
  const out: Int32Array[] = [];
  for (let i = 0; i < n; i++) {
    const w = stream.subarray(i * seqLen, (i + 1) * seqLen);
    if (bos === null) out.push(Int32Array.from(w));
    else {
      const f = new Int32Array(seqLen + 1);
      f[0] = bos;
      f.set(w, 1);
      out.push(f);
    }
  }
  return out;
}

export async function readTextFile(file: string): Promise<string> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(file);
  } catch {
    fail('MissingFile', `data file not found: ${file}`);
  }
  if (!st.isFile()) fail('InvalidData', `data file is not a regular file: ${file}`);
  const text = await readFile(file, 'utf8');
  return text;
}

/**
 * A pre-tokenized file: one JSON array of non-negative integer ids per non-blank line, each below the model's
 * vocab_size. Returns the concatenated stream and the number of lines.
 */
export function parseIdLines(text: string, vocab: number | undefined, file: string): { stream: Int32Array; lines: number } {
  const parts: number[][] = [];
  let n = 0;
  let lineNo = 0;
  for (let line of text.split('\n')) {
    lineNo++;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line.trim().length === 0) continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      fail('InvalidData', `${file}:${lineNo}: not a JSON array of token ids`);
    }
    if (!Array.isArray(v)) fail('InvalidData', `${file}:${lineNo}: not a JSON array of token ids`);
    for (const id of v) {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > 0x7fffffff)
        fail('InvalidData', `${file}:${lineNo}: token id ${JSON.stringify(id)} is not a non-negative integer`);
      if (vocab !== undefined && id >= vocab) fail('InvalidData', `${file}:${lineNo}: token id ${id} is outside the model's vocabulary (vocab_size ${vocab})`);
    }
    parts.push(v as number[]);
    n += v.length;
  }
  const stream = new Int32Array(n);
  let p = 0;
  for (const ids of parts) {
    stream.set(ids, p);
    p += ids.length;
  }
  return { stream, lines: parts.length };
}

/**
 * The BOS of a model read without building its tokenizer: as for text when tokenizer.json is there (so text and
 * its ids give the same windows), else config.json's bos_token_id, else none.
 */
async function bosWithoutTokenizer(modelDir: string): Promise<{ bos: number | null; vocab: number | undefined }> {
  const config = await readJson(join(modelDir, 'config.json'), 'config.json', true);
  const text = (config?.['text_config'] ?? config) as Record<string, unknown> | undefined;
  const vocab = typeof text?.['vocab_size'] === 'number' ? (text['vocab_size'] as number) : undefined;
  const tokJson = await readJson(join(modelDir, 'tokenizer.json'), 'tokenizer.json', true);
  if (tokJson) {
    const tokConfig = await readJson(join(modelDir, 'tokenizer_config.json'), 'tokenizer_config.json', true);
    const specialMap = await readJson(join(modelDir, 'special_tokens_map.json'), 'special_tokens_map.json', true);
    return { bos: resolveBos(tokJson, tokConfig, specialMap, config, `${modelDir}/tokenizer_config.json`), vocab };
  }
  return { bos: configBos(config), vocab };
}

export async function loadWindowSet(modelDir: string, file: string, opts: WindowOptions = {}): Promise<WindowSet> {
  const seqLen = opts.seqLen ?? DEFAULT_SEQ_LEN;
  if (!Number.isInteger(seqLen) || seqLen < 2) fail('Usage', `--seq-len must be an integer >= 2, got ${seqLen}`);
  if (opts.format === 'ids') {
    const { bos, vocab } = await bosWithoutTokenizer(modelDir);
    const { stream, lines } = parseIdLines(await readTextFile(file), vocab, file);
    if (lines === 0) fail('InvalidData', `data file ${file} has no token ids (every line is empty)`);
    const windows = cutWindows(stream, seqLen, bos, opts.maxTokens, `data file ${file}`);
    return { windows, seqLen, bos, streamTokens: stream.length, lines, scoredTokens: windows.length * (bos === null ? seqLen - 1 : seqLen) };
  }
  const { tokenizer, bos } = await loadTokenizer(modelDir);
  // tokenized lazily: only as many tokens as the budget's windows need, the file streamed line by line (a file of
  // any size, a single line of 50 MB), so --max-tokens / --calib-tokens bound the time and memory, not the file
  const budget =
    opts.maxTokens !== undefined && Number.isInteger(opts.maxTokens) && opts.maxTokens > 0 ? Math.floor(opts.maxTokens / seqLen) * seqLen : undefined;
  const { stream, lines } = await encodeFile(tokenizer, file, budget);
  if (lines === 0) fail('InvalidData', `data file ${file} has no text (every line is empty)`);
  const windows = cutWindows(stream, seqLen, bos, opts.maxTokens, `data file ${file}`);
  return {
    windows,
    seqLen,
    bos,
    streamTokens: stream.length,
    lines,
    scoredTokens: windows.length * (bos === null ? seqLen - 1 : seqLen),
  };
}

/** A line longer than this is tokenized by growing prefixes when a token budget is given (never whole, if not needed). */
const LONG_LINE_CHARS = 1 << 20;

/** Tokens of a long line's first `need` (or more) tokens: prefixes cut at whitespace, doubled until they give enough. */
function encodeLongLine(tokenizer: Pick<Tokenizer, 'encode'>, line: string, need: number): number[] {
  for (let chars = Math.max(4096, need * 16); ; chars *= 2) {
    if (chars >= line.length) return tokenizer.encode(line, { add_special_tokens: false }).ids;
    // cut at whitespace so the prefix's tokens are the line's (a word is never split), and keep a margin of
    // tokens before the cut so the last word's tokens are not the ones used
    let cut = chars;
    while (cut > chars / 2 && !/\s/.test(line[cut]!)) cut--;
    const ids = tokenizer.encode(line.slice(0, cut), { add_special_tokens: false }).ids;
    if (ids.length >= need + 64) return ids.slice(0, ids.length - 64);
  }
}

/**
 * Stream a text file's lines (trailing \r removed, blank lines skipped) through the tokenizer, stopping once
 * `budget` tokens are there. Returns the token stream and the lines used.
 */
export async function encodeFile(tokenizer: Pick<Tokenizer, 'encode'>, file: string, budget?: number): Promise<{ stream: Int32Array; lines: number }> {
  await checkDataFile(file);
  const parts: number[][] = [];
  let n = 0;
  let lines = 0;
  const input = createReadStream(file, { encoding: 'utf8' });
  const rl = createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY });
  try {
    for await (let line of rl) {
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line.trim().length === 0) continue;
      const ids =
        budget !== undefined && line.length > LONG_LINE_CHARS
          ? encodeLongLine(tokenizer, line, budget - n)
          : tokenizer.encode(line, { add_special_tokens: false }).ids;
      parts.push(ids);
      n += ids.length;
      lines++;
      if (budget !== undefined && n >= budget) break;
    }
  } finally {
    rl.close();
    input.destroy();
  }
  const out = new Int32Array(n);
  let p = 0;
  for (const ids of parts) {
    out.set(ids, p);
    p += ids.length;
  }
  return { stream: out, lines };
}

async function checkDataFile(file: string): Promise<void> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(file);
  } catch {
    fail('MissingFile', `data file not found: ${file}`);
  }
  if (!st.isFile()) fail('InvalidData', `data file is not a regular file: ${file}`);
}

/** The windows of a text file for a model (pipelines' entry point). */
export async function loadWindows(modelDir: string, file: string, opts: WindowOptions = {}): Promise<Int32Array[]> {
  return (await loadWindowSet(modelDir, file, opts)).windows;
}
