/**
 * Calibration statistics: what one forward pass over calibration text tells every pipeline about its experts.
 * All fields are sums (not means), so statistics from different calibration shards add up exactly
 * (data-parallel calibration): means are taken when they are used.
 */

export const STATS_VERSION = 1;

export interface LayerStats {
  layer: number;
  numExperts: number;
  hidden: number;
  /** tokens that reached this layer */
  tokens: number;
  /** [E] tokens with expert j among the top-k (frequency = count / (tokens * k)) */
  count: Float64Array;
  /** [E] sum over all tokens of p_j(x) (router probability after scoring) */
  probMass: Float64Array;
  /** [E] sum over routed tokens of g_j(x), the weight the model applies */
  gateSum: Float64Array;
  /** [E] REAP: sum over routed tokens of g_j(x) * ||f_j(x)||_2 */
  reapSum: Float64Array;
  /** [E] EASY-EP: sum over routed tokens of g_j(x) * ||f_j(x)|| * max(1 - cos(h_before, h_after), 0) */
  easyEpSum: Float64Array;
  /** [E, H] sum over routed tokens of f_j(x) (mean output = outputSum / count) */
  outputSum: Float64Array;
  /** [S, E] a sample of router logits (first tokens seen), for router-logit similarity */
  logitSample: Float32Array;
  logitSampleRows: number;
}

export interface CalibStats {
  version: typeof STATS_VERSION;
  family: string;
  numLayers: number;
  numExperts: number;
  topK: number;
  hidden: number;
  /** calibration tokens scored per run, summed over merged runs */
  tokens: number;
  /** how many runs were summed */
  runs: number;
  /** modelFingerprint() of the model the statistics were computed on (absent in artifacts of earlier versions) */
  model?: string;
  layers: LayerStats[];
}
