/**
 * What quantize accepts as input: a checkpoint in full precision, or in a storage the loaders dequantize on read
 * (gpt_oss's MXFP4 experts, DeepSeek-V3's block-scaled FP8). A checkpoint already quantized by a method the output
 * writers do not read back as a source (GPTQ, AWQ, ...) is refused before any work: quantizing it would first fail
 * deep inside the plan (the modules it names are qweight/scales, not weights) after scoring had already run.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fail } from '../errors.js';
import { LOWRANK_FORMAT } from '../model/lowrank.js';

/** quant_method values whose weights the loaders read as float (src/model/load.ts, src/io/checkpoint.ts) */
const READ_AS_FLOAT = new Set(['mxfp4', 'fp8']);

export function refuseQuantized(config: Record<string, unknown>, dir: string): void {
  const qc = config.quantization_config as { quant_method?: unknown } | null | undefined;
  if (!qc || typeof qc !== 'object') return;
  const method = typeof qc.quant_method === 'string' ? qc.quant_method : 'unknown';
  if (READ_AS_FLOAT.has(method.toLowerCase())) return;
  fail(
    'InvalidData',
    `${dir} is already quantized (config.json quantization_config.quant_method '${method}'): quantize its full-precision source, or restore one with moe dequantize --model ${dir} --out DIR`,
  );
}

/** The same check from config.json alone (for the GGUF pipeline, before it opens the model); a config it cannot read is the loader's to report. */
export async function refuseQuantizedDir(dir: string): Promise<void> {
  let config: unknown;
  try {
    config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
  } catch {
    return;
  }
  if (config && typeof config === 'object') refuseQuantized(config as Record<string, unknown>, dir);
}

/**
 * A low-rank (factor) checkpoint (decompose without --materialize) is refused before any work: its expert linears
 * are factor tensors, not the per-expert weights the GPTQ plan addresses, and the run used to fail deep in the
 * write plan with an internal error.
 */
export function refuseFactors(config: Record<string, unknown>, dir: string): void {
  const sec = config.moe as { format?: unknown } | null | undefined;
  if (!sec || typeof sec !== 'object' || sec.format !== LOWRANK_FORMAT) return;
  fail(
    'InvalidData',
    `${dir} is a low-rank (factor) checkpoint (config.json moe section, model_type '${String(config.model_type)}'): quantize the --materialize output of the decompose that made it, or its full-precision source`,
  );
}
