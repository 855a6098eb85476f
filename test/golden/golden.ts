/**
 * Shared body of the golden test files: each file takes a slice of the cases (so vitest's two workers share
 * them) and compares against its own hash file (so an update run never has two writers on one file).
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GoldenCase, runCase } from './cases.js';

const UPDATE = process.env.MOE_UPDATE_GOLDEN === '1';

export function goldenSuite(title: string, hashFile: string, cases: GoldenCase[]): void {
  const path = join('test/golden', hashFile);
  let root: string;
  let expected: Record<string, Record<string, string>> = {};
  const got: Record<string, Record<string, string>> = {};

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'moe-golden-'));
    if (!UPDATE) expected = JSON.parse(await readFile(path, 'utf8'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
    if (UPDATE) await writeFile(path, JSON.stringify(got, null, 2) + '\n');
  });

  describe(title, () => {
    it('the hash file names exactly these cases', () => {
      if (UPDATE) return;
      expect(Object.keys(expected).sort()).toEqual(cases.map((c) => c.name).sort());
    });
    it.each(cases.map((c) => [c.name, c] as const))(
      '%s',
      async (_name, c) => {
        const work = join(root, c.name);
        got[c.name] = await runCase(c, work);
        expect(Object.keys(got[c.name]!).length).toBeGreaterThan(0);
        if (!UPDATE) expect(got[c.name]).toEqual(expected[c.name]);
      },
      300_000,
    );
  });
}
