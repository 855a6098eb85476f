import { need, perExpert, type PruneMethod } from './common.js';

export const frequency: PruneMethod = {
  name: 'frequency',
  summary: 'tokens with the expert among their top-k (SEER-MoE heavy hitters)',
  paper: 'https://arxiv.org/abs/2404.05089',
  needs: 'stats',
  score(layer) {
    const s = need(layer, 'frequency');
    return perExpert(s.numExperts, (j) => s.count[j]);
  },
};
