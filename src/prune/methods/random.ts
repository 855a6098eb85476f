import { perExpert, type PruneMethod } from './common.js';

export const random: PruneMethod = {
  name: 'random',
  summary: 'uniformly random experts (baseline; --seed)',
  needs: 'none',
  score(_layer, ctx) {
    return perExpert(ctx.numExperts, () => ctx.rng());
  },
};
