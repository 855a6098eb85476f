import { need, perExpert, type PruneMethod } from './common.js';

export const gateMass: PruneMethod = {
  name: 'gate-mass',
  summary: 'mean router probability p_j(x) over all tokens (Expert Drop)',
  paper: 'https://arxiv.org/abs/2406.02500',
  needs: 'stats',
  score(layer) {
    const s = need(layer, 'gate-mass');
    return perExpert(s.numExperts, (j) => (s.tokens > 0 ? s.probMass[j] / s.tokens : 0));
  },
};
