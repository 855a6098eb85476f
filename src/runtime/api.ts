/**
 * The contract between the runtime (layer-streamed forward pass) and the pipelines.
 *
 * A forward pass over calibration windows runs one decoder layer at a time: the hidden states of all windows
 * ([T, H] float32, kept outside the tfjs heap) move from layer to layer, and only the current layer's weights are
 * loaded. At each MoE layer the runtime calls the pipeline's hook with what the block sees (its input after the
 * post-attention norm, the router logits, the experts chosen and their weights) before it computes the block's
 * output. The hook may replace the layer's expert weights (sequential GPTQ, pruning, merging); the replaced
 * weights are what the next layers see.
 */
import type { Model } from '../model/open.js';
import type { LayerView } from '../model/types.js';

/** One linear as float32 [out, in], row-major, with an optional bias [out]. */
// the value types live with the model (src/model/types.ts), so model/ never imports runtime/; re-exported here
export type { Linear, Routing, SwiGLUWeights } from '../model/types.js';
import type { Routing, SwiGLUWeights } from '../model/types.js';

/** What an MoE layer sees during a calibration forward pass. */
export interface MoeLayerInput {
  layer: LayerView;
  /** number of calibration tokens (all windows, BOS positions included) */
  T: number;
  hidden: number;
  /** [T, H] input of the MoE block (post-attention norm applied) */
  x: Float32Array;
  /** [T, E] router logits */
  logits: Float32Array;
  /** [T, E] router probabilities after the family's scoring (softmax or sigmoid), before selection */
  probs: Float32Array;
  routing: Routing;
  /** routed experts' weights as loaded (float32) */
  experts: SwiGLUWeights[];
  /** shared expert, if any, and its sigmoid gate row [H] */
  shared?: SwiGLUWeights & { gateWeight?: Float32Array };
  /** router weight [E, H], bias [E], selection bias [E] */
  router: { w: Float32Array; bias?: Float32Array; correctionBias?: Float32Array };
}

/** A hook's edit of an MoE layer: new experts and router for the rest of the forward pass. */
export interface MoeLayerEdit {
  experts?: SwiGLUWeights[];
  router?: { w: Float32Array; bias?: Float32Array; correctionBias?: Float32Array };
  shared?: SwiGLUWeights;
}

/**
 * Arrays passed to hooks are the runtime's working buffers: read them during the call (or copy them); the residual
 * stream in particular keeps changing as later layers run.
 */
export interface StreamHooks {
  onMoeLayer?(input: MoeLayerInput): Promise<MoeLayerEdit | void> | MoeLayerEdit | void;
  /**
   * onMoeLayer only edits the router (maskedEdit's -inf rows) and never recomputes experts on the block input x;
   * families whose routed weight scales the expert input (llama4: the experts see w * x) refuse any other onMoeLayer
   */
  routerOnly?: boolean;
  /**
   * onMoeLayer reads each routed expert's input as w * x (the slot weight times the block input) where the family's
   * rule says so (RoutingRule.weightsInput): decompose's Gram matrices do; such a hook is accepted for those families
   */
  weightedInputs?: boolean;
  /**
   * Replace the routing the block will apply (after onMoeLayer and its edits). Dynamic expert skipping sets a
   * slot's weight to exactly 0: the runtime then does not compute that token-expert pair.
   */
  onRouting?(layerIndex: number, routing: Routing, logits: Float32Array, probs: Float32Array): Routing | void;
  /** each routed expert's unweighted output f_j(x) [n, H] on the n tokens routed to it (rows of x, ascending) */
  onExpertOutput?(layerIndex: number, expert: number, tokens: Int32Array, slots: Int32Array, out: Float32Array): void;
  /**
   * after an MoE block: the routing applied, ||f_j(x)|| per slot [T, k], and the residual stream before and after
   * the block [T, H] (EASY-EP's cos(h_before, h_after))
   */
  onMoeLayerDone?(info: MoeLayerDone): Promise<void> | void;
  /**
   * inputs of linears whose input is not the block input x, for Gram matrices: 'attention.in' (q/k/v input, all
   * rows), 'attention.o_proj.in', 'mlp.in' and 'mlp.down.in' (dense layers: gate/up and down inputs), 'shared.down.in', 'experts.down.in' (with the expert
   * and the token rows). Called chunk by chunk: `rows` rows of `cols` values, starting at row r0 of the chunk's own
   * row space (token indices for experts are given in `tokens`).
   */
  onLinearInput?(info: LinearInput): void;
  /**
   * after a layer's attention: its output [T, H] (before the residual scale) and `rerun`, the same attention on the
   * same input with the given linears' weights (by tensor name) replaced; awaited before the layer goes on
   */
  onAttention?(info: AttentionDone): Promise<void> | void;
  /** called after each decoder layer with its output hidden states [T, H] (block drop scores, EASY-EP) */
  onLayerOutput?(layerIndex: number, hiddenBefore: Float32Array, hiddenAfter: Float32Array): Promise<void> | void;
}

export interface AttentionDone {
  layer: LayerView;
  T: number;
  output: Float32Array;
  /** residual_multiplier (granite), else 1: what the output is scaled by when added to the residual stream */
  residualScale: number;
  rerun(weights: ReadonlyMap<string, Float32Array>): Promise<Float32Array>;
}

export interface LinearInput {
  layer: number;
  role: 'attention.in' | 'attention.o_proj.in' | 'mlp.in' | 'mlp.down.in' | 'shared.down.in' | 'experts.down.in';
  expert?: number;
  x: Float32Array;
  rows: number;
  cols: number;
  r0: number;
  tokens?: Int32Array;
}

export interface MoeLayerDone {
  layer: LayerView;
  T: number;
  hidden: number;
  routing: Routing;
  /** [T, k] L2 norm of each slot's expert output (0 where the slot was skipped) */
  slotNorm: Float32Array;
  /** [T, H] input of the block (post-attention norm applied) */
  x: Float32Array;
  /** [T, H] residual stream entering the MoE block (after attention) and leaving it */
  residualIn: Float32Array;
  residualOut: Float32Array;
}

export interface StreamOptions {
  /** compute final-norm + lm_head log-likelihood of each window's next tokens (for eval) */
  scoreLogits?: boolean;
  onProgress?(layerIndex: number, layers: number): void;
  /** return the final-norm hidden states [T, H] (for comparisons against a base model's) */
  returnHidden?: boolean;
  /** stop after this decoder layer (its hooks and block run; later layers, the final norm and the head do not),
   *  for a job that needs only the first layers' activations (quantize --shard); nll and hidden are then not set */
  stopAfterLayer?: number;
  /**
   * Resume a pass killed part-way (quantize's apply pass). restore() runs once at the start: a state
   * {after, hidden} skips the embedding and decoder layers <= after and starts at layer after+1 from those hidden
   * states [T, H] (onProgress still counts the skipped layers as done). save(l, h) is awaited after each decoder
   * layer l once all its hooks are done; h is the working buffer (copy it to keep it past the call). Not called
   * after the last layer run (the pass is over).
   */
  checkpoint?: StreamCheckpoint;
  /**
   * also run the model's multi-token-prediction layers (view.mtp) after the decoder layers, on their own inputs,
   * with the same hooks (layer index L + i); for calibration statistics of the MTP layers' experts
   */
  mtp?: boolean;
}

export interface StreamCheckpoint {
  restore(): Promise<{ after: number; hidden: Float32Array } | undefined>;
  save(after: number, hidden: Float32Array): Promise<void>;
}

export interface StreamResult {
  /** sum of negative log-likelihood over scored tokens, and their count (0 unless scoreLogits) */
  nll: number;
  scored: number;
  /** final-norm hidden states [T, H] when returnHidden */
  hidden?: Float32Array;
  /** routed token-expert pairs computed, and the pairs routing chose (they differ when slots were skipped) */
  expertCalls: number;
  expertSlots: number;
}

/**
 * Windows are the token sequences as fed to the model (BOS included when the tokenizer has one), all of one length.
 * With scoreLogits, position i's logits are scored against token i+1 of the same window.
 */
export type StreamModel = (model: Model, windows: readonly Int32Array[], hooks?: StreamHooks, opts?: StreamOptions) => Promise<StreamResult>;
