/**
 * Our per-tensor type choices as a `llama-quantize --tensor-type-file` list (tools/quantize/quantize.cpp
 * parse_tensor_type_file): whitespace-separated `pattern=type` entries; the pattern is lower-cased and matched
 * with std::regex_search against each tensor name (src/llama-quant.cpp, first match wins), the type is a ggml
 * type name in any case. We write one anchored, escaped pattern per quantized tensor, `^blk\.3\.ffn_down_exps\.weight$=q4_k`,
 * so each entry matches its tensor and nothing else, whatever order llama-quantize tries them in.
 *
 * llama-quantize honours the list only for a quantized base type (any, e.g. Q4_K_M: every tensor we list
 * overrides it) and still applies its shape fallback afterwards; we write the types after that fallback, so
 * it has nothing to change.
 */
import { fail } from '../errors.js';
import { GGML_TYPES, type GgmlType } from './format.js';

export const TENSOR_TYPES_FILE = 'tensor-types.txt';

export interface TensorTypeEntry {
  pattern: string;
  type: GgmlType;
}

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The list text for tensors and their chosen types (in the given order, one entry per line). */
export function formatTensorTypes(choices: readonly { name: string; type: GgmlType }[]): string {
  return choices.map((c) => `^${escapeRegex(c.name.toLowerCase())}$=${c.type.toLowerCase()}`).join('\n') + '\n';
}

/** Parse a list the way llama-quantize does (entries split on whitespace; a malformed entry is an error). */
export function parseTensorTypes(text: string, source = 'tensor type list'): TensorTypeEntry[] {
  const byName = new Map(Object.keys(GGML_TYPES).map((k) => [k.toLowerCase(), k as GgmlType]));
  return text
    .split(/\s+/)
    .filter((s) => s.length > 0)
    .map((entry) => {
      const eq = entry.indexOf('=');
      if (eq <= 0) fail('InvalidStats', `${source}: malformed entry '${entry}' (expected pattern=type)`);
      const type = byName.get(entry.slice(eq + 1).toLowerCase());
      if (!type) fail('InvalidStats', `${source}: '${entry}': unknown ggml type '${entry.slice(eq + 1)}'`);
      return { pattern: entry.slice(0, eq).toLowerCase(), type };
    });
}

/** The type llama-quantize would take for a tensor from the list (first matching pattern), or undefined. */
export function typeFromList(entries: readonly TensorTypeEntry[], name: string): GgmlType | undefined {
  for (const e of entries) if (new RegExp(e.pattern).test(name)) return e.type;
  return undefined;
}
