/**
 * The model families moe supports: every data file in ./architectures, validated against the schema the first
 * time any family is looked up. Adding a family whose conventions fit the schema is a new JSON file; the rest
 * goes in families.ts.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { fail } from '../errors.js';
import { LOWRANK_TYPE_PREFIX, stockClasses, stockModelType } from './lowrank.js';
import { PERLAYER_TYPE_PREFIX, stripPerLayerClasses, stripPerLayerType } from './perlayer.js';
import { ArchitectureSchema, type Architecture } from './schema.js';

const ARCH_DIR = fileURLToPath(new URL('./architectures/', import.meta.url));
const ALIAS_FILE = fileURLToPath(new URL('./aliases.json', import.meta.url));

/**
 * A model_type that is another family under a new name (aliases.json): read as `readAs` when config.json's
 * `architectures` names one of the listed classes. The checkpoint's own config (model_type included) is what
 * every output keeps.
 */
export interface FamilyAlias {
  readAs: string;
  architectures: string[];
  source: string;
}

let aliasByType: Map<string, FamilyAlias> | undefined;

export function familyAliases(): ReadonlyMap<string, FamilyAlias> {
  if (!aliasByType) {
    const raw = JSON.parse(readFileSync(ALIAS_FILE, 'utf8')) as Record<string, FamilyAlias>;
    aliasByType = new Map(Object.entries(raw));
    for (const [name, a] of aliasByType) {
      if (!architectures().has(a.readAs)) throw new Error(`${ALIAS_FILE}: alias '${name}' reads as unknown family '${a.readAs}'`);
      if (architectures().has(name)) throw new Error(`${ALIAS_FILE}: alias '${name}' is also a family file`);
    }
  }
  return aliasByType;
}

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

/**
 * The family of a model_type. `classes` (config.json's `architectures`, when the caller has the config) decides
 * whether an alias applies: Kimi-K2 is DeepSeek-V3 only as DeepseekV3ForCausalLM.
 */
export function getArchitecture(modelType: unknown, where: string, classes?: unknown): Architecture {
  if (typeof modelType !== 'string' || modelType.length === 0) {
    fail('InvalidConfig', `${where}: required key 'model_type' is missing (supported: ${supportedFamilies().join(', ')})`);
  }
  // one `moe` section describes one format: per-layer counts and low-rank factors together are not written or read
  if (modelType.includes(LOWRANK_TYPE_PREFIX) && modelType.includes(PERLAYER_TYPE_PREFIX))
    fail('UnsupportedArchitecture', `${where}: model_type '${modelType}' is both low-rank and per-layer, which moe does not support`);
  // a per-layer checkpoint's own model_type (perlayer.ts) is read as its stock family
  if (modelType.startsWith(PERLAYER_TYPE_PREFIX)) return getArchitecture(stripPerLayerType(modelType), where, stripPerLayerClasses(classes));
  // a low-rank (factor) checkpoint's own model_type (lowrank.ts) is read as its stock family
  if (modelType.startsWith(LOWRANK_TYPE_PREFIX)) return getArchitecture(stockModelType(modelType), where, stockClasses(classes));
  const alias = familyAliases().get(modelType);
  if (alias) {
    const given = Array.isArray(classes) ? classes.map(String) : undefined;
    if (given !== undefined && !given.some((c) => alias.architectures.includes(c)))
      fail(
        'UnsupportedArchitecture',
        `${where}: model_type '${modelType}' is read as ${alias.readAs} only with architectures ${alias.architectures.join(' or ')} (this config: ${given.join(', ') || 'none'})`,
      );
    return architectures().get(alias.readAs)!;
  }
  const arch = architectures().get(modelType);
  if (!arch) fail('UnsupportedArchitecture', `${where}: model_type '${modelType}' is not supported (supported: ${supportedFamilies().join(', ')})`);
  return arch;
}
