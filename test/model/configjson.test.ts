/**
 * config.json written back exactly (src/model/configjson.ts): every config of the family fixtures, the trained
 * fixture and configs saved by transformers 5.18 (test/fixtures/transformers5-configs, from
 * test/interop/save_configs.py) goes through an edit; every untouched key must keep its bytes, so its value and
 * its JSON type (0.0 is not 0), and only the edited keys change.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inspectModel } from '../../src/inspect/report.js';
import { editJsonText, integerLiteralsFor, pyFloat, pyJson, topLevelValueTexts } from '../../src/model/configjson.js';
import { openModel } from '../../src/model/open.js';
import { FAMILIES, makeTinyCheckpoint } from '../helpers/families.js';

const T5 = 'test/fixtures/transformers5-configs';
let root: string;
const texts: [string, string][] = [];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-configjson-'));
  for (const f of FAMILIES) {
    const dir = join(root, f);
    await makeTinyCheckpoint(f, dir, { experts: 4 });
    texts.push([`fixture ${f}`, await readFile(join(dir, 'config.json'), 'utf8')]);
  }
  texts.push(['tiny-mixtral', await readFile('test/fixtures/tiny-mixtral/config.json', 'utf8')]);
  for (const f of (await readdir(T5)).sort()) texts.push([`transformers5 ${f}`, await readFile(join(T5, f), 'utf8')]);
});
afterAll(() => rm(root, { recursive: true, force: true }));

describe('config.json round trip', () => {
  it('covers every family in both sources', () => {
    // every helper family, and transformers 5.18's own save of the 12 families the interop suite builds
    // (test/interop/save_configs.py; families added later get theirs when they join that suite)
    expect(texts.filter(([n]) => n.startsWith('fixture ')).length).toBe(FAMILIES.length);
    expect(texts.filter(([n]) => n.startsWith('transformers5 ')).length).toBeGreaterThanOrEqual(12);
  });

  it('an edit that changes nothing writes the input bytes', () => {
    for (const [, text] of texts) expect(editJsonText(text, JSON.parse(text))).toBe(text);
  });

  it('an edit changes only the keys it edits; every other key keeps its text and type', () => {
    for (const [name, text] of texts) {
      const cfg = JSON.parse(text) as Record<string, unknown>;
      const count = ['num_local_experts', 'num_experts', 'n_routed_experts', 'moe_num_experts'].find((k) => k in cfg)!;
      expect(count, name).toBeDefined();
      const removed = 'use_cache' in cfg ? 'use_cache' : 'vocab_size';
      const next: Record<string, unknown> = { ...cfg, [count]: 3, zz_added: { bits: 4, list: [1, 2] } };
      delete next[removed];
      const nested = Object.keys(cfg).find(
        (k) => cfg[k] !== null && typeof cfg[k] === 'object' && !Array.isArray(cfg[k]) && Object.keys(cfg[k] as object).length > 1,
      );
      if (nested) next[nested] = { ...(cfg[nested] as object), zz_nested: 1 };
      const out = editJsonText(text, next);
      expect(JSON.parse(out), name).toEqual(next);
      const before = topLevelValueTexts(text);
      const after = topLevelValueTexts(out);
      for (const [k, v] of before) {
        if (k === count || k === removed || k === nested) continue;
        expect(after.get(k), `${name}: ${k}`).toBe(v);
      }
      expect(after.get(count)).toBe('3');
      expect(after.has(removed)).toBe(false);
      if (nested) {
        // inside an edited object the untouched members keep their text too
        const inner = topLevelValueTexts(before.get(nested)!);
        const innerAfter = topLevelValueTexts(after.get(nested)!);
        for (const [k, v] of inner) expect(innerAfter.get(k), `${name}: ${nested}.${k}`).toBe(v);
      }
      // the float literals of transformers' output survive (0.0 stays 0.0)
      for (const [k, v] of before) if (/^-?\d+\.\d+$/.test(v) && k !== count && k !== removed) expect(after.get(k)).toBe(v);
      expect(out.endsWith('\n')).toBe(text.endsWith('\n'));
    }
  });

  it('a sorted input (transformers sorts keys) gets new keys in their sorted place', () => {
    const text = (texts.find(([n]) => n === 'transformers5 mixtral.json') ?? [])[1]!;
    const out = editJsonText(text, { ...JSON.parse(text), num_zz: 1, aaa: 2, moe: { a: 1 } });
    const keys = [...topLevelValueTexts(out).keys()];
    expect(keys).toEqual([...keys].sort());
  });

  it('writes new values the way Python json.dumps does', () => {
    expect([0, 2, 0.02, 1e-5, 1e-6, 1.5e-5, 1e16, 123456.5, -0.25, 1e-4].map(pyFloat)).toEqual([
      '0.0',
      '2.0',
      '0.02',
      '1e-05',
      '1e-06',
      '1.5e-05',
      '1e+16',
      '123456.5',
      '-0.25',
      '0.0001',
    ]);
    expect(pyJson({ a: [1, 2], b: {}, c: [], d: 'é', router_jitter_noise: 0 }, '', { floatKeys: new Set(['router_jitter_noise']) })).toBe(
      '{\n  "a": [\n    1,\n    2\n  ],\n  "b": {},\n  "c": [],\n  "d": "\\u00e9",\n  "router_jitter_noise": 0.0\n}',
    );
  });

  it('finds integer literals in float fields', () => {
    const text = '{"router_jitter_noise": 0, "rope_theta": 10000, "x": 1, "rope_parameters": {"factor": 4, "rope_type": "yarn"}}';
    expect(integerLiteralsFor(text, new Set(['router_jitter_noise', 'factor']))).toEqual(['router_jitter_noise', 'rope_parameters.factor']);
    expect(integerLiteralsFor('{"router_jitter_noise": 0.0}', new Set(['router_jitter_noise']))).toEqual([]);
  });
});

describe('inspect', () => {
  it('warns about an int literal in a float field, and not about a float literal', async () => {
    const dir = join(root, 'warn');
    await makeTinyCheckpoint('phimoe', dir, { config: { input_jitter_noise: 0, router_jitter_noise: 0.01 } });
    const model = await openModel(dir);
    try {
      const w = inspectModel(model).warnings ?? [];
      expect(w.length).toBe(1);
      expect(w[0]).toContain('(input_jitter_noise)');
    } finally {
      await model.ckpt.close();
    }
    const fixture = await openModel('test/fixtures/tiny-mixtral');
    try {
      expect(inspectModel(fixture).warnings).toEqual([]);
    } finally {
      await fixture.ckpt.close();
    }
  });
});
