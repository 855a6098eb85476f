/**
 * The model families moe supports: every data file in ./architectures, validated against the schema the first
 * time any family is looked up. Adding a family whose conventions fit the schema is a new JSON file; the rest
 * goes in families.ts.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { fail } from '../errors.js';
import { ArchitectureSchema, type Architecture } from './schema.js';

const ARCH_DIR = fileURLToPath(new URL('./architectures/', import.meta.url));

let byType: Map<string, Architecture> | undefined;

function load(): Map<string, Architecture> {
  const out = new Map<string, Architecture>();
  for (const f of readdirSync(ARCH_DIR)
    .filter((n) => n.endsWith('.json'))
    .sort()) {
    const path = join(ARCH_DIR, f);
    const parsed = ArchitectureSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
    // a broken family file is a bug in moe, not a user error: fail loudly with the field path
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new Error(`${path}: ${issue.path.join('.')}: ${issue.message}`);
    }
    if (`${parsed.data.model_type}.json` !== f) throw new Error(`${path}: model_type '${parsed.data.model_type}' does not match the file name`);
    out.set(parsed.data.model_type, parsed.data);
  }
  return out;
}

export function architectures(): ReadonlyMap<string, Architecture> {
  byType ??= load();
  return byType;
}

export function supportedFamilies(): string[] {
  return [...architectures().keys()];
}

export function getArchitecture(modelType: unknown, where: string): Architecture {
  if (typeof modelType !== 'string' || modelType.length === 0) {
    fail('InvalidConfig', `${where}: required key 'model_type' is missing (supported: ${supportedFamilies().join(', ')})`);
  }
  const arch = architectures().get(modelType);
  if (!arch) fail('UnsupportedArchitecture', `${where}: model_type '${modelType}' is not supported (supported: ${supportedFamilies().join(', ')})`);
  return arch;
}
