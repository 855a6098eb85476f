/**
 * Neuron alignment before averaging. Two SwiGLU experts compute the same function under any permutation of their
 * intermediate units (rows of W_gate and W_up, columns of W_down together), so averaging unaligned experts mixes
 * unrelated units. Each member is permuted onto its group's anchor by a linear assignment that maximises the
 * summed similarity of matched units:
 *
 * - weights: unit i's signature is [W_gate[i,:], W_up[i,:], W_down[:,i]]; similarity is the inner product of
 *   signatures (maximising it minimises the summed squared distance, since the norms are fixed per expert).
 * - activations: Pearson correlation of the units' activations silu(g) * u on calibration tokens routed to the group.
 */
import * as tf from '@tensorflow/tfjs-core';
import { linearAssignment } from '../../kernels/assign/lap.js';
import { fail } from '../errors.js';
import type { ActivationSpec } from '../model/types.js';
import type { Linear, SwiGLUWeights } from '../runtime/api.js';

/** rows of the tfjs matmul per chunk: keeps each product well inside the wasm heap */
const CHUNK_ELEMS = 1 << 24;

/** [rows, cols] -> [cols, rows]: tfjs-wasm's matMul with transposeB is ~10x slower than on a transposed copy. */
export function transposed(m: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = m[r * cols + c];
  return t;
}

/**
 * A [n, d] x B[m, d]^T -> [n, m] in float64, computed in row chunks of A on the active tfjs backend.
 */
export function innerProducts(a: Float32Array, n: number, b: Float32Array, m: number, d: number): Float64Array {
  const out = new Float64Array(n * m);
  const rows = Math.max(1, Math.floor(CHUNK_ELEMS / Math.max(m, d)));
  const bt = tf.tensor2d(transposed(b, m, d), [d, m]);
  try {
    for (let r0 = 0; r0 < n; r0 += rows) {
      const r1 = Math.min(n, r0 + rows);
      const part = tf.tidy(() => tf.matMul(tf.tensor2d(a.subarray(r0 * d, r1 * d), [r1 - r0, d]), bt));
      out.set(part.dataSync(), r0 * m);
      part.dispose();
    }
  } finally {
    bt.dispose();
  }
  return out;
}

/** [I, 2H + H_out] per-unit signatures: gate row, up row, down column. */
export function unitSignatures(w: SwiGLUWeights): { sig: Float32Array; dim: number } {
  const I = w.gate.out;
  const H = w.gate.in;
  const O = w.down.out;
  const dim = 2 * H + O;
  const sig = new Float32Array(I * dim);
  for (let i = 0; i < I; i++) {
    sig.set(w.gate.w.subarray(i * H, (i + 1) * H), i * dim);
    sig.set(w.up.w.subarray(i * H, (i + 1) * H), i * dim + H);
    for (let o = 0; o < O; o++) sig[i * dim + 2 * H + o] = w.down.w[o * I + i];
  }
  return { sig, dim };
}

/** [I, I] similarity of anchor units (rows) to member units (columns) from weights. */
export function weightSimilarity(anchor: SwiGLUWeights, member: SwiGLUWeights): Float64Array {
  checkSameShape(anchor, member);
  const a = unitSignatures(anchor);
  const b = unitSignatures(member);
  return innerProducts(a.sig, anchor.gate.out, b.sig, member.gate.out, a.dim);
}

/** Intermediate activations act(x W_gate^T + b) * (x W_up^T + b) of T tokens -> [T, I], in the family's activation. */
export function intermediateActivations(w: SwiGLUWeights, x: Float32Array, T: number, activation: ActivationSpec = { kind: 'silu' }): Float32Array {
  const H = w.gate.in;
  const I = w.gate.out;
  // tidy returns the tensor, not its data: tidy walks a returned typed array element by element (seconds)
  const act = tf.tidy(() => {
    const xt = tf.tensor2d(x, [T, H]);
    const lin = (l: Linear) => {
      const y = tf.matMul(xt, tf.tensor2d(transposed(l.w, l.out, l.in), [l.in, l.out]));
      return l.b ? tf.add(y, tf.tensor1d(l.b)) : y;
    };
    let g = lin(w.gate);
    let u = lin(w.up);
    if (activation.kind === 'clamped-swiglu') {
      // gpt_oss: gate clamped above, up clamped both ways, (up + 1) * gate * sigmoid(alpha * gate)
      g = tf.minimum(g, activation.limit);
      u = tf.add(tf.clipByValue(u, -activation.limit, activation.limit), 1);
      return tf.mul(tf.mul(g, tf.sigmoid(tf.mul(g, activation.alpha))), u);
    }
    return tf.mul(tf.mul(g, tf.sigmoid(g)), u);
  });
  try {
    return (act.dataSync() as Float32Array).slice(0, T * I);
  } finally {
    act.dispose();
  }
}

/** Column-standardise [T, I] in place (zero mean, unit norm over T); constant columns become zero. */
function standardiseColumns(m: Float32Array, T: number, I: number): void {
  for (let i = 0; i < I; i++) {
    let mean = 0;
    for (let t = 0; t < T; t++) mean += m[t * I + i];
    mean /= T;
    let ss = 0;
    for (let t = 0; t < T; t++) {
      const d = m[t * I + i] - mean;
      ss += d * d;
    }
    const inv = ss > 1e-20 ? 1 / Math.sqrt(ss) : 0;
    for (let t = 0; t < T; t++) m[t * I + i] = (m[t * I + i] - mean) * inv;
  }
}

/** [I, I] Pearson correlation of anchor units (rows) to member units (columns) over tokens x [T, H]. */
export function activationSimilarity(anchor: SwiGLUWeights, member: SwiGLUWeights, x: Float32Array, T: number, activation?: ActivationSpec): Float64Array {
  checkSameShape(anchor, member);
  const I = anchor.gate.out;
  const a = intermediateActivations(anchor, x, T, activation);
  const b = intermediateActivations(member, x, T, activation);
  standardiseColumns(a, T, I);
  standardiseColumns(b, T, I);
  // correlation = A^T B: [I, T] x [T, I]
  return innerProducts(transposed(a, T, I), I, transposed(b, T, I), I, T);
}

export interface AlignmentResult {
  /** perm[a] = member unit placed at anchor position a */
  perm: Int32Array;
  /** mean similarity per unit of the identity matching and of the chosen one */
  before: number;
  after: number;
}

/** Solve the assignment on an [I, I] anchor-by-member similarity. */
export function alignFromSimilarity(sim: Float64Array, I: number): AlignmentResult {
  const a = linearAssignment(sim, I, { maximize: true });
  let diag = 0;
  for (let i = 0; i < I; i++) diag += sim[i * I + i];
  return { perm: a.colOf, before: diag / I, after: a.total / I };
}

function permuteRows(l: Linear, perm: Int32Array): Linear {
  const w = new Float32Array(l.w.length);
  for (let a = 0; a < perm.length; a++) w.set(l.w.subarray(perm[a] * l.in, (perm[a] + 1) * l.in), a * l.in);
  const out: Linear = { out: l.out, in: l.in, w };
  if (l.b) out.b = Float32Array.from(perm, (p) => l.b![p]);
  return out;
}

function permuteColumns(l: Linear, perm: Int32Array): Linear {
  const w = new Float32Array(l.w.length);
  for (let o = 0; o < l.out; o++) for (let a = 0; a < perm.length; a++) w[o * l.in + a] = l.w[o * l.in + perm[a]];
  const out: Linear = { out: l.out, in: l.in, w };
  if (l.b) out.b = l.b.slice();
  return out;
}

/** The same expert with its intermediate units reordered: unit a of the result is unit perm[a] of `w`. */
export function permuteUnits(w: SwiGLUWeights, perm: Int32Array): SwiGLUWeights {
  if (perm.length !== w.gate.out) fail('ComputeError', `permutation of ${perm.length} units for an expert with ${w.gate.out}`);
  return { gate: permuteRows(w.gate, perm), up: permuteRows(w.up, perm), down: permuteColumns(w.down, perm) };
}

function checkSameShape(a: SwiGLUWeights, b: SwiGLUWeights): void {
  for (const k of ['gate', 'up', 'down'] as const) {
    if (a[k].out !== b[k].out || a[k].in !== b[k].in)
      fail('ComputeError', `cannot merge experts of different shapes (${k}: ${a[k].out}x${a[k].in} vs ${b[k].out}x${b[k].in})`);
  }
}
