/**
 * MoE-SVD / MoLE: one input basis per layer x projection shared by all experts, per-expert output factors; the
 * experts' stacked weights are whitened by one common Gram (the sum of theirs).
 */
import { factorizeSharedInput, factorRank } from '../factorize.js';
import { ladderTop } from '../unitshape.js';
import { type DecomposeModeMethod, factorisationParts, factorOptions, workspaceBytes } from './common.js';

export const sharedInput: DecomposeModeMethod = {
  name: 'shared-input',
  summary: 'one input basis per layer x projection shared by all experts, per-expert output factors; one common whitening',
  paper: 'MoE-SVD, MoLE',
  needs: 'forward',
  shapes({ layer, proj, m, n, E, opts }) {
    const perRank = n + E * m;
    return [
      {
        layer,
        proj,
        m,
        n,
        group: `L${layer}.${proj}`,
        id: `L${layer}.shared.${proj}`,
        kind: 'shared-input',
        experts: Array.from({ length: E }, (_, j) => j),
        maxRank: factorRank(E * m, n, ladderTop(perRank, E * m * n, 0, opts.ratio), opts),
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
    let Gsum: Float64Array | undefined;
    if (u.grams) {
      Gsum = new Float64Array(n * n);
      for (const G of u.grams) for (let i = 0; i < n * n; i++) Gsum[i]! += G[i]!;
    }
    return factorizeSharedInput(u.weights, m, n, Gsum, opts.engine, ladderTop(n + E * m, E * m * n, 0, opts.ratio), factorOptions(opts));
  },
  // every expert's weights, their stack [E m, n] and the common whitening factor
  memory: (c) => factorisationParts(c.units, (u) => workspaceBytes(u, u.experts.length * u.m * u.n, [u.experts.length * u.m, u.n], u.n * u.n), c.threads),
};
