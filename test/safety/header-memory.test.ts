/**
 * The parsed header's memory is bounded, not only its byte length: parsing keeps at most
 * PARSED_BYTES_PER_HEADER_BYTE (4) times the header's length, and a header denser than that is refused (exit 3)
 * before it costs more. Measured in a child process per header (test/safety/header-probe.ts): the heap the parsed
 * header holds after a full GC, and the growth of the resident set while parsing. JSON.parse, before, peaked at 9x
 * (a real-looking header), 14x (many tiny entries) and 35x (a `__metadata__` of many keys).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../../kernels/random.js';
import { jsonSyntaxError, PARSED_BYTES_PER_HEADER_BYTE } from '../../src/io/headerjson.js';
import { runMoe } from '../helpers/cli.js';
import { oneLine, tinyModel } from './helpers.js';

/** 20 MB headers: large enough that the process's own noise (a few MB) is small against the bound */
const SIZE = 20_000_000;
/** resident-set growth allowed while parsing, per header byte (V8's heap grows ahead of what it holds) */
const PEAK_PER_BYTE = 6;

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-hdrmem-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const ZERO = '"t":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}';

/** Header texts of about SIZE bytes, and the data bytes their offsets claim. */
function header(kind: string): { text: string; data: number } {
  const join_ = (n: number, f: (i: number) => string) => Array.from({ length: n }, (_, i) => f(i)).join(',');
  switch (kind) {
    case 'real': {
      // names and layout as a real MoE checkpoint has them (one byte each, so the data area stays small)
      const n = Math.floor(SIZE / 80);
      return {
        text: `{${join_(n, (i) => `"model.layers.${i >> 6}.mlp.experts.${i & 63}.w1.weight":{"dtype":"U8","shape":[1],"data_offsets":[${i},${i + 1}]}`)}}`,
        data: n,
      };
    }
    case 'tiny': {
      const n = Math.floor(SIZE / 50);
      return { text: `{${join_(n, (i) => `"${i.toString(36)}":{"dtype":"U8","shape":[1],"data_offsets":[${i},${i + 1}]}`)}}`, data: n };
    }
    case 'metadata-keys':
      return { text: `{"__metadata__":{${join_(Math.floor(SIZE / 9), (i) => `"${i.toString(36)}":""`)}},${ZERO}}`, data: 0 };
    case 'metadata-value':
      return { text: `{"__metadata__":{"k":"${'x'.repeat(SIZE)}"},${ZERO}}`, data: 0 };
    case 'long-shape':
      return { text: `{"t":{"dtype":"F32","shape":[${'1,'.repeat(SIZE / 2)}0],"data_offsets":[0,0]}}`, data: 0 };
    case 'deep-nesting':
      // 13 levels under an entry's unknown key (16 in all, the limit): valid, skipped, never materialised
      return {
        text: `{"t":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"x":[${join_(Math.floor(SIZE / 28), () => '[[[[[[[[[[[[0]]]]]]]]]]]]')}]}}`,
        data: 0,
      };
    case 'too-deep':
      return { text: `{${ZERO},"x":${'['.repeat(SIZE / 2)}${']'.repeat(SIZE / 2)}}`, data: 0 };
    default:
      throw new Error(kind);
  }
}

function writeHeader(kind: string): string {
  const { text, data } = header(kind);
  const h = Buffer.from(text);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(h.byteLength));
  const path = join(root, `${kind}.safetensors`);
  writeFileSync(path, Buffer.concat([prefix, h, Buffer.alloc(data)]));
  return path;
}

interface Probe {
  headerBytes: number;
  retained: number;
  peak: number;
  error?: string;
  tensors?: number;
}

function probe(path: string): Probe {
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', join(__dirname, 'header-probe.ts'), path], { encoding: 'utf8', timeout: 120_000 });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Probe;
}

describe('a parsed safetensors header keeps at most 4x its byte length, or is refused', () => {
  it.each([
    // [kind, refused with]
    ['real', undefined],
    ['tiny', /HeaderTooLarge: .*too dense/],
    ['metadata-keys', /HeaderTooLarge: .*too dense/],
    ['metadata-value', undefined],
    ['long-shape', /HeaderTooLarge: .*too dense/],
    ['deep-nesting', undefined],
    ['too-deep', /InvalidHeaderDeserialization: .*nests deeper than 16 levels/],
  ] as const)(
    '%s',
    (kind, refused) => {
      const p = probe(writeHeader(kind));
      const ratio = (x: number) => (x / p.headerBytes).toFixed(2);
      const seen = `${kind}: retained ${ratio(p.retained)}x, peak ${ratio(p.peak)}x, ${p.error ?? `${p.tensors} tensors`}`;
      if (refused) expect(p.error, seen).toMatch(refused);
      else expect(p.error, seen).toBeUndefined();
      expect(p.retained, seen).toBeLessThanOrEqual(PARSED_BYTES_PER_HEADER_BYTE * p.headerBytes);
      expect(p.peak, seen).toBeLessThanOrEqual(PEAK_PER_BYTE * p.headerBytes);
      if (kind === 'real') expect(p.tensors).toBe(Math.floor(SIZE / 80));
    },
    120_000,
  );

  it('moe inspect on a too-dense header: exit 3, one line', async () => {
    const { model } = await tinyModel(join(root, 'model'));
    copyFileSync(writeHeader('tiny'), join(model, 'model.safetensors'));
    const r = await runMoe(['inspect', '--model', model, '--no-probe']);
    expect(r.code, r.stderr).toBe(3);
    oneLine(r.stderr, /safetensors header is too dense: parsing its \d+ bytes would keep more than \d+ bytes of memory \(4x\)/);
  }, 60_000);
});

describe('the byte-level JSON check accepts exactly what JSON.parse accepts', () => {
  it('on 20000 mutations of a header', () => {
    const rand = seededRandom(12);
    const base = `{"__metadata__":{"format":"pt","k\\u00e9":"v\\n"},"a.b":{"dtype":"F32","shape":[2, 3],"data_offsets":[0,24],"x":[true,false,null,-0.5e+3]}}`;
    const alphabet = ' \t\n\r{}[]:,"\\/0123456789-+.eEtrufalsn\u00e9\u0001u';
    let valid = 0;
    for (let k = 0; k < 20000; k++) {
      const chars = [...base];
      for (let m = 1 + Math.floor(rand() * 3); m > 0; m--) {
        const at = Math.floor(rand() * chars.length);
        const c = alphabet[Math.floor(rand() * alphabet.length)]!;
        const op = rand();
        if (op < 0.4) chars[at] = c;
        else if (op < 0.7) chars.splice(at, 1);
        else chars.splice(at, 0, c);
      }
      const text = chars.join('');
      let parses = true;
      try {
        JSON.parse(text);
      } catch {
        parses = false;
      }
      if (parses) valid++;
      expect(jsonSyntaxError(Buffer.from(text)) === undefined, text).toBe(parses);
    }
    // both outcomes are well represented
    expect(valid).toBeGreaterThan(2000);
    expect(valid).toBeLessThan(18000);
  });
});
