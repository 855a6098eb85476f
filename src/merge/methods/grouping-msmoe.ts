/** M-SMoE: the n most frequently routed experts are dominant; every other one joins the dominant expert whose
 *  router logits over calibration tokens are most similar (cosine of logit columns). */
import type { ExpertGroup, LayerSignals } from '../types.js';
import { finishGroups, logitSimilarity, rankDescending } from '../similarity.js';
import type { GroupingRule } from './common.js';

function groupMsmoe(sig: LayerSignals, n: number): ExpertGroup[] {
  const E = sig.numExperts;
  const sim = logitSimilarity(sig);
  const dominant = rankDescending(sig.count).slice(0, n);
  const groups = dominant.map((anchor) => ({ anchor, members: [anchor] }));
  for (let e = 0; e < E; e++) {
    if (dominant.includes(e)) continue;
    let best = 0;
    for (let g = 1; g < groups.length; g++) if (sim[e * E + groups[g].anchor] > sim[e * E + groups[best].anchor]) best = g;
    groups[best].members.push(e);
  }
  return finishGroups(groups);
}

export const groupingMsmoe: GroupingRule = {
  name: 'msmoe',
  summary: 'the N most frequently routed experts are dominant; every other expert joins the dominant one whose router logits are most similar',
  paper: 'M-SMoE (Merge, Then Compress), https://arxiv.org/abs/2310.01334',
  needs: 'stats',
  group: groupMsmoe,
};
