/**
 * Load linears, norms and routers from a checkpoint as float32, whatever their on-disk form.
 *
 * Every linear comes back as W [out, in] (nn.Linear's layout) plus an optional bias [out]. The on-disk forms
 * handled here: a 2-D tensor per expert; one expert's slice of a fused 3-D tensor [E, out, in] or, transposed,
 * [E, in, out] (only that expert's bytes are read); gate/up halves or interleaved rows of a fused gate_up tensor;
 * FP8 e4m3 with 128x128 `weight_scale_inv` blocks; MXFP4 `_blocks`/`_scales` pairs.
 *
 * Other on-disk forms plug in through registerLinearFormat (see below): the quantize pipeline registers GPTQ
 * (qweight/qzeros/scales/g_idx) and the decompose pipeline its low-rank factors, so the runtime, `moe eval` and
 * every pipeline read those checkpoints through this one function without knowing about them.
 */
import { fail } from '../errors.js';
import type { Checkpoint } from '../io/checkpoint.js';
import type { Linear, SwiGLUWeights } from './types.js';
import type { LinearRef, NormRef, RouterRefs, SwiGLURefs } from './types.js';

/**
 * An on-disk representation of linears that loadLinear should understand.
 *
 * - `detect(ckpt, ref)`: true when this format stores the linear `ref` addresses. `ref.tensor` is the logical
 *   name the family's data file gives (e.g. `model.layers.0.mlp.experts.3.gate_proj.weight`); a format whose
 *   tensors have other names derives them from it (GPTQ: strip `.weight`, add `.qweight`/`.scales`/...). Must be
 *   cheap and must not read tensor data (it runs for every linear when a model is opened). `ref.expert` is set
 *   for slices of fused 3-D tensors.
 * - `load(ckpt, ref)`: the float32 W [ref.outFeatures, ref.inFeatures] (+ bias [out] when the format stores one;
 *   when the format does not, loadLinear reads `ref.bias` as usual). The shape is checked by loadLinear.
 * - `tensors(ckpt, ref)`: every on-disk tensor name this linear occupies (weight, scales, zeros, factors ...), so
 *   surgery can copy an expert byte for byte under a new index and inspect can attribute bytes. Default:
 *   `[ref.tensor]`.
 * - `storesBias`: the format keeps the linear's bias itself (load returns it), so `ref.bias` need not exist
 *   (GPTQModel's per-expert modules of fused gpt_oss experts carry `<module>.bias`).
 *
 * Formats registered later are tried first; the built-in MXFP4 format comes last, then a plain tensor read
 * (which dequantizes FP8 block-scaled weights through Checkpoint.readF32). registerLinearFormat returns a
 * function that removes the format again (for tests). Registration is per process: a command that should read a
 * format imports the module that registers it (e.g. `import '../quantize/format.js'`).
 */
export interface LinearFormat {
  name: string;
  detect(ckpt: Checkpoint, ref: LinearRef): boolean;
  load(ckpt: Checkpoint, ref: LinearRef): Promise<Linear>;
  tensors?(ckpt: Checkpoint, ref: LinearRef): string[];
  storesBias?: boolean;
}

const registered: LinearFormat[] = [];

export function registerLinearFormat(format: LinearFormat): () => void;
export function registerLinearFormat(detect: LinearFormat['detect'], load: LinearFormat['load'], tensors?: LinearFormat['tensors'], name?: string): () => void;
export function registerLinearFormat(
  a: LinearFormat | LinearFormat['detect'],
  load?: LinearFormat['load'],
  tensors?: LinearFormat['tensors'],
  name = 'custom',
): () => void {
  const fmt: LinearFormat = typeof a === 'function' ? { name, detect: a, load: load!, ...(tensors ? { tensors } : {}) } : a;
  registered.unshift(fmt);
  return () => {
    const i = registered.indexOf(fmt);
    if (i >= 0) registered.splice(i, 1);
  };
}

// ---- reading helpers ------------------------------------------------------------------------------------------

/** Checkpoint.readF32 dequantizes block-scaled FP8 weights itself (only the scale rows a range touches). */
function readAll(ckpt: Checkpoint, name: string, from?: number, to?: number): Promise<Float32Array> {
  return ckpt.readF32(name, from, to);
}

/** The 2-D matrix a ref points at (an expert's slice of a 3-D tensor, or the whole 2-D tensor), as stored. */
async function readStoredMatrix(ckpt: Checkpoint, name: string, expert: number | undefined): Promise<{ w: Float32Array; rows: number; cols: number }> {
  const shape = ckpt.shape(name);
  if (expert !== undefined) {
    if (shape.length !== 3) fail('InvalidShape', `${ckpt.dir}: fused expert tensor '${name}' must be 3-D, is [${shape.join(', ')}]`);
    const [E, r, c] = shape as [number, number, number];
    if (expert < 0 || expert >= E) fail('InvalidShape', `${ckpt.dir}: '${name}' has ${E} experts, expert ${expert} requested`);
    return { w: await readAll(ckpt, name, expert * r * c, (expert + 1) * r * c), rows: r, cols: c };
  }
  if (shape.length !== 2) fail('InvalidShape', `${ckpt.dir}: linear weight '${name}' must be 2-D, is [${shape.join(', ')}]`);
  return { w: await readAll(ckpt, name), rows: shape[0]!, cols: shape[1]! };
}

export function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = w[r * cols + c]!;
  return t;
}

/** Pick this linear's rows out of a fused gate_up matrix [rows, cols] (or a bias, cols = 1). */
export function selectRows(w: Float32Array, rows: number, cols: number, ref: Pick<LinearRef, 'rows' | 'interleave'>): { w: Float32Array; rows: number } {
  if (ref.interleave) {
    const start = ref.interleave === 'even' ? 0 : 1;
    const n = Math.floor((rows - start + 1) / 2);
    const out = new Float32Array(n * cols);
    for (let i = 0; i < n; i++) out.set(w.subarray((start + 2 * i) * cols, (start + 2 * i + 1) * cols), i * cols);
    return { w: out, rows: n };
  }
  if (ref.rows) {
    const [b, e] = ref.rows;
    if (b < 0 || e > rows || e < b) fail('InvalidShape', `row range [${b}, ${e}) outside a ${rows}-row fused tensor`);
    return { w: w.slice(b * cols, e * cols), rows: e - b };
  }
  return { w, rows };
}

async function readBias(ckpt: Checkpoint, ref: LinearRef): Promise<Float32Array | undefined> {
  if (!ref.bias) return undefined;
  const shape = ckpt.shape(ref.bias);
  let b: Float32Array;
  let n: number;
  if (ref.expert !== undefined) {
    if (shape.length !== 2) fail('InvalidShape', `${ckpt.dir}: fused expert bias '${ref.bias}' must be 2-D, is [${shape.join(', ')}]`);
    n = shape[1]!;
    b = await readAll(ckpt, ref.bias, ref.expert * n, (ref.expert + 1) * n);
  } else {
    n = shape.reduce((a, x) => a * x, 1);
    b = await readAll(ckpt, ref.bias);
  }
  return selectRows(b, n, 1, ref).w;
}

function checkShape(ckpt: Checkpoint, ref: LinearRef, lin: Linear, how: string): Linear {
  if (lin.out !== ref.outFeatures || lin.in !== ref.inFeatures || lin.w.length !== lin.out * lin.in) {
    fail(
      'InvalidShape',
      `${ckpt.dir}: '${ref.tensor}'${ref.expert !== undefined ? ` expert ${ref.expert}` : ''} (${how}) is [${lin.out}, ${lin.in}], the config says [${ref.outFeatures}, ${ref.inFeatures}]`,
    );
  }
  if (lin.b && lin.b.length !== lin.out) fail('InvalidShape', `${ckpt.dir}: bias '${ref.bias}' has ${lin.b.length} values, expected ${lin.out}`);
  return lin;
}

// ---- built-in formats -----------------------------------------------------------------------------------------

export const MXFP4_FORMAT: LinearFormat = {
  name: 'mxfp4',
  detect: (ckpt, ref) => !ckpt.has(ref.tensor) && ckpt.has(`${ref.tensor}_blocks`) && ckpt.has(`${ref.tensor}_scales`),
  async load(ckpt, ref) {
    // MXFP4 blocks are stored out-major ([E, out, in/32, 16]) even where the bf16 form is transposed
    const bName = `${ref.tensor}_blocks`;
    const sName = `${ref.tensor}_scales`;
    const bs = ckpt.shape(bName);
    const ss = ckpt.shape(sName);
    const fusedDims = ref.expert !== undefined ? 1 : 0;
    if (bs.length !== 3 + fusedDims || bs[bs.length - 1] !== 16 || ss.length !== 2 + fusedDims || ss.some((d, i) => d !== bs[i])) {
      fail('InvalidShape', `${ckpt.dir}: MXFP4 pair '${bName}' [${bs.join(', ')}] / '${sName}' [${ss.join(', ')}] is malformed`);
    }
    const rows = bs[fusedDims]!;
    const groups = bs[fusedDims + 1]!;
    const e = ref.expert ?? 0;
    if (e >= (fusedDims ? bs[0]! : 1)) fail('InvalidShape', `${ckpt.dir}: '${bName}' has ${bs[0]} experts, expert ${e} requested`);
    const full = await ckpt.readMxfp4(ref.tensor, e * rows, (e + 1) * rows);
    const sel = selectRows(full, rows, groups * 32, ref);
    return { out: sel.rows, in: groups * 32, w: sel.w };
  },
  tensors: (_ckpt, ref) => [`${ref.tensor}_blocks`, `${ref.tensor}_scales`],
};

const BUILTIN: LinearFormat[] = [MXFP4_FORMAT];

/** The format that stores `ref`, or undefined for a plain tensor (or a missing one). */
export function formatOf(ckpt: Checkpoint, ref: LinearRef): LinearFormat | undefined {
  for (const f of registered) if (f.detect(ckpt, ref)) return f;
  for (const f of BUILTIN) if (f.detect(ckpt, ref)) return f;
  return undefined;
}

/** Whether the checkpoint stores this linear in any form loadLinear reads. */
export function linearPresent(ckpt: Checkpoint, ref: Pick<LinearRef, 'tensor'> & Partial<LinearRef>): boolean {
  const full = { outFeatures: 0, inFeatures: 0, ...ref } as LinearRef;
  return ckpt.has(ref.tensor) || formatOf(ckpt, full) !== undefined;
}

/** On-disk tensors the weight of `ref` occupies (not its bias). */
export function linearTensors(ckpt: Checkpoint, ref: LinearRef): string[] {
  const f = formatOf(ckpt, ref);
  if (f) return f.tensors?.(ckpt, ref) ?? [ref.tensor];
  const scale = ckpt.has(ref.tensor) ? ckpt.storage(ref.tensor).blockScale?.scaleName : undefined;
  return scale ? [ref.tensor, scale] : [ref.tensor];
}

/**
 * How an expert linear is stored, in words, for reports: the tensors it is read from and what reading does (MXFP4
 * blocks are dequantized to float32; FP8 blocks scaled; fused slices read one expert at a time).
 */
export function describeStorage(ckpt: Checkpoint, ref: LinearRef, prefix = ''): string {
  const names = linearTensors(ckpt, ref).filter((t) => ckpt.has(t));
  const rel = names.map((n) => (n.startsWith(prefix) ? n.slice(prefix.length) : n)).join(', ');
  const fmt = formatOf(ckpt, ref);
  if (fmt?.name === 'mxfp4') return `MXFP4 (${rel}): dequantized on read to float32 (E2M1 codes x 2^(scale - 127) per 32 inputs)`;
  if (fmt) return `${fmt.name} (${rel})`;
  const dtypes = [...new Set(names.map((n) => ckpt.dtype(n)))].join('/');
  const fused = ref.expert !== undefined ? `fused 3-D ${dtypes} tensor (${rel}), one expert's slice read at a time` : `${dtypes} (${rel})`;
  return names.length > 1 ? `${fused}, block-scaled, dequantized on read` : fused;
}

// ---- public loaders -------------------------------------------------------------------------------------------

export async function loadLinear(ckpt: Checkpoint, ref: LinearRef): Promise<Linear> {
  const fmt = formatOf(ckpt, ref);
  if (fmt) {
    const lin = await fmt.load(ckpt, ref);
    if (!lin.b && ref.bias) {
      const b = await readBias(ckpt, ref);
      if (b) lin.b = b;
    }
    return checkShape(ckpt, ref, lin, fmt.name);
  }
  if (!ckpt.has(ref.tensor)) fail('TensorNotFound', `${ckpt.dir}: checkpoint has no tensor '${ref.tensor}' (nor a quantized form of it)`);
  let { w, rows, cols } = await readStoredMatrix(ckpt, ref.tensor, ref.expert);
  if (ref.transposed) {
    w = transpose(w, rows, cols);
    [rows, cols] = [cols, rows];
  }
  const sel = selectRows(w, rows, cols, ref);
  const lin: Linear = { out: sel.rows, in: cols, w: sel.w };
  const b = await readBias(ckpt, ref);
  if (b) lin.b = b;
  return checkShape(ckpt, ref, lin, ckpt.dtype(ref.tensor));
}

export async function loadSwiGLU(ckpt: Checkpoint, refs: SwiGLURefs): Promise<SwiGLUWeights> {
  const [gate, up, down] = await Promise.all([loadLinear(ckpt, refs.gate), loadLinear(ckpt, refs.up), loadLinear(ckpt, refs.down)]);
  return { gate, up, down };
}

export async function loadNorm(ckpt: Checkpoint, ref: NormRef): Promise<{ weight: Float32Array; bias?: Float32Array }> {
  const weight = await readAll(ckpt, ref.weight);
  if (!ref.bias) return { weight };
  const bias = await readAll(ckpt, ref.bias);
  if (bias.length !== weight.length) fail('InvalidShape', `${ckpt.dir}: norm bias '${ref.bias}' has ${bias.length} values, weight has ${weight.length}`);
  return { weight, bias };
}

/** Router weight [E, H] (+ bias [E], + selection bias [E]) as float32. */
export async function loadRouter(ckpt: Checkpoint, refs: RouterRefs): Promise<{ w: Float32Array; bias?: Float32Array; correctionBias?: Float32Array }> {
  const out: { w: Float32Array; bias?: Float32Array; correctionBias?: Float32Array } = { w: await readAll(ckpt, refs.weight) };
  if (refs.bias) out.bias = await readAll(ckpt, refs.bias);
  if (refs.correctionBias) out.correctionBias = await readAll(ckpt, refs.correctionBias);
  return out;
}
