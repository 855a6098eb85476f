/**
 * The similarities and ordering the grouping methods share (src/merge/methods/grouping-*.ts): experts ranked by a
 * signal, cosine similarity of router-logit columns or of mean outputs, and the canonical order of a partition.
 */
import { fail } from '../errors.js';
import type { ExpertGroup, GroupingMethod, LayerSignals } from './types.js';

/** Indices sorted by value descending, ties by index (deterministic plans). */
export function rankDescending(v: ArrayLike<number>): number[] {
  return Array.from({ length: v.length }, (_, i) => i).sort((a, b) => v[b] - v[a] || a - b);
}

/** Cosine similarity between rows a and b of a row-major [rows, dim] matrix; 0 when either row is zero. */
function cosineRows(m: ArrayLike<number>, dim: number, a: number, b: number): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let d = 0; d < dim; d++) {
    const x = m[a * dim + d];
    const y = m[b * dim + d];
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  return na > 0 && nb > 0 ? dot / Math.sqrt(na * nb) : 0;
}

/** [E, E] cosine similarity of the experts' router-logit columns over the sampled tokens. */
export function logitSimilarity(sig: LayerSignals): Float64Array {
  const E = sig.numExperts;
  const S = sig.logitRows;
  if (!sig.logitSample || S === 0) fail('InvalidStats', 'grouping msmoe needs router-logit samples in the calibration statistics');
  // transpose to [E, S] so each expert's logits over tokens is one row
  const cols = new Float64Array(E * S);
  for (let s = 0; s < S; s++) for (let e = 0; e < E; e++) cols[e * S + s] = sig.logitSample[s * E + e];
  const sim = new Float64Array(E * E);
  for (let a = 0; a < E; a++) for (let b = 0; b < E; b++) sim[a * E + b] = cosineRows(cols, S, a, b);
  return sim;
}

/** [E, E] cosine similarity of the experts' mean outputs. */
export function outputSimilarity(sig: LayerSignals, method: GroupingMethod): Float64Array {
  const E = sig.numExperts;
  if (!sig.meanOutput) fail('InvalidStats', `grouping ${method} needs mean expert outputs in the calibration statistics`);
  const sim = new Float64Array(E * E);
  for (let a = 0; a < E; a++) for (let b = 0; b < E; b++) sim[a * E + b] = a === b ? 1 : cosineRows(sig.meanOutput, sig.hidden, a, b);
  return sim;
}

/** Members in order (anchor first, the rest ascending), groups by anchor: the plan is deterministic. */
export function finishGroups(groups: ExpertGroup[]): ExpertGroup[] {
  for (const g of groups) g.members = [g.anchor, ...g.members.filter((m) => m !== g.anchor).sort((a, b) => a - b)];
  return groups.sort((a, b) => a.anchor - b.anchor);
}
