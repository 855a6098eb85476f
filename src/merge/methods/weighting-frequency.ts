/** A member weighs as many tokens as were routed to it (M-SMoE, HC-SMoE). */
import type { Weighting } from './common.js';

export const weightingFrequency: Weighting = {
  name: 'frequency',
  summary: 'member weight proportional to the tokens routed to it',
  paper: 'M-SMoE, HC-SMoE',
  needs: 'stats',
  weight: (sig, m) => sig.count[m],
};
