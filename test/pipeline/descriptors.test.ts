/**
 * Options declared once: every descriptor's commander flags, --help and recipe keys are generated from its schema,
 * so names, defaults and ranges agree. The test walks every command and every option and checks each generated
 * form against the schema itself (its JSON Schema and its parse), not against a second hand-written list.
 */
import { readdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command, type Option } from 'commander';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { DESCRIPTORS } from '../../src/cli/commands/index.js';
import { buildProgram } from '../../src/cli/main.js';
import { registerCommand } from '../../src/pipeline/cli.js';
import { DATA_NEEDS } from '../../src/pipeline/descriptor.js';
import { parseStage, stageKeys, stageSchema } from '../../src/pipeline/recipe.js';
import { PIPELINES } from '../../src/pipeline/registry.js';
import { commandOptions, fieldJson, type OptionInfo } from '../../src/pipeline/schema.js';
import { parseOptions } from '../../src/pipeline/validate.js';
import { isMoeError } from '../../src/errors.js';

const usage = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    if (isMoeError(e) && e.code === 'Usage') return e.message;
    throw e;
  }
  throw new Error('expected a usage error');
};

/** A value just outside an option's range, when it has one. */
function outOfRange(info: OptionInfo): unknown {
  if (info.choices && info.kind === 'enum') return typeof info.choices[0] === 'number' ? 999_999 : 'no-such-choice';
  if (info.choices && info.kind === 'list') return [999_999];
  if (info.min !== undefined) return info.kind === 'int' ? info.min - 1 : info.min - 0.5;
  if (info.exclusiveMin !== undefined) return info.exclusiveMin;
  if (info.max !== undefined) return info.max + 1;
  if (info.exclusiveMax !== undefined) return info.exclusiveMax;
  return undefined;
}

/** A minimal valid request of a command: its required options, with a value inside their range. */
function required(d: (typeof DESCRIPTORS)[number]): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const i of commandOptions(d)) {
    if (!i.required) continue;
    o[i.key] = i.kind === 'string' ? 'x' : i.exclusiveMax !== undefined ? i.exclusiveMax / 2 : i.max !== undefined ? i.max : (i.min ?? 0) + 1;
  }
  return o;
}

describe('every command is generated from its descriptor', () => {
  const program = buildProgram();
  it('the program has exactly the descriptors, in order', () => {
    expect(program.commands.map((c) => c.name())).toEqual(DESCRIPTORS.map((d) => d.name));
  });

  for (const d of DESCRIPTORS) {
    describe(d.name, () => {
      const cmd = program.commands.find((c) => c.name() === d.name)!;
      const infos = commandOptions(d);
      const byFlag = new Map<string, Option>(cmd.options.map((o) => [o.long!, o]));

      it('one flag per option (and --json/--quiet), no other', () => {
        expect([...byFlag.keys()].sort()).toEqual([...infos.map((i) => i.flag), '--json', '--quiet'].sort());
        // and every option of the schema is one of them
        expect(Object.keys(d.options.shape).sort()).toEqual(infos.map((i) => i.key).sort());
      });

      it('each flag: the attribute, value placeholder and --help text come from the schema (default, choices, required)', () => {
        const help = cmd.helpInformation();
        for (const i of infos) {
          const o = byFlag.get(i.flag)!;
          expect(o.attributeName()).toBe(i.key);
          expect(o.isBoolean() || o.negate).toBe(i.kind === 'boolean');
          // commander holds no default of its own: the schema's applies (so "given" and "defaulted" differ)
          expect(o.defaultValue === undefined || o.negate).toBe(true);
          const json = fieldJson(d.options.shape[i.key] as z.ZodType) as { default?: unknown };
          expect(i.default).toEqual(json.default);
          if (i.default !== undefined && i.kind !== 'boolean' && !(Array.isArray(i.default) && i.default.length === 0)) {
            const shown = i.defaultText ?? (Array.isArray(i.default) ? i.default.join(',') : String(i.default));
            expect(o.description, `${d.name} ${i.flag}`).toContain(`default: ${shown}`);
            // what the schema fills in when the option is absent is that same default
            const parsed = d.options.safeParse(required(d));
            if (parsed.success) expect((parsed.data as Record<string, unknown>)[i.key]).toEqual(i.default);
          }
          if (i.defaultText) expect(o.description).toContain(`default: ${i.defaultText}`);
          if (i.kind === 'enum') expect(o.description).toContain(`choices: ${i.choices!.join(', ')}`);
          if (i.required) expect(o.description).toContain('required');
          expect(help).toContain(i.flag);
        }
      });

      it('a value out of range is refused by the schema with a message naming the flag', () => {
        for (const i of infos) {
          const bad = outOfRange(i);
          if (bad === undefined) continue;
          const msg = usage(() => parseOptions({ options: d.options }, { ...required(d), [i.key]: bad }));
          expect(msg, `${d.name} ${i.flag}`).toMatch(new RegExp(`^${i.flag} must be `));
        }
      });

      it('--help has a worked example, and lists every method with its data needs', () => {
        expect(d.examples.length).toBeGreaterThan(0);
        expect(d.examples.some((e) => e.startsWith(`moe ${d.name} `))).toBe(true);
        const help = captureHelp(d);
        expect(help).toMatch(/\nExamples?:\n {2}moe /);
        for (const fam of d.methods ?? []) {
          const opt = infos.find((i) => i.flag === fam.option)!;
          // the family is the option's choices: a registered method is a valid value and nothing else is
          expect(fam.methods.map((m) => m.name).sort()).toEqual([...opt.choices!].sort());
          for (const m of fam.methods) {
            expect(help).toContain(`  ${m.name}`);
            expect(help).toContain(DATA_NEEDS[m.needs]);
          }
        }
      });
    });
  }
});

function captureHelp(d: (typeof DESCRIPTORS)[number]): string {
  const p = new Command('moe').exitOverride();
  let out = '';
  p.configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (out += s) });
  registerCommand(p, d);
  try {
    p.parse(['node', 'moe', d.name, '--help']);
  } catch {
    // commander's help exit
  }
  return out;
}

describe('every recipe stage is generated from its pipeline descriptor', () => {
  for (const [kind, d] of Object.entries(PIPELINES)) {
    it(`${kind}: keys are the options in snake_case, with the options' own schema (type, range, default)`, () => {
      const keys = stageKeys(d);
      const schema = stageSchema(d);
      expect(Object.keys(schema.shape).sort()).toEqual(keys.map((k) => k.recipeKey).sort());
      // the command line's own concerns are not recipe keys
      for (const k of ['model', 'out', 'plan', 'save_plan', 'shard', 'dry_run', 'force']) expect(schema.shape).not.toHaveProperty(k);
      for (const k of keys) {
        expect(k.recipeKey).toBe(k.key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));
        expect(fieldJson(schema.shape[k.recipeKey] as z.ZodType)).toEqual(fieldJson(d.options.shape[k.key] as z.ZodType));
        // and a bad value gets the command line's message
        const bad = outOfRange(k);
        if (bad === undefined) continue;
        const r = parseStage(d, { [k.recipeKey]: bad });
        // (a required key left out is reported after a wrong value given)
        expect(r.ok).toBe(false);
        if (!r.ok) expect(r.message, `${kind}.${k.recipeKey}`).toMatch(new RegExp(`^${k.flag} must be `));
      }
    });
  }
  it('an unknown stage key names the keys the stage takes', () => {
    const r = parseStage(PIPELINES.quantize, { bits: 3, grop_size: 64 });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.message).toMatch(/unknown option 'grop_size' \(a quantize stage takes: bits, method, .*group_size/);
  });
});

/**
 * Where each family's methods live: one file per method, named after it. A family missing here fails the walk (a new
 * family must say where its files are); a file on disk that registers nothing, or a registered method that no file
 * of its folder exports, fails it too.
 */
const METHOD_FILES: Record<string, Record<string, (name: string) => string>> = {
  prune: { '--method': (n) => `src/prune/methods/${n}.ts` },
  merge: {
    '--grouping': (n) => `src/merge/methods/grouping-${n}.ts`,
    '--align': (n) => `src/merge/methods/align-${n}.ts`,
    '--weighting': (n) => `src/merge/methods/weighting-${n}.ts`,
    '--router': (n) => `src/merge/methods/router-${n}.ts`,
  },
  quantize: { '--method': (n) => `src/quantize/methods/${n}.ts`, '--format': (n) => `src/quantize/formats/${n}.ts` },
  decompose: { '--mode': (n) => `src/decompose/methods/${n}.ts` },
};
/** files of a method folder that are not methods: the kind's shared interface and helpers */
const SHARED_FILES = new Set(['common.ts']);

describe('every registered method of every pipeline is one file, and its option values are generated from the registry', () => {
  for (const [kind, d] of Object.entries(PIPELINES)) {
    it(`${kind}: the method files on disk are exactly the registered methods, one each, named after them`, async () => {
      const layout = METHOD_FILES[kind]!;
      const families = d.methods ?? [];
      expect(families.length, kind).toBeGreaterThan(0);
      expect(families.map((f) => f.option).sort()).toEqual(Object.keys(layout).sort());
      const expected = new Map<string, unknown>();
      for (const f of families) for (const m of f.methods) expected.set(layout[f.option]!(m.name), m);
      // every .ts file of the folders those paths name, read from disk
      const dirs = new Set([...expected.keys()].map((p) => dirname(p)));
      const onDisk = [...dirs].flatMap((dir) =>
        readdirSync(dir)
          .filter((f) => f.endsWith('.ts') && !SHARED_FILES.has(f))
          .map((f) => `${dir}/${f}`),
      );
      expect(onDisk.sort()).toEqual([...expected.keys()].sort());
      const registered = new Set(families.flatMap((f) => f.methods));
      for (const path of onDisk) {
        const mod = (await import(pathToFileURL(resolve(path)).href)) as Record<string, unknown>;
        const exported = Object.values(mod).filter((v) => registered.has(v as never));
        // the file's one method is the registry's object itself (not a copy the registry could drift from)
        expect(exported, path).toHaveLength(1);
        expect(exported[0], path).toBe(expected.get(path));
      }
    });

    it(`${kind}: each family's option takes exactly its methods' names, in registry order, on the command line and in a recipe`, () => {
      const infos = commandOptions(d);
      const keys = stageKeys(d);
      const stageRequired = Object.fromEntries(
        keys.filter((k) => k.required).map((k) => [k.recipeKey, k.exclusiveMax !== undefined ? k.exclusiveMax / 2 : (k.max ?? (k.min ?? 0) + 1)]),
      );
      for (const fam of d.methods ?? []) {
        const names = fam.methods.map((m) => m.name);
        expect(new Set(names).size, fam.option).toBe(names.length);
        const opt = infos.find((i) => i.flag === fam.option)!;
        expect(opt.kind, fam.option).toBe('enum');
        expect(opt.choices, fam.option).toEqual(names);
        if (opt.default !== undefined) expect(names, fam.option).toContain(opt.default);
        const key = keys.find((k) => k.flag === fam.option)!;
        expect(key.choices, fam.option).toEqual(names);
        // every registered name is a value the recipe takes, and an unregistered one gets the command line's message
        for (const name of names) {
          const r = parseStage(d, { ...stageRequired, [key.recipeKey]: name });
          if (!r.ok) expect(r.message, `${kind} ${fam.option} ${name}`).not.toMatch(new RegExp(`^${fam.option} `));
        }
        const bad = parseStage(d, { ...stageRequired, [key.recipeKey]: 'no-such-method' });
        expect(bad.ok).toBe(false);
        const cli = usage(() => parseOptions({ options: d.options }, { ...required(d), [opt.key]: 'no-such-method' }));
        if (!bad.ok) expect(bad.message).toBe(cli);
        expect(cli).toMatch(new RegExp(`^${fam.option} must be `));
      }
    });
  }
});
