/** What every quantizer of `moe quantize` is: a method descriptor with the traits the pipeline branches on. */
import type { MethodDescriptor } from '../../pipeline/descriptor.js';

/** What a quantizer's memory estimate sees (src/quantize/memory.ts): the phase, the worker threads, the linears. */
export interface QuantizeMemoryContext {
  /** the scoring pass (each unit quantized at every candidate width) or the apply pass */
  phase: 'score' | 'apply';
  /** worker threads: each runs one expert's working set */
  threads: number;
  /** input features of each linear the phase quantizes */
  inputs: readonly number[];
}

export interface Quantizer<N extends string = string> extends MethodDescriptor<QuantizeMemoryContext> {
  name: N;
  /**
   * true: each linear's rounding error is compensated through the Hessian of its routed inputs (GPTQ). Then the
   * method needs calibration text, an expert with fewer than --min-tokens routed tokens falls back to
   * round-to-nearest, and --sequential makes each layer's Hessians from the already-quantized layers before it.
   * The GPTQ format and GGUF pipelines branch on this trait, never on the method's name.
   */
  hessians: boolean;
  /**
   * --format gguf only: each routed expert's projection takes GPTQ or importance-weighted rounding, whichever gives
   * the lower output error of the expert on every holdEvery-th routed token (those tokens are left out of the
   * Hessian and the importance that make both, so the measure is held out); the other formats refuse it.
   */
  choice?: { holdEvery: number };
  /** the one-line refusal when no --calib is given (a method that needs calibration text) */
  missingCalibration?: string;
  /** the report's calibration.hessians text (`sequential`: the run's --sequential, after shards) */
  calibrationNote(sequential: boolean): string;
  /** extra lines of the report's text summary */
  reportLines?(sequential: boolean): string[];
}
