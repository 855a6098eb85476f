/**
 * A pruned layer as a running forward pass sees it. The runtime keeps a layer's expert count during a pass, so
 * dropped experts stay with a router bias of -inf (and a -inf selection bias where the family has one): no token
 * can select them by score, and every family's rule over the remaining logits is the pruned model's (softmax over
 * -inf adds nothing to the denominator; sigmoid(-inf) = 0; top-k on raw logits never picks -inf). This is Lu et
 * al.'s F_S: the dropped experts' logits set to -inf.
 *
 * Under group-limited routing the kept experts are moved to the front of their group (in their original order), so
 * the selection sees them in the pruned checkpoint's order (transformers 4 filled unselected groups with 0.0, where
 * ties with negative biased scores went to the lower index; transformers 5 fills -inf, and the order still holds).
 */
import type { MoeLayerEdit, MoeLayerInput } from './api.js';

export function maskedEdit(input: Pick<MoeLayerInput, 'experts' | 'router'>, kept: readonly number[], groupSize?: number): MoeLayerEdit {
  const E = input.experts.length;
  const G = groupSize && groupSize < E ? groupSize : E;
  const keep = new Set(kept);
  // new position -> old expert: per group, kept first
  const order: number[] = [];
  for (let g0 = 0; g0 < E; g0 += G) {
    const members = Array.from({ length: G }, (_, i) => g0 + i);
    order.push(...members.filter((j) => keep.has(j)), ...members.filter((j) => !keep.has(j)));
  }
  const H = input.router.w.length / E;
  const w = new Float32Array(E * H);
  order.forEach((j, i) => w.set(input.router.w.subarray(j * H, (j + 1) * H), i * H));
  const bias = Float32Array.from(order, (j) => (keep.has(j) ? (input.router.bias?.[j] ?? 0) : -Infinity));
  const router: NonNullable<MoeLayerEdit['router']> = { w, bias };
  const cb = input.router.correctionBias;
  if (cb) router.correctionBias = Float32Array.from(order, (j) => (keep.has(j) ? cb[j]! : -Infinity));
  return { experts: order.map((j) => input.experts[j]!), router };
}
