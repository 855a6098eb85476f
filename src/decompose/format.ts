/**
 * The `moe-lowrank` checkpoint format: an expert linear W [out, in] is stored as
 *
 *   W = base + U V        U [out, k], V [k, in], base [out, in] optional (base-delta mode)
 *
 * under tensor names derived from the linear's own name (`<stem>` = its weight name without `.weight`):
 *
 *   <stem>.weight_u, <stem>.weight_v                  per-expert factors (svd, whitened, base-delta deltas)
 *   <experts>.shared_basis_in.<proj>  [k, in]         shared-input: V shared by all experts of a layer, per-expert U
 *   <experts>.shared_basis_out.<proj> [out, k]        shared-output: U shared, per-expert V
 *   <experts>.base.<proj>             [out, in]       base-delta: the frequency-weighted base expert
 *
 * config.json gets a `moe` section that lists every factored linear and the tensors that make it up, so a loader
 * never guesses from names:
 *
 *   "moe": { "format": "moe-lowrank", "version": 1, "mode": "whitened", "ratio": 0.6,
 *            "modules": { "<linear weight name>": { "rank": 37, "u": "<tensor>", "v": "<tensor>", "base"?: "<tensor>" } },
 *            "stock": { "model_type": "mixtral", "architectures": ["MixtralForCausalLM"] } }
 *
 * and its own model_type `moe_lowrank_<family>` and class `MoeLowRank<Class>` (src/model/lowrank.ts), so stock
 * loaders refuse it instead of loading it with the expert weights missing.
 *
 * Registering the format with loadLinear makes the runtime, `moe eval` and every pipeline read such checkpoints
 * as if they were dense (W is materialised in float32 when a layer is loaded).
 */
import { fail } from '../errors.js';
import type { Checkpoint, HFConfig } from '../io/checkpoint.js';
import { registerLinearFormat } from '../model/load.js';
import type { LinearRef } from '../model/types.js';
import type { Linear } from '../runtime/api.js';

export { LOWRANK_FORMAT } from '../model/lowrank.js';
import { LOWRANK_FORMAT } from '../model/lowrank.js';
export const LOWRANK_VERSION = 1;

/** The modes' names: one file each in src/decompose/methods/<mode>.ts, listed in src/decompose/methods.ts. */
export type DecomposeMode = 'svd' | 'whitened' | 'shared-input' | 'shared-output' | 'base-delta';

export interface LowRankModule {
  rank: number;
  /** [out, rank] */
  u: string;
  /** [rank, in] */
  v: string;
  /** [out, in], added to u v */
  base?: string;
}

export interface LowRankSection {
  format: typeof LOWRANK_FORMAT;
  version: number;
  mode: DecomposeMode;
  ratio: number;
  modules: Record<string, LowRankModule>;
}

/** The key a linear has in `moe.modules`: its weight name, plus the expert index for slices of fused tensors. */
export function moduleKey(ref: Pick<LinearRef, 'tensor' | 'expert' | 'rows' | 'interleave'>): string {
  let k = ref.tensor;
  if (ref.expert !== undefined) k += `[${ref.expert}]`;
  if (ref.rows) k += `[${ref.rows[0]}:${ref.rows[1]}]`;
  if (ref.interleave) k += `[${ref.interleave}]`;
  return k;
}

export function stemOf(tensor: string): string {
  return tensor.endsWith('.weight') ? tensor.slice(0, -'.weight'.length) : tensor;
}

export const factorNames = {
  u: (tensor: string) => `${stemOf(tensor)}.weight_u`,
  v: (tensor: string) => `${stemOf(tensor)}.weight_v`,
  /** `<...>.experts` prefix of a per-expert linear name, e.g. model.layers.0.block_sparse_moe.experts */
  expertsPrefix(tensor: string): string {
    const m = /^(.*\.experts)\.\d+\./.exec(tensor);
    if (!m) fail('UnsupportedArchitecture', `low-rank factors need per-expert tensors named '<...>.experts.<j>.<proj>.weight'; got '${tensor}'`);
    return m[1]!;
  },
  sharedIn: (prefix: string, proj: string) => `${prefix}.shared_basis_in.${proj}`,
  sharedOut: (prefix: string, proj: string) => `${prefix}.shared_basis_out.${proj}`,
  base: (prefix: string, proj: string) => `${prefix}.base.${proj}`,
};

const sections = new WeakMap<HFConfig, LowRankSection | null>();

/** The validated `moe` section of a checkpoint's config, or null when it has none. */
export function lowRankSection(config: HFConfig, where = 'config.json'): LowRankSection | null {
  const cached = sections.get(config);
  if (cached !== undefined) return cached;
  const raw = config.moe as Record<string, unknown> | undefined;
  let out: LowRankSection | null = null;
  if (raw !== undefined && raw !== null && typeof raw === 'object' && raw.format === LOWRANK_FORMAT) {
    if (raw.version !== LOWRANK_VERSION)
      fail('InvalidConfig', `${where}: moe-lowrank version ${String(raw.version)} is not supported (this build reads ${LOWRANK_VERSION})`);
    const mods = raw.modules;
    if (mods === null || typeof mods !== 'object' || Array.isArray(mods)) fail('InvalidConfig', `${where}: moe.modules must be an object`);
    for (const [name, m] of Object.entries(mods as Record<string, unknown>)) {
      const mm = m as Partial<LowRankModule> | null;
      if (
        !mm ||
        typeof mm !== 'object' ||
        !Number.isInteger(mm.rank) ||
        (mm.rank as number) < 0 ||
        typeof mm.u !== 'string' ||
        typeof mm.v !== 'string' ||
        (mm.base !== undefined && typeof mm.base !== 'string')
      ) {
        fail('InvalidConfig', `${where}: moe.modules['${name}'] must be {rank, u, v, base?}`);
      }
    }
    out = raw as unknown as LowRankSection;
  }
  sections.set(config, out);
  return out;
}

function moduleFor(ckpt: Checkpoint, ref: LinearRef): LowRankModule | undefined {
  return lowRankSection(ckpt.config, `${ckpt.dir}/config.json`)?.modules[moduleKey(ref)];
}

/** W = base + U V in float32 (accumulated in float64: U V at rank k sums k products per entry). */
export async function loadLowRank(ckpt: Checkpoint, ref: LinearRef, mod: LowRankModule): Promise<Linear> {
  const m = ref.outFeatures;
  const n = ref.inFeatures;
  const k = mod.rank;
  const us = ckpt.shape(mod.u);
  const vs = ckpt.shape(mod.v);
  if (us.length !== 2 || us[0] !== m || us[1] !== k) fail('InvalidShape', `${ckpt.dir}: '${mod.u}' is [${us.join(', ')}], expected [${m}, ${k}]`);
  if (vs.length !== 2 || vs[0] !== k || vs[1] !== n) fail('InvalidShape', `${ckpt.dir}: '${mod.v}' is [${vs.join(', ')}], expected [${k}, ${n}]`);
  const [U, V] = await Promise.all([ckpt.readF32(mod.u), ckpt.readF32(mod.v)]);
  const acc = new Float64Array(m * n);
  if (mod.base) {
    const bs = ckpt.shape(mod.base);
    if (bs.length !== 2 || bs[0] !== m || bs[1] !== n) fail('InvalidShape', `${ckpt.dir}: '${mod.base}' is [${bs.join(', ')}], expected [${m}, ${n}]`);
    acc.set(await ckpt.readF32(mod.base));
  }
  for (let i = 0; i < m; i++) {
    const o = i * n;
    for (let p = 0; p < k; p++) {
      const u = U[i * k + p]!;
      if (u === 0) continue;
      const vp = p * n;
      for (let j = 0; j < n; j++) acc[o + j]! += u * V[vp + j]!;
    }
  }
  const w = Float32Array.from(acc);
  for (let i = 0; i < w.length; i++)
    if (!Number.isFinite(w[i]!)) fail('NonFinite', `${ckpt.dir}: low-rank factors of '${ref.tensor}' give a non-finite weight`);
  return { out: m, in: n, w };
}

let unregister: (() => void) | undefined;

/** Make loadLinear read moe-lowrank checkpoints. Idempotent. */
export function registerLowRankFormat(): void {
  if (unregister) return;
  unregister = registerLinearFormat({
    name: LOWRANK_FORMAT,
    // the factored linear's own tensor is gone; the config names what replaced it
    detect: (ckpt, ref) => !ckpt.has(ref.tensor) && moduleFor(ckpt, ref) !== undefined,
    load: (ckpt, ref) => loadLowRank(ckpt, ref, moduleFor(ckpt, ref)!),
    tensors: (ckpt, ref) => {
      const mod = moduleFor(ckpt, ref)!;
      return [mod.u, mod.v, ...(mod.base ? [mod.base] : [])];
    },
  });
}

registerLowRankFormat();
