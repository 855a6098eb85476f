/**
 * Estimated peak memory of `moe quantize`, from shapes alone: the phases and quantize's own working set (the
 * quantizer's part from its descriptor, methods.ts); the engine adds the shared terms (src/pipeline/memory.ts).
 *
 * Two phases never overlap in time, so the peak is the larger of the two:
 * - scoring (when widths are chosen by scores and no --plan is given): the streamed forward pass with every
 *   expert of a layer loaded, the routed tokens copied per expert, and GPTQ's float64 Hessians (scoring keeps the
 *   prepared factors of both inputs of an expert alive while quantizing it at each width);
 * - apply + write (concurrent): the forward pass again when GPTQ needs activations, one expert's GPTQ working set,
 *   the dequantized experts of one layer when the pass is sequential, one layer of packed output waiting for the
 *   writer, round-to-nearest of the largest linear quantized at write time, and the writer's tensor in flight.
 */
import { DTYPE_BYTES } from '../io/dtype.js';
import { getQuantizer, type Method, type QuantizeMemoryContext } from './methods.js';
import type { MemoryPhase } from '../pipeline/memory.js';
import { currentThreads } from '../runtime/pool.js';
import type { MemoryPart } from '../runtime/memory.js';
import type { QuantBits } from '../../kernels/quant/types.js';
import { gptqTensorSpecs } from './format.js';
import { decisionBytesAt, type LinearDecision } from './plan.js';
import type { Model } from '../model/open.js';

const F32 = 4;
/**
 * Round-to-nearest of one [out, in] linear (kernels/quant/rtn.ts): on the JS side the float32 weights, the
 * backend's float32 codes, the uint8 codes and the packed bytes (about 9.5 bytes per weight); in the tensor
 * backend the weights and the five intermediates of one tidy (about 24), whose high-water mark the wasm heap keeps;
 * plus the read buffers. Fitted to measured peaks: with 40 bytes per weight the whole estimate is 0.90-0.94 of the
 * measured peak RSS for RTN of a 1 GB model (largest linear 2816 x 1024, bench/quantize-memory.ts) and about 1.1x
 * the 2.3 GB measured on the 20 GB checkpoint of docs/production.md (largest linear 14336 x 4096).
 */
const RTN_BYTES_PER_WEIGHT = 40;

export interface QuantizeMemoryInput {
  model: Model;
  decisions: readonly LinearDecision[];
  finalBits: (d: LinearDecision) => QuantBits | 'keep';
  groupSize: number;
  method: Method;
  /** calibration tokens and window length of the forward passes */
  tokens: number;
  seqLen: number;
  /** a scoring pass runs (widths chosen by scores, no --plan) */
  scoring: boolean;
  /** MoE layers whose experts GPTQ quantizes in the apply pass (empty: no forward pass to apply) */
  applyLayers: readonly number[];
  sequential: boolean;
}

export function quantizeMemoryPhases(i: QuantizeMemoryInput): MemoryPhase[] {
  const { model, decisions, finalBits, groupSize: gs } = i;
  const { hidden: H, topK } = model.view.dims;
  const pass = i.tokens > 0 ? { tokens: i.tokens, seqLen: i.seqLen, allExperts: true } : undefined;
  const routedCopy: MemoryPart = {
    label: `calibration tokens copied per routed expert (top-${topK} x ${i.tokens} x ${H} float32)`,
    bytes: topK * i.tokens * H * F32,
  };
  const mlp = decisions.filter((d) => d.cls === 'expert' || d.cls === 'shared');
  // the quantizer's own working set, from its descriptor; the experts of a layer are scored and quantized as tasks
  // on the worker pool, so each thread holds its own
  const quantizer = getQuantizer(i.method);
  const own = (phase: QuantizeMemoryContext['phase'], ds: readonly LinearDecision[]) =>
    quantizer.memory?.({ phase, threads: currentThreads(), inputs: ds.map((d) => d.ref.inFeatures) }) ?? [];

  // two phases never overlap in time: the peak is the larger (the scoring pass is listed first: it wins a tie)
  const phases: MemoryPhase[] = [];
  if (i.scoring && pass)
    phases.push({
      pass,
      parts: [
        routedCopy,
        ...own(
          'score',
          mlp.filter((d) => d.bits !== 'keep'),
        ),
      ],
    });

  const parts: MemoryPart[] = [];
  const apply = new Set(i.applyLayers);
  const applying = apply.size > 0 && pass !== undefined;
  if (applying) {
    const applied = mlp.filter((d) => apply.has(d.layer) && finalBits(d) !== 'keep');
    parts.push(routedCopy, ...own('apply', applied));
    let packed = 0;
    let deq = 0;
    for (const l of apply) {
      let p = 0;
      let q = 0;
      for (const d of applied) {
        if (d.layer !== l) continue;
        p += decisionBytesAt(d, finalBits(d) as QuantBits, gs);
        q += d.params * F32;
      }
      packed = Math.max(packed, p);
      deq = Math.max(deq, q);
    }
    parts.push({ label: 'one layer of packed GPTQ output waiting for the writer', bytes: packed });
    if (i.sequential) parts.push({ label: "the layer's dequantized experts handed back to the stream (float32)", bytes: deq });
    // resume state: the hidden states after the last layer are copied and saved while the next layer runs
    parts.push({ label: `resume state: one copy of the hidden states being saved (${i.tokens} x ${H} float32)`, bytes: i.tokens * H * F32 });
  }
  // linears quantized at write time: everything not quantized by the apply pass
  let rtnLargest = 0;
  let newLargest = 0;
  for (const d of decisions) {
    const b = finalBits(d);
    if (b === 'keep') continue;
    if (!(apply.has(d.layer) && (d.cls === 'expert' || d.cls === 'shared'))) rtnLargest = Math.max(rtnLargest, d.params);
    for (const s of gptqTensorSpecs(d.module, d.ref.outFeatures, d.ref.inFeatures, { bits: b, groupSize: gs, sym: false })) {
      newLargest = Math.max(newLargest, s.shape.reduce((a, x) => a * x, 1) * DTYPE_BYTES[s.dtype]);
    }
  }
  if (rtnLargest > 0)
    parts.push({
      label: "round-to-nearest at write time of the largest such linear (weights, codes and the tensor backend's intermediates)",
      bytes: rtnLargest * RTN_BYTES_PER_WEIGHT,
    });
  phases.push({ ...(applying ? { pass } : {}), parts, writer: { label: 'the writer: one tensor or copy piece in flight', largestNewBytes: newLargest } });
  return phases;
}
