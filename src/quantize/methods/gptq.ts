/** GPTQ (Frantar et al.): columns quantized in order, each one's rounding error compensated on the rest. */
import type { MemoryPart } from '../../runtime/memory.js';
import type { QuantizeMemoryContext, Quantizer } from './common.js';

/**
 * GPTQ's preparation of one input of n features (kernels/quant/gptq.ts prepareGptq and
 * kernels/linalg/cholesky.ts upperCholeskyOfInverse): the Hessian, its damped copies, the reversed copy, the
 * Cholesky factor, its inverse and the upper factor, seven n x n float64 arrays at the high-water mark.
 */
const GPTQ_SQUARES = 7;

/** gate/up share the expert's input (hidden), down reads the intermediate: the larger input is prepared while the
 *  other's factor is still alive */
export function gptqWorkingSet(inputs: readonly number[]): number {
  let big = 0;
  let small = 0;
  for (const n of inputs) {
    if (n > big) {
      small = Math.max(small, big);
      big = n;
    } else if (n < big) small = Math.max(small, n);
  }
  return 8 * (GPTQ_SQUARES * big * big + small * small);
}

function gptqMemory(c: QuantizeMemoryContext): MemoryPart[] {
  const perThread = c.threads > 1 ? ` (one per worker thread, ${c.threads})` : '';
  return [
    c.phase === 'score'
      ? {
          label: `GPTQ scoring: float64 Hessians, Cholesky factor and inverse of the largest input, prepared factor of the other${perThread}`,
          bytes: c.threads * gptqWorkingSet(c.inputs),
        }
      : { label: `GPTQ: float64 Hessian, Cholesky factor and inverse of the largest input in flight${perThread}`, bytes: c.threads * gptqWorkingSet(c.inputs) },
  ];
}

export const gptq = {
  name: 'gptq',
  summary:
    "GPTQ: columns quantized in order, each one's error compensated on the rest through the Hessian of the expert's routed inputs; layers sequential through the quantized ones before them",
  paper: 'GPTQ, https://arxiv.org/abs/2210.17323',
  needs: 'sequential',
  memory: gptqMemory,
  hessians: true,
  missingCalibration: 'GPTQ needs calibration text for its Hessians: give --calib FILE (or --method rtn)',
  calibrationNote: (sequential) =>
    sequential
      ? 'per expert from the tokens routed to it; sequential: layer l sees activations from the already-quantized experts and shared experts of layers < l (attention and dense MLPs: round-to-nearest, full precision in the calibration stream)'
      : "per expert from the tokens routed to it; not sequential: every layer sees the full-precision model's activations (attention and dense MLPs: round-to-nearest)",
  reportLines: (sequential) => [
    `  GPTQ Hessians: ${sequential ? 'sequential (through the quantized earlier layers)' : 'not sequential (full-precision activations)'}`,
  ],
} as const satisfies Quantizer<'gptq'>;
