/**
 * What the generators know about one option, read from its declaration: the zod schema's JSON Schema (type,
 * range, choices, default, required) plus the registered command-line facts (help, flag, placeholder). The CLI,
 * the recipe keys and the error messages are all made from this one record.
 */
import { z } from 'zod';
import type { AnyCommand } from './descriptor.js';
import { FIELD_META, type FieldMeta, type PathKind } from './fields.js';

export type OptionKind = 'boolean' | 'int' | 'number' | 'string' | 'enum' | 'list' | 'repeat' | 'shard' | 'variadic';

export interface OptionInfo {
  key: string;
  /** `--group-size`, or `--no-mixed-down` for a boolean that defaults to true */
  flag: string;
  arg?: string;
  help: string;
  kind: OptionKind;
  /** the default the schema applies (undefined: none) */
  default?: unknown;
  defaultText?: string;
  required: boolean;
  /** allowed values (of each element, for lists) */
  choices?: ReadonlyArray<string | number>;
  min?: number;
  max?: number;
  exclusiveMin?: number;
  exclusiveMax?: number;
  /** a key of recipe stages, and its snake_case spelling there */
  recipe: boolean;
  recipeKey: string;
  path?: PathKind;
  /** what a valid value is, in words ("a whole number >= 1"), for messages */
  mustBe: string;
}

type Json = {
  type?: string;
  enum?: Array<string | number>;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  default?: unknown;
  items?: Json;
  properties?: Record<string, Json>;
  required?: string[];
};

export const kebab = (key: string): string => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
export const snake = (key: string): string => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
export const camel = (key: string): string => key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

const SAFE = Number.MAX_SAFE_INTEGER;

function rangeWords(j: Json, whole: boolean): string {
  const noun = whole ? 'whole number' : 'number';
  const lo = j.exclusiveMinimum !== undefined ? { v: j.exclusiveMinimum, open: true } : j.minimum !== undefined ? { v: j.minimum, open: false } : undefined;
  const hiV = j.exclusiveMaximum ?? (j.maximum !== undefined && Math.abs(j.maximum) < SAFE ? j.maximum : undefined);
  const hi = hiV === undefined ? undefined : { v: hiV, open: j.exclusiveMaximum !== undefined };
  if (lo && hi) return `a ${noun} in ${lo.open ? '(' : '['}${lo.v}, ${hi.v}${hi.open ? ')' : ']'}`;
  if (lo) {
    if ((lo.open && lo.v === 0) || (whole && !lo.open && lo.v === 1)) return `a positive ${noun}`;
    return `a ${noun} ${lo.open ? '>' : '>='} ${lo.v}`;
  }
  if (hi) return `a ${noun} ${hi.open ? '<' : '<='} ${hi.v}`;
  return `a ${noun}`;
}

function valueWords(j: Json): string {
  if (j.enum) return `one of ${j.enum.join(', ')}`;
  if (j.type === 'integer') return rangeWords(j, true);
  if (j.type === 'number') return rangeWords(j, false);
  if (j.type === 'boolean') return 'true or false';
  if (j.type === 'string') return 'a non-empty string';
  return 'valid';
}

/** The JSON Schema of one field, input side (what a user may give). */
export function fieldJson(schema: z.ZodType): Json {
  return z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as Json;
}

export function optionInfo(key: string, schema: z.ZodType, required: boolean): OptionInfo {
  const meta: FieldMeta = FIELD_META.get(schema) ?? { help: '' };
  const j = fieldJson(schema);
  let kind: OptionKind;
  let el: Json = j;
  if (meta.parse === 'shard') kind = 'shard';
  else if (j.type === 'array') {
    el = j.items ?? {};
    kind = meta.parse === 'variadic' ? 'variadic' : el.type === 'string' ? 'repeat' : 'list';
  } else if (j.type === 'boolean') kind = 'boolean';
  else if (j.enum) kind = 'enum';
  else if (j.type === 'integer') kind = 'int';
  else if (j.type === 'number') kind = 'number';
  else kind = 'string';
  const negated = kind === 'boolean' && j.default === true;
  const info: OptionInfo = {
    key,
    flag: meta.flag ?? (negated ? `--no-${kebab(key)}` : `--${kebab(key)}`),
    help: meta.help,
    kind,
    required,
    recipe: meta.recipe !== false,
    recipeKey: snake(key),
    mustBe: kind === 'shard' ? 'i/n with 0 <= i < n (e.g. 0/4)' : valueWords(el),
  };
  if (meta.arg !== undefined) info.arg = meta.arg;
  if (j.default !== undefined) info.default = j.default;
  if (meta.defaultText !== undefined) info.defaultText = meta.defaultText;
  if (el.enum) info.choices = el.enum;
  if (el.minimum !== undefined) info.min = el.minimum;
  if (el.maximum !== undefined && Math.abs(el.maximum) < SAFE) info.max = el.maximum;
  if (el.exclusiveMinimum !== undefined) info.exclusiveMin = el.exclusiveMinimum;
  if (el.exclusiveMaximum !== undefined) info.exclusiveMax = el.exclusiveMaximum;
  if (meta.path !== undefined) info.path = meta.path;
  return info;
}

const cache = new WeakMap<z.ZodObject, OptionInfo[]>();

/** Every option of a schema, in declaration order. */
export function schemaOptions(schema: z.ZodObject): OptionInfo[] {
  let out = cache.get(schema);
  if (!out) {
    const required = new Set((fieldJson(schema).required ?? []) as string[]);
    out = Object.entries(schema.shape).map(([k, s]) => optionInfo(k, s as z.ZodType, required.has(k)));
    cache.set(schema, out);
  }
  return out;
}

export function commandOptions(d: AnyCommand): OptionInfo[] {
  return schemaOptions(d.options);
}

/** A value as the user wrote it, for messages. */
export function shown(v: unknown): string {
  if (Array.isArray(v)) return v.map((x) => shown(x)).join(',');
  if (typeof v === 'string') return `'${v}'`;
  if (v && typeof v === 'object' && 'index' in v && 'count' in v) return `${(v as { index: unknown }).index}/${(v as { count: unknown }).count}`;
  return String(v);
}
