/**
 * Multimodal containers (src/model/containers.json): a checkpoint whose config.json is an
 * `XForConditionalGeneration` with the language model's config nested under `text_config` and its tensors under a
 * prefix of their own, beside a vision tower and a projector. moe edits the language model inside: the view is the
 * text family's, built from the nested config with every tensor name moved under the container's prefixes; every
 * other tensor (vision tower, projector) is copied through byte for byte by the rewrite (it keeps what no plan
 * names), and config edits of the language model (expert count, top-k, groups) go into `text_config`, so the
 * output keeps the container's structure and loads as the same class.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { fail } from '../errors.js';
import type { HFConfig } from '../io/checkpoint.js';
import { stockModelType } from './lowrank.js';
import { getArchitecture } from './registry.js';
import type { Architecture } from './schema.js';
import type { Container, ModelView } from './types.js';

const ContainerSchema = z
  .object({
    /** HF class names the container is saved as (config.json `architectures`) */
    architectures: z.array(z.string()).min(1),
    /** the key of the nested language-model config */
    textConfigKey: z.string(),
    /** the text family (a data file in ./architectures); the nested config's own model_type must be this one */
    textModelType: z.string(),
    /** the text family's name prefix -> the container's: `model.` -> `language_model.model.`; longest match first */
    prefixes: z.record(z.string(), z.string()),
    /** top-level config keys an edit writes at the top level even when absent there (transformers reads them there) */
    topLevelKeys: z.array(z.string()).default(['quantization_config', 'moe', 'model_type', 'architectures']),
    source: z.string(),
  })
  .strict();

const CONTAINER_FILE = fileURLToPath(new URL('./containers.json', import.meta.url));
let byType: Map<string, Container> | undefined;

export function containers(): ReadonlyMap<string, Container> {
  if (!byType) {
    const raw = JSON.parse(readFileSync(CONTAINER_FILE, 'utf8')) as Record<string, unknown>;
    byType = new Map();
    for (const [name, v] of Object.entries(raw)) {
      const parsed = ContainerSchema.safeParse(v);
      // a broken container file is a bug in moe: fail loudly with the field path
      if (!parsed.success) throw new Error(`${CONTAINER_FILE}: ${name}.${parsed.error.issues[0]!.path.join('.')}: ${parsed.error.issues[0]!.message}`);
      byType.set(name, { ...parsed.data, model_type: name });
    }
  }
  return byType;
}

/** The container a config.json is (by its model_type, a low-rank output's included), or undefined. */
export function containerOf(config: HFConfig): Container | undefined {
  const mt = config.model_type;
  return typeof mt === 'string' ? containers().get(stockModelType(mt)) : undefined;
}

/**
 * The language model's config inside a container config, checked: an object whose model_type is the container's
 * text family (missing: the family is assumed, as transformers' sub-config class does).
 */
export function textConfigOf(container: Container, config: HFConfig, where: string): HFConfig {
  const t = config[container.textConfigKey];
  if (t === null || typeof t !== 'object' || Array.isArray(t))
    fail('InvalidConfig', `${where}: ${container.model_type} needs the language model's config as an object in '${container.textConfigKey}'`);
  const text = t as HFConfig;
  if (text.model_type !== undefined && text.model_type !== container.textModelType)
    fail(
      'UnsupportedArchitecture',
      `${where}: ${container.textConfigKey}.model_type '${String(text.model_type)}' is not ${container.textModelType}, the language model ${container.model_type} holds`,
    );
  return text.model_type === undefined ? { ...text, model_type: container.textModelType } : text;
}

/** A text-family tensor name as the container stores it. */
export function containerName(container: Container, name: string): string {
  let best = '';
  for (const p of Object.keys(container.prefixes)) if (name.startsWith(p) && p.length > best.length) best = p;
  if (!best) fail('UnsupportedArchitecture', `${container.model_type}: the text family's tensor '${name}' has no prefix in the container's mapping`);
  return container.prefixes[best] + name.slice(best.length);
}

/** The text family's data with its full tensor names (embed, norms, head, layer prefix) under the container's prefixes. */
export function containedArchitecture(arch: Architecture, container: Container): Architecture {
  const t = arch.tensors;
  const n = (s: string) => containerName(container, s);
  const lmHeadBias =
    t.lmHeadBias === undefined ? undefined : typeof t.lmHeadBias === 'string' ? n(t.lmHeadBias) : { ...t.lmHeadBias, name: n(t.lmHeadBias.name) };
  return {
    ...arch,
    tensors: {
      ...t,
      embed: n(t.embed),
      finalNorm: n(t.finalNorm),
      ...(t.finalNormBias ? { finalNormBias: n(t.finalNormBias) } : {}),
      lmHead: n(t.lmHead),
      ...(lmHeadBias ? { lmHeadBias } : {}),
      layerPrefix: n(t.layerPrefix),
    },
  };
}

/**
 * Config updates an edit of the language model makes (flat, as for a plain checkpoint: `num_local_experts`,
 * `quantization_config`, ...) as updates of the container's config: a key of the text config, or one the top level
 * does not have, goes into `text_config` (the rest of it kept, so its text keeps its bytes); `topLevelKeys` and
 * keys only the top level has stay there. null deletes, as for applyConfigUpdates.
 */
export function containerConfigUpdates(container: Container, config: HFConfig, updates: Record<string, unknown>): Record<string, unknown> {
  const key = container.textConfigKey;
  const text = (config[key] ?? {}) as HFConfig;
  const top: Record<string, unknown> = {};
  let nested: HFConfig | undefined;
  for (const [k, v] of Object.entries(updates)) {
    const topLevel = container.topLevelKeys.includes(k) || (k in config && !(k in text));
    if (topLevel) {
      top[k] = v;
      continue;
    }
    nested ??= structuredClone(text);
    if (v === null) delete nested[k];
    else nested[k] = v;
  }
  if (nested) top[key] = nested;
  return top;
}

/** The family data of a view, with its full tensor names as this checkpoint stores them (inside its container). */
export function viewArchitecture(view: Pick<ModelView, 'family' | 'container'>): Architecture {
  const arch = getArchitecture(view.family, view.family);
  return view.container ? containedArchitecture(arch, view.container) : arch;
}
