/**
 * Sub-MoE: one output basis per layer x projection shared by all experts, per-expert input factors; each expert is
 * whitened by its own Gram before the experts are concatenated [m, E n].
 */
import { factorizeSharedOutput, factorRank } from '../factorize.js';
import { ladderTop } from '../unitshape.js';
import { type DecomposeModeMethod, factorisationParts, factorOptions, workspaceBytes } from './common.js';

export const sharedOutput: DecomposeModeMethod = {
  name: 'shared-output',
  summary: 'one output basis per layer x projection shared by all experts, each expert whitened by its own Gram',
  paper: 'Sub-MoE',
  needs: 'forward',
  shapes({ layer, proj, m, n, E, opts }) {
    const perRank = m + E * n;
    return [
      {
        layer,
        proj,
        m,
        n,
        group: `L${layer}.${proj}`,
        id: `L${layer}.shared.${proj}`,
        kind: 'shared-output',
        experts: Array.from({ length: E }, (_, j) => j),
        maxRank: factorRank(m, E * n, ladderTop(perRank, E * m * n, 0, opts.ratio), opts),
        perRank,
        dense: E * m * n,
        fixed: 0,
        weight: 1,
        minRank: 1,
      },
    ];
  },
  *units(c) {
    const Ws = c.experts.map((_, j) => c.W64(j));
    const Gs = c.calibrated ? Ws.map((_, j) => c.measureG(j)!) : undefined;
    yield { ...c.units[0]!, tokens: c.tokens, weights: Ws, grams: Gs };
  },
  factorize(u, opts) {
    const { m, n } = u;
    const E = u.weights.length;
    return factorizeSharedOutput(u.weights, m, n, u.grams, opts.engine, ladderTop(m + E * n, E * m * n, 0, opts.ratio), factorOptions(opts));
  },
  // every expert's weights, their whitened concatenation [m, E n] and one whitening factor at a time
  memory: (c) => factorisationParts(c.units, (u) => workspaceBytes(u, u.experts.length * u.m * u.n, [u.m, u.experts.length * u.n], u.n * u.n), c.threads),
};
