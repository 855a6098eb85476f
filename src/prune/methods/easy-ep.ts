import { need, perExpert, type PruneMethod } from './common.js';

export const easyEp: PruneMethod = {
  name: 'easy-ep',
  summary: 'output-aware token contribution: Σ g_j‖f_j‖·max(1 − cos(h_before, h_after), 0) (EASY-EP)',
  paper: 'https://arxiv.org/abs/2504.06792',
  needs: 'stats',
  score(layer) {
    const s = need(layer, 'easy-ep');
    return perExpert(s.numExperts, (j) => s.easyEpSum[j]);
  },
};
