/** REAM-style: the n experts of highest REAP saliency are centroids; each takes its nearest unassigned experts
 *  (mean-output cosine; closest pairs first), at most ceil((E - n) / n) each, so no centroid swallows the layer. */
import type { ExpertGroup, LayerSignals } from '../types.js';
import { finishGroups, outputSimilarity, rankDescending } from '../similarity.js';
import type { GroupingRule } from './common.js';

function groupSaliency(sig: LayerSignals, n: number): ExpertGroup[] {
  const E = sig.numExperts;
  const sim = outputSimilarity(sig, 'saliency');
  const centroids = rankDescending(sig.saliency).slice(0, n);
  const cap = Math.ceil((E - n) / n);
  const groups = centroids.map((anchor) => ({ anchor, members: [anchor] }));
  // closest (centroid, expert) pairs first, so a centroid early in saliency order cannot take another's twin
  const pairs: Array<[number, number]> = [];
  for (let g = 0; g < n; g++) for (let e = 0; e < E; e++) if (!centroids.includes(e)) pairs.push([g, e]);
  pairs.sort((p, q) => sim[groups[q[0]].anchor * E + q[1]] - sim[groups[p[0]].anchor * E + p[1]] || p[0] - q[0] || p[1] - q[1]);
  const assigned = new Set<number>();
  for (const [g, e] of pairs) {
    if (assigned.has(e) || groups[g].members.length > cap) continue;
    groups[g].members.push(e);
    assigned.add(e);
  }
  return finishGroups(groups);
}

export const groupingSaliency: GroupingRule = {
  name: 'saliency',
  summary: 'the N experts of highest REAP saliency are centroids; each takes its nearest unassigned experts (mean-output cosine)',
  paper: 'REAM-style',
  needs: 'stats',
  group: groupSaliency,
};
