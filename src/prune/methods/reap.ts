import { need, perExpert, type PruneMethod } from './common.js';

export const reap: PruneMethod = {
  name: 'reap',
  summary: 'router-weighted expert activation: mean over routed tokens of g_j(x)·‖f_j(x)‖₂',
  paper: 'https://arxiv.org/abs/2510.13999',
  needs: 'stats',
  score(layer) {
    const s = need(layer, 'reap');
    return perExpert(s.numExperts, (j) => (s.count[j] > 0 ? s.reapSum[j] / s.count[j] : 0));
  },
};
