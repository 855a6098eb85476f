/**
 * The options of `moe quantize`, declared once (src/pipeline/fields.ts): the command line, recipe stages and
 * library calls are all validated by this schema and `checkQuantize`.
 */
import { z } from 'zod';
import { QUANT_BITS, type QuantBits } from '../../kernels/quant/types.js';
import { fail } from '../errors.js';
import { GGUF_CANDIDATES, isFloatCandidate, type GgufCandidate } from '../gguf/candidates.js';
import type { OptionSpec } from '../pipeline/descriptor.js';
import { common, field, int } from '../pipeline/fields.js';
import { getQuantizer, GRANULARITIES, METHOD_NAMES, OUTPUT_FORMAT_NAMES } from './methods.js';
import { ALLOCATABLE_CLASSES, compile, parseOverride } from './plan.js';
import { checkServeFlags, SERVE_TARGET_NAMES, serveTarget, type ServeTarget } from './targets.js';

export const DEFAULT_CANDIDATES: QuantBits[] = [2, 3, 4];
/**
 * --format gguf: the types measured as extending or lowering the frontier (docs/gguf.md, bench/gguf-frontier.ts):
 * the IQ2 types below Q2_K's 2.625 bpw and at 2.7 ("With the IQ2 types"), IQ3_XXS/IQ3_S/IQ4_XS from 3.5 bpw up ("With
 * the IQ types among the candidates"); on 128-wide rows every IQ type falls back to IQ4_NL like llama.cpp.
 */
export const DEFAULT_GGUF_CANDIDATES: GgufCandidate[] = ['iq2_xxs', 'iq2_xs', 'iq2_s', 'q2_k', 'iq3_xxs', 'q3_k', 'iq3_s', 'iq4_xs', 'q4_k', 'q5_k', 'q6_k'];
export const DEFAULT_MIN_TOKENS = 32;
/** -1: one group spanning every input column (channel-wise scales), as GPTQ and compressed-tensors spell it */
export const GROUP_SIZES = [-1, 32, 64, 128] as const;
/** a width, or (--format gguf) a ggml type name: the allocation's candidates and the dense linears' type */
const widthOrType = () => z.literal([...QUANT_BITS, ...GGUF_CANDIDATES] as unknown as [QuantBits | GgufCandidate, ...(QuantBits | GgufCandidate)[]]);

export const QUANTIZE_OPTIONS = z.object({
  model: common.model(),
  out: common.out(),
  bits: field(z.number().positive().optional(), {
    help: 'target true bits per weight of the routed experts (every stored byte counted); required unless --format gguf --candidates f16|bf16|f32',
    arg: 'b',
  }),
  method: field(z.enum(METHOD_NAMES).default('gptq'), { help: 'quantizer (see Methods below)', arg: 'm' }),
  format: field(z.enum(OUTPUT_FORMAT_NAMES).default('gptq'), { help: 'output format (see Formats below)', arg: 'name' }),
  granularity: field(z.enum(GRANULARITIES).optional(), {
    defaultText: 'expert (--serve vllm: layer)',
    help: "allocation unit: expert; projection (one projection of all experts of a layer: GGUF's unit; was 'layer' before 2026-12); layer (all experts and all three projections of a MoE layer: vLLM's fused-MoE unit)",
    arg: 'g',
  }),
  serve: field(z.enum(SERVE_TARGET_NAMES).optional(), {
    help: 'constrain everything to what this engine runs (src/quantize/targets.ts): vllm = one width per MoE layer among 4/8 bits, symmetric, its group sizes and shape rules; implied by --format compressed-tensors',
    arg: 'engine',
  }),
  tensorParallel: field(int(1).default(1), {
    help: "with --serve: the tensor-parallel size the output must load at (the shape rules apply to each rank's slice: vLLM splits every expert's intermediate dimension over the ranks)",
    arg: 'n',
  }),
  candidates: field(z.array(widthOrType()).nonempty().optional(), {
    help: 'bit-widths the allocation may choose, comma-separated; --format gguf: ggml types (iq2_xxs ... q8_0; 2/3/4/8 name q2_k/q3_k/q4_k/q8_0), or one of f16, bf16, f32 alone for the unquantized GGUF',
    arg: 'list',
    defaultText: `${DEFAULT_CANDIDATES.join(',')} (--format gguf: ${DEFAULT_GGUF_CANDIDATES.join(',')})`,
  }),
  allocate: field(z.array(z.enum(ALLOCATABLE_CLASSES)).default([]), {
    help: "also give these linear classes their own allocation units (repeatable): attention (a layer's attention linears), shared (a layer's shared expert), dense (a dense layer's MLP); their widths come from --candidates under the same --bits budget, which then counts their stored bytes and weights too (needs calibration data for their scores)",
    arg: 'class',
  }),
  denseBits: field(widthOrType().default(4), {
    help: 'bits of attention, dense MLP and shared-expert linears (--format gguf: a ggml type, or 2/3/4/8, and the byte budget those tensors share)',
    arg: 'b',
  }),
  groupSize: field(z.literal(GROUP_SIZES).default(128), { help: 'input columns per scale group; -1 = one scale per output row (channel-wise)', arg: 'n' }),
  sym: field(z.boolean().default(false), { help: 'symmetric quantization (zero point fixed at 2^(bits-1))' }),
  actOrder: field(z.boolean().default(false), {
    help: 'GPTQ act-order (desc_act): columns by decreasing Hessian diagonal, written as g_idx',
  }),
  damp: field(z.number().gt(0).lt(1).default(0.01), { help: 'GPTQ damping, fraction of the mean Hessian diagonal', arg: 'f' }),
  mixedDown: field(z.boolean().default(true), {
    help: 'expert units take only uniform widths (by default also a width with down_proj one candidate higher)',
  }),
  minTokens: field(int(0).default(DEFAULT_MIN_TOKENS), { help: 'experts routed fewer calibration tokens fall back to round-to-nearest', arg: 'n' }),
  override: field(z.array(z.string()).default([]), {
    help: 'fixed bits for matching linear modules (repeatable; applied before the allocation)',
    arg: 'regex=bits',
  }),
  ignore: field(z.array(z.string()).default([]), { help: 'leave matching linear modules unquantized (repeatable)', arg: 'regex' }),
  calib: common.calib(),
  calibIds: common.calibIds(),
  dropMtp: common.dropMtp(),
  calibTokens: common.calibTokens(),
  seqLen: common.seqLen(),
  solverTimeLimit: field(z.number().positive().optional(), { help: 'allocation solver time limit in seconds', arg: 's', defaultText: '20' }),
  backend: common.backend(),
  threads: common.threads(),
  savePlan: common.savePlan(
    "write the plan (every unit's width, every linear's bits, scores) to FILE after the allocation; with --dry-run nothing else is written",
  ),
  plan: common.plan(
    "apply a plan saved by --save-plan (same model and flags): no scoring pass, no allocation; with the same --calib the output is byte-identical to the saving run's",
  ),
  shard: common.shard(
    'layer-parallel job i of n: quantize and write only layers l with l % n = i (join the parts with moe assemble); needs --plan when widths are chosen by scores; implies --no-sequential for GPTQ',
  ),
  sequential: field(z.boolean().default(true), {
    help: "GPTQ Hessians from the full-precision model's activations instead of through the already-quantized earlier layers (layers independent; what --shard does)",
  }),
  dryRun: common.dryRun('print the plan (fates, allocation, sizes) and the estimated peak memory, write nothing'),
  force: common.force(),
});

export type QuantizeOptions = z.output<typeof QUANTIZE_OPTIONS>;

/** The serving target a run is constrained to: --serve, or vLLM for --format compressed-tensors (which implies it). */
export function servingTarget(o: Pick<QuantizeOptions, 'serve' | 'format'>): ServeTarget | undefined {
  if (o.serve) return serveTarget(o.serve);
  return o.format === 'compressed-tensors' ? serveTarget('vllm') : undefined;
}

/** The widths of a GPTQ-format run (checkQuantize refused type names and a missing --bits for it). */
export function gptqWidths(o: QuantizeOptions): { bits: number; candidates: QuantBits[]; denseBits: QuantBits } {
  const t = servingTarget(o);
  return { bits: o.bits!, candidates: (o.candidates ?? (t ? [...t.widths] : DEFAULT_CANDIDATES)) as QuantBits[], denseBits: o.denseBits as QuantBits };
}

/** Combinations, before any file is read. A dry run refuses what the real run refuses: it predicts that run. */
export function checkQuantize(o: QuantizeOptions): void {
  if (o.format === 'gguf') {
    if (o.serve) fail('Usage', `--serve ${o.serve} loads --format gptq or compressed-tensors, not --format gguf (llama.cpp serves GGUF as written)`);
    if (o.granularity) fail('Usage', '--granularity is not available with --format gguf: its unit is one tensor (layer x projection)');
    if (o.allocate.length)
      fail('Usage', '--allocate is not available with --format gguf: with --calib its attention, shared and dense tensors are allocated already');
    checkGgufQuantize(o);
    return;
  }
  const names = [...(o.candidates ?? []), o.denseBits].filter((c) => typeof c === 'string');
  if (names.length) fail('Usage', `ggml type names (${names.join(', ')}) are for --format gguf; --format ${o.format} takes widths ${QUANT_BITS.join(', ')}`);
  if (o.bits === undefined) fail('Usage', 'give --bits B (target bits per weight of the routed experts)');
  for (const s of o.override) parseOverride(s);
  for (const r of o.ignore) compile(r, '--ignore');
  if (!o.dryRun && !o.out) fail('Usage', 'give --out DIR (or --dry-run)');
  if (!o.calib) refuseWithoutCalibration(o.method);
  if (o.plan && o.savePlan) fail('Usage', 'give --plan FILE (apply a saved plan) or --save-plan FILE (write one), not both');
  const t = servingTarget(o);
  if (t) {
    checkServeFlags(t, {
      format: o.format,
      ...(o.candidates ? { candidates: o.candidates as number[] } : {}),
      denseBits: o.denseBits as number,
      groupSize: o.groupSize,
      ...(o.granularity ? { granularity: o.granularity } : {}),
      actOrder: o.actOrder,
      overrideBits: o.override.map((s) => parseOverride(s).bits),
      tensorParallel: o.tensorParallel,
    });
  } else if (o.tensorParallel !== 1) fail('Usage', '--tensor-parallel is a --serve rule (give --serve vllm or --format compressed-tensors)');
}

export const QUANTIZE_SPEC: OptionSpec<typeof QUANTIZE_OPTIONS> = { options: QUANTIZE_OPTIONS, check: checkQuantize };

/** A method that cannot run without calibration text says so in its own words (its descriptor's). */
function refuseWithoutCalibration(method: string): void {
  const why = getQuantizer(method).missingCalibration;
  if (why) fail('Usage', why);
}

/** --format gguf: llama.cpp's types, one per tensor; what GPTQ-format options have no meaning for is refused. */
function checkGgufQuantize(o: QuantizeOptions): void {
  const cands = o.candidates ?? DEFAULT_GGUF_CANDIDATES;
  const floats = cands.filter(isFloatCandidate);
  if (!o.dryRun && !o.out) fail('Usage', 'give --out DIR (or --dry-run)');
  if (floats.length && cands.length > 1)
    fail('Usage', `--candidates ${floats.join(',')} is the unquantized GGUF export and stands alone (got --candidates ${cands.join(',')})`);
  if (floats.length) {
    if (o.bits !== undefined) fail('Usage', `--bits has no meaning for the unquantized GGUF (--candidates ${floats[0]}): leave it out`);
  } else {
    if (o.bits === undefined)
      fail('Usage', 'give --bits B (target bits per weight of the routed experts) or --candidates f16|bf16|f32 for the unquantized GGUF');
    if (!o.calib) refuseWithoutCalibration(o.method);
  }
  const refuse = (flag: string, why: string) => fail('Usage', `${flag} is not available with --format gguf: ${why}`);
  if (o.shard) refuse('--shard', 'a GGUF is one file; quantize it in one job');
  if (o.plan || o.savePlan) refuse(o.plan ? '--plan' : '--save-plan', 'GGUF plans are not saved yet (the tensor-type list in --out records the choices)');
  if (o.actOrder) refuse('--act-order', 'a GGUF row stores its blocks in column order, with no permutation');
  if (o.sym) refuse('--sym', 'each ggml type fixes its own grid (symmetric or with an offset); choose types with --candidates');
  if (o.groupSize !== 128) refuse('--group-size', 'each ggml type fixes its block size (32 or 256 values)');
  if (o.override.length || o.ignore.length) refuse(o.override.length ? '--override' : '--ignore', 'per-tensor types come from the allocation and --dense-bits');
}
