/** A tiny word-level tokenizer.json (+ config) for tests: ids 0..2 special, then one id per word of `words`. */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const WORDS = 'the a cat dog sat on mat and ran to house big small red blue runs fast slow . ,'.split(' ');

export async function writeWordTokenizer(dir: string, opts: { bos?: string | null; vocabSize?: number } = {}): Promise<Record<string, number>> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  WORDS.forEach((w, i) => (vocab[w] = i + 3));
  const tok = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      { id: 0, content: '<unk>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 1, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 2, content: '</s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: '<unk>' },
  };
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tok));
  const cfg: Record<string, unknown> = { tokenizer_class: 'PreTrainedTokenizerFast', eos_token: '</s>', unk_token: '<unk>' };
  if (opts.bos !== undefined) cfg.bos_token = opts.bos;
  else cfg.bos_token = '<s>';
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
  return vocab;
}

/** `count` lines of `wordsPerLine` words drawn from WORDS with `rnd`: calibration text for a word-tokenizer model. */
export function wordLines(count: number, rnd: () => number, wordsPerLine = 12): string[] {
  return Array.from({ length: count }, () => Array.from({ length: wordsPerLine }, () => WORDS[Math.floor(rnd() * WORDS.length)]).join(' '));
}
