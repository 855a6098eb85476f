/**
 * `moe quantize --format gguf`: llama.cpp's own block types, one per tensor, chosen by our 0/1 program and
 * written with GPTQ's error compensation. score -> plan -> apply -> write -> report:
 *
 * - score (one calibration pass, full precision): every allocation unit is quantized at each of its options with
 *   the quantizer that will be applied (GPTQ into the block format, or importance-weighted rounding), and its loss
 *   is the squared output error it causes per calibration token. Units are the tensors llama.cpp gives one type:
 *   each layer's routed experts of one projection (`blk.L.ffn_{gate,up,down}_exps`, each expert quantized from the
 *   tokens routed to it; loss = sum over experts and their tokens of g^2 ||f_q(x) - f(x)||^2 with only that
 *   projection quantized), and the attention, shared-expert and dense tensors whose inputs the runtime exposes
 *   (loss = tr(dW H dW^T), the linear's own output error; the shared expert's through its MLP and gate).
 *   The same pass collects the importance matrix (column sums of squares of each tensor's inputs).
 * - plan: the options of a unit are the distinct types its candidates become after llama.cpp's fallback for rows
 *   that are not whole blocks (llama-quant.cpp tensor_type_fallback: a 128-wide Q4_K tensor is written Q5_0), each
 *   costing that type's exact bytes. Two 0/1 programs (src/alloc/knapsack.ts): the routed experts within
 *   --bits x their weights / 8 bytes, and the other units within the bytes they take at --dense-bits' type. The
 *   embedding takes --dense-bits' type, the output Q6_K (llama.cpp's rule for k-quant mixes; Q8_0 when its rows
 *   are not whole 256-blocks), tensors without calibrated inputs --dense-bits' type.
 * - apply (GPTQ): a second pass, sequential by default (each layer's experts quantized on the activations of the
 *   already-quantized layers before it, and seen quantized by the layers after); attention tensors from the
 *   Hessians of the same stream (the runtime does not take edited attention weights, so those stay full precision
 *   in the stream), the output from the final hidden states. Experts routed fewer than --min-tokens tokens take
 *   importance-weighted rounding. With --method rtn every tensor takes importance-weighted rounding. With --method auto
 *   each routed (and shared) expert's projection takes GPTQ or the rounding, both made from 3 of every 4 routed
 *   tokens, whichever gives the lower output error of the expert on the 4th (src/gguf/choice.ts); the scoring pass
 *   makes the same choice at each option, so an option's loss is that of the encoding that would be written.
 * - write: DIR/model.gguf, tensor by tensor as the pass produces each layer (about one layer in memory), beside
 *   the report, the --tensor-type list and the importance matrix in llama-imatrix's GGUF format, so that
 *   `llama-quantize --imatrix imatrix.gguf --tensor-type-file tensor-types.txt model-f16.gguf out.gguf Q4_K_M`
 *   makes the same type choices with llama.cpp's own quantizer.
 */
import { calibFormat } from '../pipeline/fields.js';
import { writeFile } from 'node:fs/promises';
import type { Progress } from '../progress.js';
import { loadWindowSet } from '../data/windows.js';
import { fail } from '../errors.js';
import { OutputDir } from '../io/output.js';
import { openModel, type Model } from '../model/open.js';
import type { ActivationSpec } from '../model/types.js';
import { allocate, type AllocResult } from '../alloc/knapsack.js';
import type { LinearInput, MoeLayerInput, SwiGLUWeights } from '../runtime/api.js';
import { initBackend } from '../runtime/backend.js';
import { setThreads } from '../runtime/pool.js';
import { streamModel } from '../runtime/stream.js';
import { checkModelOptions } from '../pipeline/validate.js';
import { LayerHandoff } from '../pipeline/handoff.js';
import { activate, linearT, mlpForward, outputError } from '../quantize/expert.js';
import { compensates, getQuantizer, type Method } from '../quantize/methods.js';
import { DEFAULT_GGUF_CANDIDATES, type QuantizeOptions } from '../quantize/options.js';
import { accumulateHessian, prepareGptq } from '../../kernels/quant/gptq.js';
import { hessianErrorTf } from '../../kernels/ggml/gptq.js';
import { chooseEncoding, fitInput, heldGates, holdBack, type Encoding } from './choice.js';
import { diagOf, encodeMatrix, hessianOf, withWeight, type Quantizer } from './encode.js';
import { ggufArchOf, ggufTensors, type GgufSourceTensor } from './arch.js';
import { ggmlTypeOf, isFloatCandidate } from './candidates.js';
import {
  blockEncoders,
  exportGguf,
  fittingType,
  GGUF_FILE,
  GGUF_REPORT_FILE,
  ggufMetadata,
  summarize,
  writeModelGguf,
  type FloatType,
  type GgufExportReport,
  type GgufPlanEntry,
  type GgufSummary,
} from './export.js';
import { ggmlTensorBytes, LLAMA_FTYPE, type GgmlType } from './format.js';
import { IMATRIX_FILE, ImatrixCollector, importanceOf, writeImatrix, type ImatrixEntry } from './imatrix.js';
import type { GgufOption, GgufProgramReport, GgufQuantizeReport } from './quantize-report.js';
import { formatTensorTypes, TENSOR_TYPES_FILE } from './tensortypes.js';
import { layoutGguf } from './writer.js';
import { routedTokens, sharedGates, type Routed } from '../quantize/routed.js';

async function writeText(path: string, text: string): Promise<void> {
  try {
    await writeFile(path, text);
  } catch (e) {
    fail('OutputError', `cannot write ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export type GgufQuantizeRequest = QuantizeOptions & { progress?: Progress };

/** llama.cpp's output type for k-quant mixes (llama-quant.cpp: Q6_K; Q8_0 when the rows are not whole blocks) */
const OUTPUT_TYPE: GgmlType = 'Q6_K';

export { encodeMatrix } from './encode.js';
export type { GgufOption, GgufProgramReport, GgufQuantizeReport, GgufUnitReport } from './quantize-report.js';

/** The source of a tensor's inputs in the runtime's hooks (LinearInput roles), for Hessians and the imatrix. */
function inputSource(t: GgufSourceTensor): string | undefined {
  const m = /^blk\.(\d+)\.([a-z_]+)\.weight$/.exec(t.name);
  if (!m) return t.name === 'output.weight' ? 'output.in' : undefined;
  const [, l, what] = m;
  switch (what) {
    case 'attn_q':
    case 'attn_k':
    case 'attn_v':
    case 'attn_q_a':
    case 'attn_kv_a_mqa':
      return `${l}:attention.in`;
    case 'attn_output':
      return `${l}:attention.o_proj.in`;
    case 'ffn_gate_exps':
    case 'ffn_up_exps':
      return `${l}:experts.in`;
    case 'ffn_down_exps':
      return `${l}:experts.down.in`;
    case 'ffn_gate_shexp':
    case 'ffn_up_shexp':
      return `${l}:shared.in`;
    case 'ffn_down_shexp':
      return `${l}:shared.down.in`;
    case 'ffn_down':
      return `${l}:mlp.down.in`;
    default:
      return undefined;
  }
}

/** The distinct types a tensor can take for the requested ones (after llama.cpp's fallback), cheapest first. */
export function typeOptions(ne: readonly number[], requested: readonly GgmlType[]): Omit<GgufOption, 'loss'>[] {
  const by = new Map<GgmlType, GgmlType[]>();
  for (const r of requested) {
    const eff = fittingType(r, ne[0]!).type;
    const l = by.get(eff);
    if (l) l.push(r);
    else by.set(eff, [r]);
  }
  return [...by]
    .map(([type, req]) => ({ type, requested: req, bytes: ggmlTensorBytes(type, ne) }))
    .sort((a, b) => a.bytes - b.bytes || a.type.localeCompare(b.type));
}

/** Hessians of the linears' inputs the runtime reports (q/k/v input, o_proj input, dense down input). */
class InputHessians {
  private readonly h = new Map<string, { h: Float64Array; cols: number }>();
  constructor(
    private readonly want: ReadonlySet<string>,
    private readonly im?: ImatrixCollector,
    /** false: only the importance matrix is wanted */
    private readonly keep = true,
  ) {}
  onLinearInput = (info: LinearInput): void => {
    const key = `${info.layer}:${info.role}`;
    if (!this.want.has(key)) return;
    const x = info.x.length === info.rows * info.cols ? info.x : info.x.subarray(0, info.rows * info.cols);
    this.im?.add(key, x, info.rows, info.cols);
    if (!this.keep) return;
    let e = this.h.get(key);
    if (!e) this.h.set(key, (e = { h: new Float64Array(info.cols * info.cols), cols: info.cols }));
    accumulateHessian(e.h, x, info.rows, info.cols);
  };
  take(key: string): Float64Array | undefined {
    const e = this.h.get(key);
    this.h.delete(key);
    return e?.h;
  }
}

interface Unit {
  t: GgufSourceTensor;
  program: 'experts' | 'dense';
  options: Omit<GgufOption, 'loss'>[];
  loss: Float64Array;
  source?: string;
}

export async function quantizeGguf(req: GgufRequestLike, t0 = performance.now()): Promise<GgufQuantizeReport | (GgufExportReport & { dryRun: boolean })> {
  const cands = req.candidates ?? DEFAULT_GGUF_CANDIDATES;
  if (cands.length === 1 && isFloatCandidate(cands[0]!)) {
    const type = ggmlTypeOf(cands[0]!) as FloatType;
    const r = await exportGguf({
      model: req.model,
      out: req.out ?? '(dry run)',
      type,
      force: req.force,
      dryRun: req.dryRun,
      ...(req.progress ? { progress: req.progress } : {}),
    });
    return { ...r, dryRun: req.dryRun };
  }
  const model = await openModel(req.model);
  try {
    checkModelOptions(req, model.view);
    return await run(model, req, t0);
  } finally {
    await model.ckpt.close();
  }
}

type GgufRequestLike = GgufQuantizeRequest;

async function run(model: Model, req: GgufRequestLike, t0: number): Promise<GgufQuantizeReport> {
  const { view } = model;
  if (view.moeLayers.length === 0) fail('UnsupportedArchitecture', `${req.model} has no MoE layers: nothing to allocate`);
  const types = [...new Set((req.candidates ?? DEFAULT_GGUF_CANDIDATES).map(ggmlTypeOf))];
  const denseType = ggmlTypeOf(req.denseBits);
  const method = req.method as Method;
  const hessians = getQuantizer(method).hessians;
  const bits = req.bits!;
  const calibrated = !!req.calib;
  const tensors = ggufTensors(model);
  const L = view.layers.length;
  const denseTypes = [...new Set([...types, denseType, 'Q8_0' as GgmlType])];

  // ---- units and fixed tensors
  const units: Unit[] = [];
  const fixed = new Map<string, { type: GgmlType; reason: string }>();
  for (const t of tensors) {
    if (t.f32) continue;
    const src = inputSource(t);
    if (t.cls === 'expert') {
      units.push({ t, program: 'experts', options: typeOptions(t.ne, types), loss: new Float64Array(0), ...(src ? { source: src } : {}) });
    } else if (calibrated && src && (t.cls === 'attn' || t.cls === 'shared' || t.cls === 'dense')) {
      units.push({ t, program: 'dense', options: typeOptions(t.ne, denseTypes), loss: new Float64Array(0), source: src });
    } else {
      const want = t.cls === 'output' ? OUTPUT_TYPE : denseType;
      const f = fittingType(want, t.ne[0]!);
      const type = t.cls === 'output' && f.type !== want && t.ne[0]! % 32 === 0 ? 'Q8_0' : f.type;
      const why = t.cls === 'output' ? `output: ${want} (llama.cpp's k-quant rule)` : `--dense-bits ${denseType.toLowerCase()}`;
      fixed.set(t.name, { type, reason: type === want ? why : `${why}; rows of ${t.ne[0]} are not whole ${want} blocks: ${type}` });
    }
  }
  for (const u of units) u.loss = new Float64Array(u.options.length);
  const experts = units.filter((u) => u.program === 'experts');
  const denseUnits = units.filter((u) => u.program === 'dense');
  const numel = (ne: readonly number[]) => ne.reduce((a, b) => a * b, 1);
  const expertParams = experts.reduce((a, u) => a + numel(u.t.ne), 0);
  const limit = Math.floor((bits * expertParams) / 8);
  const minB = experts.reduce((a, u) => a + u.options[0]!.bytes, 0);
  const maxB = experts.reduce((a, u) => a + u.options[u.options.length - 1]!.bytes, 0);
  const bpw = (b: number) => ((8 * b) / expertParams).toFixed(4);
  const list = types.map((t) => t.toLowerCase()).join(',');
  if (minB > limit)
    fail(
      'ImpossibleBudget',
      `--bits ${bits} is below the smallest GGUF size of the routed experts with --candidates ${list}: ${bpw(minB)} bpw (largest ${bpw(maxB)}; rows that are not whole 256-blocks take llama.cpp's 32-block fallbacks)`,
    );
  const choose = experts.some((u) => u.options.length > 1);
  if (choose && !calibrated)
    fail(
      'Usage',
      `choosing types among --candidates ${list} needs calibration text to measure errors: give --calib FILE, or one candidate type with --method rtn`,
    );
  if (choose && 8 * maxB < bits * expertParams - 8)
    fail(
      'ImpossibleBudget',
      `--bits ${bits} is above the largest GGUF size of the routed experts with --candidates ${list}: ${bpw(maxB)} bpw; give --bits at most that, or wider --candidates`,
    );
  const denseLimit = denseUnits.reduce((a, u) => a + typeOptions(u.t.ne, [denseType])[0]!.bytes, 0);

  // fail early on an existing output, before any pass
  const dir = req.dryRun ? undefined : await OutputDir.create(req.out!, { force: !!req.force, inputDir: req.model });
  try {
    await initBackend(req.backend);
    if (req.threads !== undefined) await setThreads(req.threads);
    const progress = req.progress;
    let windows: Int32Array[] | undefined;
    let T = 0;
    if (calibrated) {
      const set = await loadWindowSet(req.model, req.calib!, { seqLen: req.seqLen, maxTokens: req.calibTokens, format: calibFormat(req) });
      windows = set.windows;
      T = windows.reduce((a, w) => a + w.length, 0);
    }
    const act = view.forward.activation;
    const byName = new Map(units.map((u) => [u.t.name, u]));
    const imatrix = new ImatrixCollector();
    const sourceOf = new Map<string, string>();
    for (const t of tensors) {
      const s = !t.f32 ? inputSource(t) : undefined;
      if (s) sourceOf.set(t.name, s);
    }
    const hessianKeys = new Set([...sourceOf.values()].filter((k) => /:(attention\.in|attention\.o_proj\.in|mlp\.down\.in)$/.test(k)));
    const settings = { method, minTokens: req.minTokens, damp: req.damp };

    // ---- score (and collect the importance matrix)
    const scoring = choose || denseUnits.some((u) => u.options.length > 1);
    const statsPass = windows && (scoring || !hessians);
    const tScore = performance.now();
    if (statsPass) {
      const ph = progress?.phase(scoring ? 'scoring each tensor at each candidate type' : 'collecting the importance matrix');
      const hess = new InputHessians(hessianKeys, imatrix, scoring);
      await streamModel(
        model,
        windows!,
        {
          onLinearInput: hess.onLinearInput,
          onMoeLayer: (inp) => scoreMoeLayer(inp, { byName, imatrix, T, act, settings, score: scoring }),
          onLayerOutput: async (l) => {
            if (!scoring) return;
            for (const key of [...hessianKeys].filter((k) => k.startsWith(`${l}:`))) {
              const h = hess.take(key);
              if (!h) continue;
              for (const u of denseUnits.filter((d) => d.source === key && d.options.length > 1)) {
                const w = await u.t.load();
                const [inF, out] = u.t.ne as [number, number];
                const q: Quantizer = hessians ? { prep: prepareGptq(h, inF, { damp: req.damp }), imp: diagOf(h, inF) } : { imp: diagOf(h, inF) };
                u.options.forEach((o, oi) => {
                  const e = encodeMatrix(o.type, w, out, inF, q);
                  u.loss[oi] = hessianErrorTf(w, e.deq, out, inF, h) / T;
                });
              }
            }
          },
        },
        { onProgress: (l) => ph?.tick(l, L, 'layers'), returnHidden: true },
      ).then((r) => {
        const out = tensors.find((t) => t.name === 'output.weight');
        if (out && r.hidden) imatrix.add('output.in', r.hidden, T, out.ne[0]!);
      });
      ph?.succeed(scoring ? `scored ${units.filter((u) => u.options.length > 1).length} tensors` : 'importance matrix collected');
    }
    const scoreMs = statsPass ? performance.now() - tScore : 0;

    // ---- plan: two 0/1 programs
    const solve = async (us: Unit[], budget: number, what: string): Promise<AllocResult> =>
      allocate(
        us.map((u) => ({ id: u.t.name, options: u.options.map((o, oi) => ({ cost: o.bytes, loss: u.loss[oi]!, label: o.type })) })),
        budget,
        {
          describeCost: (c) => `${c} bytes (${what})`,
          ...(req.solverTimeLimit ? { timeLimitSec: req.solverTimeLimit } : {}),
        },
      );
    const exp = await solve(experts, limit, 'routed experts');
    const den = denseUnits.length ? await solve(denseUnits, denseLimit, `the other tensors at ${denseType}`) : undefined;
    const chosen = new Map<string, { type: GgmlType; reason: string }>(fixed);
    const note = (u: Unit, oi: number) => {
      const o = u.options[oi]!;
      const asked = o.requested.includes(o.type) ? '' : ` (${o.requested.join('/')} on rows of ${u.t.ne[0]}: llama.cpp's fallback)`;
      chosen.set(u.t.name, { type: o.type, reason: `allocation${u.program === 'dense' ? ' (non-expert tensors)' : ''}: ${o.type}${asked}` });
    };
    experts.forEach((u, i) => note(u, exp.choice[i]!));
    denseUnits.forEach((u, i) => note(u, den!.choice[i]!));
    const typeOf = (t: GgufSourceTensor) => chosen.get(t.name)!;
    // general.file_type: the type of most expert weights
    const weightBy = new Map<GgmlType, number>();
    for (const u of experts) weightBy.set(typeOf(u.t).type, (weightBy.get(typeOf(u.t).type) ?? 0) + numel(u.t.ne));
    const fileType = [...weightBy].sort((a, b) => b[1] - a[1]).find(([t]) => LLAMA_FTYPE[t] !== undefined)?.[0] ?? 'F16';
    const plan: GgufPlanEntry[] = tensors.map((t) => {
      const { type, reason } = t.f32 ? { type: 'F32' as GgmlType, reason: 'F32 by rule (1-D, norm, router or bias)' } : typeOf(t);
      return { tensor: t, type, bytes: ggmlTensorBytes(type, t.ne), reason };
    });
    const expertBytes = experts.reduce((a, u) => a + ggmlTensorBytes(typeOf(u.t).type, u.t.ne), 0);

    // ---- apply and write
    const fallbacks: GgufQuantizeReport['fallbacks'] = [];
    const encodings = new Map<string, Record<Encoding, number>>();
    const tally = (tensor: string, by: Encoding) => {
      let t = encodings.get(tensor);
      if (!t) encodings.set(tensor, (t = { gptq: 0, rounding: 0 }));
      t[by]++;
    };
    let fileBytes: number;
    let tokenizerNote: string;
    const tApply = performance.now();
    const files: string[] = [];
    if (!dir) {
      const { metadata, tokenizerNote: tn } = await ggufMetadata(model, fileType);
      fileBytes = layoutGguf(
        metadata,
        plan.map((e) => ({ name: e.tensor.name, type: e.type, ne: e.tensor.ne })),
      ).totalBytes;
      tokenizerNote = tn;
    } else {
      const imEntries = (): Map<string, ImatrixEntry> => imatrix.named(sourceOf);
      const importance = new Map<string, Float32Array>();
      const imFor = (t: GgufSourceTensor) => {
        if (!importance.has(t.name)) {
          const e = imEntries().get(t.name);
          if (e) importance.set(t.name, importanceOf(e));
        }
        return importance.get(t.name);
      };
      const produced = new Map<string, Uint8Array>();
      const fromPass = new Set<string>();
      const gptq = hessians && !!windows;
      if (gptq) for (const t of tensors) if (!t.f32 && (t.cls === 'expert' || (sourceOf.has(t.name) && t.cls !== 'embed'))) fromPass.add(t.name);
      const handoff = new LayerHandoff();
      const layerOf = (t: GgufSourceTensor) => t.layer ?? (t.name === 'token_embd.weight' ? -1 : L);
      const ph = progress?.phase(`${gptq ? 'quantizing (gptq) and writing' : 'quantizing and writing'} ${req.out}/${GGUF_FILE}`);
      const apply = async () => {
        if (!gptq) return;
        const hess = new InputHessians(hessianKeys, statsPass ? undefined : imatrix);
        const passUnits = new Map(tensors.filter((t) => fromPass.has(t.name)).map((t) => [t.name, t]));
        const produceAttention = async (l: number) => {
          for (const key of [...hessianKeys].filter((k) => k.startsWith(`${l}:`))) {
            const h = hess.take(key);
            for (const [name, t] of passUnits) {
              if (sourceOf.get(name) !== key) continue;
              const [inF, out] = t.ne as [number, number];
              const q: Quantizer = h ? { prep: prepareGptq(h, inF, { damp: req.damp }), imp: diagOf(h, inF) } : {};
              produced.set(name, encodeMatrix(typeOf(t).type, await t.load(), out, inF, q).bytes);
            }
          }
        };
        const r = await streamModel(
          model,
          windows!,
          {
            onLinearInput: hess.onLinearInput,
            onMoeLayer: async (inp) => {
              await handoff.consumerAt(inp.layer.index);
              const edit = applyMoeLayer(inp, {
                typeOf: (n) => chosen.get(n)?.type,
                imatrix: statsPass ? undefined : imatrix,
                act,
                settings,
                fallbacks,
                tally,
              });
              for (const [n, b] of edit.bytes) produced.set(n, b);
              if (req.sequential) return { experts: edit.experts, ...(edit.shared ? { shared: edit.shared } : {}) };
            },
            onLayerOutput: async (l) => {
              if (view.layers[l]!.block.kind !== 'moe') await handoff.consumerAt(l);
              await produceAttention(l);
              handoff.publish(l);
            },
          },
          { returnHidden: true },
        );
        const out = passUnits.get('output.weight');
        if (out && r.hidden) {
          const [inF, rows] = out.ne as [number, number];
          if (!statsPass) imatrix.add('output.in', r.hidden, T, inF);
          const h = hessianOf(r.hidden, T, inF);
          produced.set(
            out.name,
            encodeMatrix(typeOf(out).type, await out.load(), rows, inF, { prep: prepareGptq(h, inF, { damp: req.damp }), imp: diagOf(h, inF) }).bytes,
          );
        }
        handoff.publish(L);
        handoff.close();
      };
      const write = async () => {
        const r = await writeModelGguf(model, dir.path(GGUF_FILE), plan, {
          fileType,
          encoders: blockEncoders(imFor),
          produce: async (t) => {
            handoff.reached(layerOf(t));
            if (!fromPass.has(t.name)) return undefined;
            await handoff.take(layerOf(t));
            const b = produced.get(t.name);
            produced.delete(t.name);
            if (!b) fail('ComputeError', `internal: the apply pass produced no bytes for ${t.name}`);
            return b;
          },
          onTensor: (d, n) => ph?.tick(d, n, 'tensors'),
        });
        handoff.finish();
        return r;
      };
      const [a, w] = await Promise.allSettled([
        apply().catch((e) => {
          handoff.fail(e);
          throw e;
        }),
        write().catch((e) => {
          handoff.fail(e);
          throw e;
        }),
      ]);
      if (a.status === 'rejected' || w.status === 'rejected') {
        ph?.fail();
        throw handoff.error ?? (a.status === 'rejected' ? a.reason : (w as PromiseRejectedResult).reason);
      }
      ph?.succeed(`wrote ${req.out}/${GGUF_FILE}`);
      fileBytes = w.value.fileBytes;
      tokenizerNote = w.value.tokenizerNote;
      files.push(GGUF_FILE);
      // the choices as llama-quantize's --tensor-type-file, and the importance matrix it reads with --imatrix
      const listed = plan.filter((e) => quantizableByLlama(e.tensor));
      await writeText(dir.path(TENSOR_TYPES_FILE), formatTensorTypes(listed.map((e) => ({ name: e.tensor.name, type: e.type }))));
      files.push(TENSOR_TYPES_FILE);
      if (windows) {
        await writeImatrix(dir.path(IMATRIX_FILE), {
          entries: imEntries(),
          datasets: [req.calib!],
          chunkCount: windows.length,
          chunkSize: windows[0]?.length ?? 0,
        });
        files.push(IMATRIX_FILE);
      }
    }
    const applyMs = performance.now() - tApply;
    const prog = (us: Unit[], r: AllocResult, lim: number): GgufProgramReport => ({
      units: us.length,
      limitBytes: lim,
      usedBytes: r.cost,
      loss: r.loss,
      optimal: r.optimal,
      gap: r.gap,
      solveMs: r.solveMs,
    });
    const summary: GgufSummary = summarize(plan, GGUF_FILE, fileBytes);
    const report: GgufQuantizeReport = {
      format: 'gguf',
      model: req.model,
      out: req.out ?? '(dry run)',
      dryRun: req.dryRun,
      architecture: ggufArchOf(view).arch,
      fileType,
      tokenizer: tokenizerNote,
      method,
      targetBits: bits,
      expertBpw: (8 * expertBytes) / expertParams,
      candidates: types,
      denseType,
      scored: !!statsPass && scoring,
      sequential: hessians && req.sequential,
      calibTokens: T,
      programs: { experts: prog(experts, exp, limit), ...(den ? { dense: prog(denseUnits, den, denseLimit) } : {}) },
      units: units.map((u) => ({
        tensor: u.t.name,
        cls: u.t.cls,
        program: u.program,
        choice: typeOf(u.t).type,
        options: u.options.map((o, oi) => ({ ...o, loss: u.loss[oi]! })),
        ...(encodings.has(u.t.name) ? { encodings: encodings.get(u.t.name)! } : {}),
      })),
      ...(getQuantizer(method).choice
        ? {
            encodings: [...encodings.values()].reduce((a, t) => ({ gptq: a.gptq + t.gptq, rounding: a.rounding + t.rounding }), { gptq: 0, rounding: 0 }),
          }
        : {}),
      fallbacks,
      summary,
      tensors: plan.map((e) => ({ name: e.tensor.name, ne: e.tensor.ne, type: e.type, bytes: e.bytes, reason: e.reason })),
      files: dir ? [...files, GGUF_REPORT_FILE] : [],
      scoreMs,
      applyMs,
      seconds: (performance.now() - t0) / 1000,
    };
    if (dir) {
      await dir.writeJson(GGUF_REPORT_FILE, report);
      await dir.publish();
    }
    return report;
  } catch (e) {
    await dir?.discard();
    throw e;
  }
}

/** Tensors llama-quantize would quantize (llama-quant.cpp tensor_allows_quantization): the list names only them. */
export function quantizableByLlama(t: GgufSourceTensor): boolean {
  return t.ne.length >= 2 && t.name.endsWith('weight') && !t.name.includes('_norm.weight') && !t.name.includes('ffn_gate_inp.weight');
}

interface LayerCtx {
  byName: ReadonlyMap<string, Unit>;
  imatrix: ImatrixCollector;
  T: number;
  act: ActivationSpec;
  settings: { method: Method; minTokens: number; damp: number };
  score: boolean;
}

/** Scoring pass, one MoE layer: each expert/shared unit at each option, with only that projection quantized. */
function scoreMoeLayer(inp: MoeLayerInput, c: LayerCtx): void {
  const l = inp.layer.index;
  const E = inp.experts.length;
  const H = inp.hidden;
  const mlps: { w: SwiGLUWeights; r: Routed; e: number; kind: 'exps' | 'shexp' }[] = [];
  routedTokens(inp).forEach((r, e) => mlps.push({ w: inp.experts[e]!, r, e, kind: 'exps' }));
  if (inp.shared) mlps.push({ w: inp.shared, r: { x: inp.x, n: inp.T, gates: sharedGates(inp) }, e: 0, kind: 'shexp' });
  for (const { w, r, e, kind } of mlps) {
    if (r.n === 0) continue;
    const ex = kind === 'exps';
    const a = activate(linearT(r.x, r.n, w.gate), linearT(r.x, r.n, w.up), c.act);
    c.imatrix.add(`${l}:${ex ? 'experts' : 'shared'}.in`, r.x, r.n, H, ex ? e : 0, ex ? E : 1);
    c.imatrix.add(`${l}:${ex ? 'experts' : 'shared'}.down.in`, a, r.n, w.down.in, ex ? e : 0, ex ? E : 1);
    if (!c.score) continue;
    const us = (['gate', 'up', 'down'] as const)
      .map((p) => [p, c.byName.get(`blk.${l}.ffn_${p}_${kind}.weight`)] as const)
      .filter(([, u]) => u && u.options.length > 1);
    if (us.length === 0) continue;
    const ref = linearT(a, r.n, w.down);
    const split = choiceSplit(r, H, c.settings);
    if (split) {
      // --method auto: each option's loss is that of the encoding the held-back tokens choose, the one written
      const { fit, held, every } = split;
      const refHeld = holdBack(ref, r.n, w.down.out, every).held;
      const fx = us.some(([p]) => p !== 'down') ? fitInput(fit.x, fit.n, H, c.settings.damp) : undefined;
      const fa = us.some(([p]) => p === 'down') ? fitInput(holdBack(a, r.n, w.down.in, every).fit, fit.n, w.down.in, c.settings.damp) : undefined;
      for (const [p, u] of us) {
        const lin = w[p];
        const with_ = (d: Float32Array): SwiGLUWeights => ({ ...w, [p]: withWeight(lin, d) });
        u!.options.forEach((o, oi) => {
          const ch = chooseEncoding(o.type, lin, p === 'down' ? fa! : fx!, (d) => outputError(refHeld, with_(d), held.x, held.n, held.gates, c.act));
          u!.loss[oi]! += outputError(ref, with_(ch.deq), r.x, r.n, r.gates, c.act) / c.T;
        });
      }
      continue;
    }
    const gptq = compensates(c.settings.method, r.n, c.settings.minTokens);
    const quantizer = (x: Float32Array, inF: number): Quantizer => {
      const h = hessianOf(x, r.n, inF);
      return gptq ? { prep: prepareGptq(h, inF, { damp: c.settings.damp }), imp: diagOf(h, inF) } : { imp: diagOf(h, inF) };
    };
    const qx = us.some(([p]) => p !== 'down') ? quantizer(r.x, H) : undefined;
    const qa = us.some(([p]) => p === 'down') ? quantizer(a, w.down.in) : undefined;
    for (const [p, u] of us) {
      const lin = w[p];
      u!.options.forEach((o, oi) => {
        const q = encodeMatrix(o.type, lin.w, lin.out, lin.in, p === 'down' ? qa : qx);
        const wq: SwiGLUWeights = { ...w, [p]: withWeight(lin, q.deq) };
        u!.loss[oi]! += outputError(ref, wq, r.x, r.n, r.gates, c.act) / c.T;
      });
    }
  }
}

interface ApplyCtx {
  typeOf(name: string): GgmlType | undefined;
  imatrix?: ImatrixCollector;
  act: ActivationSpec;
  settings: { method: Method; minTokens: number; damp: number };
  fallbacks: GgufQuantizeReport['fallbacks'];
  /** --method auto: which encoding the held-back tokens chose, per tensor (one count per expert slice) */
  tally(tensor: string, by: Encoding): void;
}

/**
 * --method auto: an expert's routed tokens split into fit rows and every holdEvery-th row held back, when that
 * leaves at least one held-back row and --min-tokens fit rows; otherwise undefined (GPTQ or its fallback on every
 * token, as --method gptq).
 */
function choiceSplit(r: Routed, width: number, s: { method: Method; minTokens: number }): { every: number; fit: Routed; held: Routed } | undefined {
  const every = getQuantizer(s.method).choice?.holdEvery;
  if (!every) return undefined;
  const nHeld = Math.floor(r.n / every);
  if (nHeld === 0 || !compensates(s.method, r.n - nHeld, s.minTokens)) return undefined;
  const { fit, held, nFit } = holdBack(r.x, r.n, width, every);
  const g = heldGates(r.gates, every);
  return { every, fit: { x: fit, n: nFit, gates: new Float32Array(0) }, held: { x: held, n: nHeld, gates: g } };
}

/**
 * Apply pass, one MoE layer: every expert (and the shared expert) quantized projection by projection in the
 * MLP's order, gate and up from the Hessian of the expert's routed tokens, down from the activations of the
 * already-quantized gate and up; each 3-D tensor is its experts' slices, expert after expert.
 */
function applyMoeLayer(inp: MoeLayerInput, c: ApplyCtx): { bytes: Map<string, Uint8Array>; experts: SwiGLUWeights[]; shared?: SwiGLUWeights } {
  const l = inp.layer.index;
  const E = inp.experts.length;
  const H = inp.hidden;
  const bytes = new Map<string, Uint8Array>();
  const one = (w: SwiGLUWeights, r: Routed, kind: 'exps' | 'shexp', e: number) => {
    const ex = kind === 'exps';
    const gptq = compensates(c.settings.method, r.n, c.settings.minTokens);
    if (ex && getQuantizer(c.settings.method).hessians && !gptq) c.fallbacks.push({ layer: l, expert: e, tokens: r.n });
    const quantizer = (x: Float32Array, inF: number): Quantizer => {
      if (r.n === 0) return {};
      const h = hessianOf(x, r.n, inF);
      return gptq ? { prep: prepareGptq(h, inF, { damp: c.settings.damp }), imp: diagOf(h, inF) } : { imp: diagOf(h, inF) };
    };
    if (r.n > 0) c.imatrix?.add(`${l}:${ex ? 'experts' : 'shared'}.in`, r.x, r.n, H, ex ? e : 0, ex ? E : 1);
    const deq: SwiGLUWeights = { ...w };
    const parts: Partial<Record<'gate' | 'up' | 'down', Uint8Array>> = {};
    const split = r.n > 0 ? choiceSplit(r, H, c.settings) : undefined;
    if (split) {
      // --method auto: each projection measured on the held-back tokens with the projections before it as written
      const { fit, held, every } = split;
      const refHeld = mlpForward(w, held.x, held.n, c.act);
      const pick = (p: 'gate' | 'up' | 'down', fi: ReturnType<typeof fitInput>) => {
        const name = `blk.${l}.ffn_${p}_${kind}.weight`;
        const ch = chooseEncoding(c.typeOf(name)!, w[p], fi, (d) =>
          outputError(refHeld, { ...deq, [p]: withWeight(w[p], d) }, held.x, held.n, held.gates, c.act),
        );
        parts[p] = ch.bytes;
        deq[p] = withWeight(w[p], ch.deq);
        c.tally(name, ch.by);
      };
      const fx = fitInput(fit.x, fit.n, H, c.settings.damp);
      pick('gate', fx);
      pick('up', fx);
      const a = activate(linearT(r.x, r.n, deq.gate), linearT(r.x, r.n, deq.up), c.act);
      c.imatrix?.add(`${l}:${ex ? 'experts' : 'shared'}.down.in`, a, r.n, w.down.in, ex ? e : 0, ex ? E : 1);
      pick('down', fitInput(holdBack(a, r.n, w.down.in, every).fit, fit.n, w.down.in, c.settings.damp));
      return { deq, parts };
    }
    const qx = quantizer(r.x, H);
    for (const p of ['gate', 'up'] as const) {
      const type = c.typeOf(`blk.${l}.ffn_${p}_${kind}.weight`)!;
      const q = encodeMatrix(type, w[p].w, w[p].out, w[p].in, qx);
      parts[p] = q.bytes;
      deq[p] = withWeight(w[p], q.deq);
    }
    const a = r.n > 0 ? activate(linearT(r.x, r.n, deq.gate), linearT(r.x, r.n, deq.up), c.act) : new Float32Array(0);
    if (r.n > 0) c.imatrix?.add(`${l}:${ex ? 'experts' : 'shared'}.down.in`, a, r.n, w.down.in, ex ? e : 0, ex ? E : 1);
    const type = c.typeOf(`blk.${l}.ffn_down_${kind}.weight`)!;
    const q = encodeMatrix(type, w.down.w, w.down.out, w.down.in, quantizer(a, w.down.in));
    parts.down = q.bytes;
    deq.down = withWeight(w.down, q.deq);
    return { deq, parts };
  };
  const routed = routedTokens(inp);
  const done = inp.experts.map((w, e) => one(w, routed[e]!, 'exps', e));
  for (const p of ['gate', 'up', 'down'] as const) {
    const slices = done.map((d) => d.parts[p]!);
    const all = new Uint8Array(slices.reduce((a, s) => a + s.length, 0));
    let at = 0;
    for (const s of slices) {
      all.set(s, at);
      at += s.length;
    }
    bytes.set(`blk.${l}.ffn_${p}_exps.weight`, all);
  }
  let shared: SwiGLUWeights | undefined;
  if (inp.shared) {
    const s = one(inp.shared, { x: inp.x, n: inp.T, gates: sharedGates(inp) }, 'shexp', 0);
    for (const p of ['gate', 'up', 'down'] as const) bytes.set(`blk.${l}.ffn_${p}_shexp.weight`, s.parts[p]!);
    shared = s.deq;
  }
  return { bytes, experts: done.map((d) => d.deq), ...(shared ? { shared } : {}) };
}
