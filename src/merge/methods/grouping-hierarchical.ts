/** HC-SMoE: average-linkage agglomerative clustering of the experts' mean outputs (cosine distance) down to n
 *  clusters; the anchor is the cluster's most frequent member. */
import type { ExpertGroup, LayerSignals } from '../types.js';
import { finishGroups, outputSimilarity } from '../similarity.js';
import type { GroupingRule } from './common.js';

function groupHierarchical(sig: LayerSignals, n: number): ExpertGroup[] {
  const E = sig.numExperts;
  const sim = outputSimilarity(sig, 'hierarchical');
  let clusters: number[][] = Array.from({ length: E }, (_, i) => [i]);
  const dist = (a: number[], b: number[]): number => {
    let s = 0;
    for (const i of a) for (const j of b) s += 1 - sim[i * E + j];
    return s / (a.length * b.length);
  };
  while (clusters.length > n) {
    let bi = 0;
    let bj = 1;
    let bd = Infinity;
    for (let i = 0; i < clusters.length; i++) {
      for (let j = i + 1; j < clusters.length; j++) {
        const d = dist(clusters[i], clusters[j]);
        if (d < bd - 1e-12) {
          bd = d;
          bi = i;
          bj = j;
        }
      }
    }
    clusters[bi] = [...clusters[bi], ...clusters[bj]];
    clusters = clusters.filter((_, k) => k !== bj);
  }
  return finishGroups(
    clusters.map((members) => ({
      anchor: members.reduce((a, b) => (sig.count[b] > sig.count[a] || (sig.count[b] === sig.count[a] && b < a) ? b : a)),
      members,
    })),
  );
}

export const groupingHierarchical: GroupingRule = {
  name: 'hierarchical',
  summary: "average-linkage clustering of the experts' mean outputs (cosine distance) down to N clusters; anchor = most frequent member",
  paper: 'HC-SMoE',
  needs: 'stats',
  group: groupHierarchical,
};
