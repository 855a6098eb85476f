/**
 * GPTQ or rounding, chosen per tensor by the error that matters: the expert's output error through its MLP on
 * routed calibration tokens held back from the Hessian (--format gguf only; src/gguf/choice.ts).
 */
import { gptq } from './gptq.js';
import type { Quantizer } from './common.js';

export const auto = {
  ...gptq,
  name: 'auto',
  summary:
    "--format gguf: each expert projection written by GPTQ or by llama.cpp's importance-weighted rounding, whichever gives the lower expert output error (through the SwiGLU) on every 4th routed calibration token, held back from the Hessian; other tensors GPTQ",
  missingCalibration: 'auto measures GPTQ and the rounding on calibration tokens: give --calib FILE (or --method rtn)',
  choice: { holdEvery: 4 },
} as const satisfies Quantizer<'auto'>;
