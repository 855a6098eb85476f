/**
 * config.json written back exactly: the edited config is spliced into the input's own text, so every value the
 * edit leaves alone keeps its bytes (`0.0` stays `0.0`, `1e-05` stays `1e-05`, key order, escapes, indentation),
 * and only the keys whose values change are re-serialized. transformers 5 validates config fields by type
 * (`router_jitter_noise: float` refuses `0`), and JSON.parse/JSON.stringify cannot tell 0.0 from 0, so a
 * parse-and-restringify round trip would make checkpoints unloadable.
 *
 * New values are written the way Python's json.dumps(indent=2) writes them (transformers' writer), with floats in
 * Python's repr form; a key listed in `floatKeys` whose new value is integral gets a `.0`.
 */
import { architectures } from './registry.js';

interface Span {
  start: number;
  end: number;
}

type Node = (Span & { kind: 'object'; entries: Entry[] }) | (Span & { kind: 'array'; items: Node[] }) | (Span & { kind: 'scalar' });

interface Entry {
  key: string;
  /** where the entry's key (its opening quote) begins */
  keyStart: number;
  /** just after the key's closing quote */
  keyEnd: number;
  value: Node;
}

/** Parse JSON text into value spans (the text is assumed valid: JSON.parse accepted it). */
function parseSpans(text: string): Node {
  let i = 0;
  const ws = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\n' || text[i] === '\r' || text[i] === '\t')) i++;
  };
  const str = (): string => {
    const s = i;
    i++;
    while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
    return JSON.parse(text.slice(s, i)) as string;
  };
  const value = (): Node => {
    ws();
    const start = i;
    const c = text[i];
    if (c === '{') {
      i++;
      const entries: Entry[] = [];
      ws();
      if (text[i] === '}') {
        i++;
        return { kind: 'object', start, end: i, entries };
      }
      for (;;) {
        ws();
        const keyStart = i;
        const key = str();
        const keyEnd = i;
        ws();
        i++; // ':'
        const v = value();
        entries.push({ key, keyStart, keyEnd, value: v });
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        i++; // '}'
        return { kind: 'object', start, end: i, entries };
      }
    }
    if (c === '[') {
      i++;
      const items: Node[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return { kind: 'array', start, end: i, items };
      }
      for (;;) {
        items.push(value());
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        i++;
        return { kind: 'array', start, end: i, items };
      }
    }
    if (c === '"') {
      str();
      return { kind: 'scalar', start, end: i };
    }
    while (i < text.length && !/[\s,\]}]/.test(text[i]!)) i++;
    return { kind: 'scalar', start, end: i };
  };
  return value();
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    return a.length === bb.length && a.every((x, k) => deepEqual(x, bb[k]));
  }
  const ka = Object.keys(a as object).filter((k) => (a as Record<string, unknown>)[k] !== undefined);
  const kb = Object.keys(b as object).filter((k) => (b as Record<string, unknown>)[k] !== undefined);
  return ka.length === kb.length && ka.every((k) => deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

/** A float as Python's repr writes it (json.dumps uses float.__repr__): shortest digits, exponent below 1e-4 or from 1e16. */
export function pyFloat(x: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'NaN' : x > 0 ? 'Infinity' : '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, expS] = x.toExponential().split('e') as [string, string];
  const exp = Number(expS);
  if (exp < -4 || exp >= 16) {
    return `${mant}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  const digits = mant.replace('-', '').replace('.', '');
  const neg = x < 0 ? '-' : '';
  let s: string;
  if (exp < 0) s = `0.${'0'.repeat(-exp - 1)}${digits}`;
  else if (digits.length <= exp + 1) s = `${digits}${'0'.repeat(exp + 1 - digits.length)}.0`;
  else s = `${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
  return neg + s;
}

export interface JsonStyle {
  /** keys (at any depth) whose numbers are floats in the consumer's schema: integral values get `.0` */
  floatKeys?: ReadonlySet<string>;
}

/** Python json.dumps(value, indent=2)-style text, lines after the first indented by `indent`. */
export function pyJson(value: unknown, indent = '', style: JsonStyle = {}, key?: string): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') {
    if (Number.isInteger(value) && !(key && style.floatKeys?.has(key)) && Math.abs(value) < 1e21) return String(value);
    return pyFloat(value);
  }
  if (typeof value === 'string') return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => inner + pyJson(v, inner, style, key)).join(',\n')}\n${indent}]`;
  }
  const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([k, v]) => `${inner}${pyJson(k)}: ${pyJson(v, inner, style, k)}`).join(',\n')}\n${indent}}`;
}

/** The indentation of the line `pos` is on. */
function lineIndent(text: string, pos: number): string {
  const ls = text.lastIndexOf('\n', pos - 1) + 1;
  return /^[ \t]*/.exec(text.slice(ls))![0];
}

function splice(text: string, node: Node, next: unknown, style: JsonStyle, key: string | undefined): string {
  const raw = text.slice(node.start, node.end);
  if (deepEqual(JSON.parse(raw), next)) return raw;
  if (node.kind !== 'object' || next === null || typeof next !== 'object' || Array.isArray(next) || node.entries.length === 0) {
    return pyJson(next, lineIndent(text, node.start), style, key);
  }
  const nextObj = next as Record<string, unknown>;
  const first = node.entries[0]!;
  const lead = text.slice(node.start + 1, first.keyStart);
  const lastEnd = node.entries[node.entries.length - 1]!.value.end;
  const trail = text.slice(lastEnd, node.end - 1);
  // separator before entry k (k > 0): its own, so untouched neighbours keep their spacing
  const seps = node.entries.map((e, k) => (k === 0 ? '' : text.slice(node.entries[k - 1]!.value.end, e.keyStart)));
  const defaultSep = seps[1] ?? `,${lead}`;
  const keyIndent = lineIndent(text, first.keyStart);
  const byKey = new Map(node.entries.map((e, k) => [e.key, { e, k }]));
  // entries in the order of the new object (order can matter: GPTQModel's `dynamic` rules match first to last),
  // an existing key with its own key text, spacing and separator
  const parts: { key: string; text: string; sep: string; added: boolean }[] = [];
  for (const [key, v] of Object.entries(nextObj)) {
    if (v === undefined) continue;
    const old = byKey.get(key);
    if (old) {
      const { e, k } = old;
      parts.push({
        key,
        text: text.slice(e.keyStart, e.value.start) + splice(text, e.value, v, style, key),
        sep: k === 0 ? defaultSep : seps[k]!,
        added: false,
      });
    } else parts.push({ key, text: `${pyJson(key)}: ${pyJson(v, keyIndent, style, key)}`, sep: defaultSep, added: true });
  }
  // transformers writes sorted keys: when the input was sorted and the kept keys keep their order, new keys go to
  // their sorted place instead of the end
  const keys = node.entries.map((e) => e.key);
  const sortedInput = keys.every((k, j) => j === 0 || keys[j - 1]! <= k);
  const kept = parts.filter((p) => !p.added);
  if (sortedInput && kept.every((p, j) => j === 0 || kept[j - 1]!.key <= p.key)) {
    const out = [...kept];
    for (const p of parts.filter((q) => q.added)) {
      const at = out.findIndex((q) => q.key > p.key);
      if (at < 0) out.push(p);
      else out.splice(at, 0, p);
    }
    parts.splice(0, parts.length, ...out);
  }
  if (parts.length === 0) return '{}';
  return `{${lead}${parts.map((p, j) => (j === 0 ? '' : p.sep) + p.text).join('')}${trail}}`;
}

/**
 * The text of `next` written as an edit of `original` (the input's config.json text): untouched values keep their
 * original bytes, changed or added ones are serialized fresh, removed ones disappear. Without an original, Python-style
 * text with a trailing newline.
 */
export function editJsonText(original: string | undefined, next: unknown, style: JsonStyle = {}): string {
  if (original === undefined) return `${pyJson(next, '', style)}\n`;
  const root = parseSpans(original);
  const head = original.slice(0, root.start);
  const tail = original.slice(root.end);
  return head + splice(original, root, next, style, undefined) + tail;
}

/**
 * Keys whose value is written as an integer where the consumer's schema wants a float (transformers 5 refuses
 * `router_jitter_noise: 0`), read from the raw text because JSON.parse has already forgotten the difference.
 * Top-level keys and one level of nesting (rope_parameters.factor) as `a.b`.
 */
export function integerLiteralsFor(text: string, floatKeys: ReadonlySet<string>): string[] {
  const root = parseSpans(text);
  const out: string[] = [];
  const visit = (node: Node, path: string, depth: number) => {
    if (node.kind !== 'object') return;
    for (const e of node.entries) {
      const v = e.value;
      const name = path ? `${path}.${e.key}` : e.key;
      if (v.kind === 'scalar' && floatKeys.has(e.key) && /^-?\d+$/.test(text.slice(v.start, v.end))) out.push(name);
      if (depth < 1) visit(v, name, depth + 1);
    }
  };
  visit(root, '', 0);
  return out;
}

/** Float fields inside RoPE settings (rope_scaling / rope_parameters), which transformers reads as floats. */
export const ROPE_FLOAT_KEYS: readonly string[] = [
  'rope_theta',
  'factor',
  'beta_fast',
  'beta_slow',
  'mscale',
  'mscale_all_dim',
  'attention_factor',
  'partial_rotary_factor',
];

/** How config.json values of a family are written when an edit sets them. */
export function configStyle(family: string): JsonStyle {
  const arch = architectures().get(family);
  return { floatKeys: new Set([...(arch?.config.floatKeys ?? []), ...ROPE_FLOAT_KEYS]) };
}

/** The raw text of each top-level value of a JSON object's text (for tests and diagnostics). */
export function topLevelValueTexts(text: string): Map<string, string> {
  const root = parseSpans(text);
  const out = new Map<string, string>();
  if (root.kind === 'object') for (const e of root.entries) out.set(e.key, text.slice(e.value.start, e.value.end));
  return out;
}
