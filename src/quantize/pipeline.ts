/**
 * `moe quantize`: score -> plan -> apply -> write -> report.
 *
 * - score: one calibration forward pass. At each MoE layer, every allocation unit (an expert, or with
 *   --granularity projection one projection of all the layer's experts, or with --granularity layer all experts
 *   and projections of the layer) is quantized at every candidate width with
 *   the quantizer that will be applied (GPTQ from the tokens routed to the expert, or RTN), and its error is the
 *   MoE block's output error on those tokens, g^2 ||f_q(x) - f(x)||^2 averaged per routed token. MC-MoE's
 *   importance weights it: loss = f^a * w^beta * q (f = routing frequency, w = summed router probability, both
 *   normalised per layer; a = 1, beta = 1.5).
 * - plan: every linear's fate (plan.ts), then one 0/1 program over all layers (src/alloc/knapsack.ts) choosing a
 *   width per unit so the true bits of the routed experts (every byte of qweight, qzeros, scales and g_idx, x 8,
 *   over their weights) stay within --bits.
 *   --save-plan FILE saves the result; --plan FILE replaces scoring and the program by a saved plan (saved.ts).
 * - apply (GPTQ only): a second forward pass, sequential as GPTQ's default: the experts of layer l are quantized on
 *   activations produced by the already-quantized experts (and shared experts) of layers < l, and the quantized
 *   weights are what later layers see; --no-sequential (and --shard) keep the full-precision activations, so
 *   layers are independent. Attention and dense MLP linears are not exposed by the runtime's hooks, so they are
 *   quantized with round-to-nearest at --dense-bits (and are full precision in the calibration stream), as is
 *   everything with --method rtn, which needs no forward pass.
 * - write: the GPTQ format (format.ts) through the model's general per-tensor rewrite, concurrently with the apply
 *   pass: each layer's packed tensors are handed to the writer as they are produced (src/pipeline/handoff.ts), so about one
 *   layer of output is in memory. --shard i/n writes only layers l % n == i plus a manifest for moe assemble.
 */
import { mtpPassThrough } from '../model/mtp.js';
import { loadWindowSet } from '../data/windows.js';
import { fail } from '../errors.js';
import { stagingDirFor } from '../io/output.js';
import { loadLinear } from '../model/load.js';
import type { Model } from '../model/open.js';
import { modelFingerprint } from '../model/planfile.js';
import { layerOfTensor, rewriteCheckpoint, type NewTensor, type RewriteResult, type TensorFate } from '../model/rewrite.js';
import { shardOwner } from '../model/shard.js';
import type { MoeLayerInput, StreamCheckpoint, SwiGLUWeights } from '../runtime/api.js';
import { activeBackend } from '../runtime/backend.js';
import { LINALG_TASKS_MODULE, type GptqExpertTask, type ScoreExpertTask } from '../runtime/linalg-tasks.js';
import { runTasks } from '../runtime/pool.js';
import { streamModel } from '../runtime/stream.js';
import { allocate, type AllocResult, type AllocUnit } from '../alloc/knapsack.js';
import { quantizeRtn } from '../../kernels/quant/rtn.js';
import type { QuantBits, QuantizedLinear } from '../../kernels/quant/types.js';
import { compensates, getQuantizer, type Granularity } from './methods.js';
import { ctQuantizationConfig, ctTensorBytes, ctTensorSpecs, fusedPrefix } from './ct.js';
import type { ServeTarget } from './targets.js';
import type { ModelView } from '../model/types.js';
import { quantizeMlp, type ExpertQuant, type ProjBits, type QuantSettings } from './expert.js';
import { gptqTensorBytes, gptqTensorSpecs, type ModuleQuant, quantizationConfig, registerGptqFormat, vllmGptqConfig } from './format.js';
import { describeFusedExperts, fusedGptqLayout, fusedModuleWrites, readsFusedAlternative, SOURCE_LAYOUT_FUSED, SOURCE_LAYOUT_KEY } from './fused.js';
import { compile, decide, decisionBytesAt, parseOverride, type AllocatableClass, type LinearDecision, type StoredFormat } from './plan.js';
import { LayerHandoff, type WriterInfo } from '../pipeline/handoff.js';
import { loadResumeState, loadStagedPlan, resumeKey, saveResumeState, saveStagedPlan } from '../pipeline/resume.js';
import { quantizeMemoryPhases } from './memory.js';
import { ClassUnitScores } from './classunits.js';
import { refuseFactors, refuseQuantized, refuseQuantizedDir } from './input.js';
import { attachLosses, buildReport, type QuantizeReport } from './report.js';
import { checkPlan, type QuantizePlan } from './saved.js';
import { DEFAULT_CANDIDATES, DEFAULT_MIN_TOKENS, gptqWidths, QUANTIZE_SPEC, servingTarget } from './options.js';
import { calibFormat, DEFAULT_CALIB_TOKENS } from '../pipeline/fields.js';
import { parseOptions } from '../pipeline/validate.js';
import { runPipeline, type PipelineRun } from '../pipeline/engine.js';
import { optionBits, type QuantizeRequest, type QuantizeRun, type Unit, type UnitOption } from './types.js';
import { routedTokens } from './routed.js';

export type { QuantizeRequest, QuantizeRun, Unit, UnitOption } from './types.js';

export const REPORT_FILE = 'moe-quantize-report.json';
export { DEFAULT_CALIB_TOKENS, DEFAULT_CANDIDATES, DEFAULT_MIN_TOKENS };

/** Flag-level checks (the options' schema and checkQuantize) and what the run derives from the options. */
export function validateRequest(request: QuantizeRequest) {
  return derive(parseOptions(QUANTIZE_SPEC, request));
}

function derive(req: QuantizeRun) {
  const { method, groupSize, damp, minTokens, mixedDown } = req;
  const { bits, candidates: given, denseBits } = gptqWidths(req);
  // --serve (implied by --format compressed-tensors): the target's unit, a symmetric grid
  const target = servingTarget(req);
  const granularity: Granularity = req.granularity ?? (target ? target.granularities[0]! : 'expert');
  const format = req.format as StoredFormat;
  const candidates = [...new Set(given)].sort((a, b) => a - b);
  const allocate = [...new Set(req.allocate)].sort() as AllocatableClass[];
  const overrides = req.override.map(parseOverride);
  const ignores = req.ignore.map((r) => compile(r, '--ignore'));
  const settings: QuantSettings = { method, groupSize, sym: req.sym || !!target?.symmetric, damp, actOrder: req.actOrder, minTokens };
  // layers of a shard job must not depend on other jobs' quantized layers
  const sequential = getQuantizer(method).hessians && !req.shard && req.sequential;
  const alpha = req.alpha ?? 1;
  const beta = req.beta ?? 1.5;
  /** everything that shapes the plan or its application: a saved plan is refused under other values */
  const planSettings = {
    bits,
    method,
    granularity,
    candidates,
    denseBits,
    groupSize,
    sym: settings.sym,
    actOrder: settings.actOrder,
    damp,
    overrides: req.override,
    ignores: req.ignore,
    mixedDown,
    minTokens,
    alpha,
    beta,
    // only when set, so plans and resume keys of plain GPTQ runs stay what they were
    ...(format !== 'gptq' ? { format } : {}),
    ...(target ? { serve: target.name } : {}),
    ...(req.allocate.length ? { allocate: allocate } : {}),
  };
  return {
    bits,
    method,
    granularity,
    candidates,
    denseBits,
    groupSize,
    overrides,
    ignores,
    settings,
    mixedDown,
    alpha,
    beta,
    sequential,
    planSettings,
    format,
    target,
    allocate,
  };
}

/**
 * Allocation units and their width assignments. An expert unit may take each candidate width uniformly, or a
 * width with its down projection one candidate higher: a third of an expert's step, so the program can meet
 * --bits closely even on models with few experts (and down_proj is the projection most sensitive to bits).
 * Widths a free linear's shape cannot pack are dropped for the unit.
 */
export function buildUnits(decisions: readonly LinearDecision[], granularity: Granularity, candidates: QuantBits[], mixedDown = true): Unit[] {
  const groups = new Map<string, LinearDecision[]>();
  for (const d of decisions) {
    let key: string;
    if (d.cls === 'expert') {
      // projection granularity: gate and up packed into one GPTQ module (fused gate_up) are one unit, as one width
      const proj = d.fused?.pack && d.proj !== 'down' ? 'gate_up' : d.proj;
      key = granularity === 'expert' ? `L${d.layer}.E${d.expert}` : granularity === 'projection' ? `L${d.layer}.${proj}` : `L${d.layer}`;
    } else if (decisions.some((x) => x.cls === d.cls && x.layer === d.layer && x.bits === 'alloc')) {
      // --allocate: the layer's attention / shared expert / dense MLP, one width for all its linears (vLLM fuses
      // q/k/v and gate/up into one module each, with one scheme)
      key = `L${d.layer}.${d.cls}`;
    } else continue;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(d);
  }
  const units: Unit[] = [];
  for (const [id, ds] of groups) {
    const free = ds.filter((d) => d.bits === 'alloc');
    const fixed = ds.filter((d) => d.bits !== 'alloc');
    const widths = free.length
      ? candidates.filter((b) => free.every((d) => (d.ref.inFeatures * b) % 32 === 0 && (d.ref.outFeatures * b) % 32 === 0))
      : [candidates[0]!];
    if (widths.length === 0) fail('Usage', `unit ${id}: no candidate width can pack its shapes`);
    const uniform = (b: QuantBits): UnitOption => ({ label: `${b}`, bits: Object.fromEntries(free.map((d) => [d.proj ?? 'all', b])) });
    const cls = ds[0]!.cls;
    const options: UnitOption[] = [];
    widths.forEach((b, k) => {
      options.push(uniform(b));
      const up = widths[k + 1];
      if (mixedDown && up !== undefined && cls === 'expert' && granularity === 'expert' && free.length > 1 && free.some((d) => d.proj === 'down')) {
        const o = uniform(b);
        o.bits.down = up;
        o.label = `${b}+down${up}`;
        options.push(o);
      }
    });
    const at =
      cls !== 'expert'
        ? { cls: cls as AllocatableClass }
        : granularity === 'expert'
          ? { expert: ds[0]!.expert! }
          : granularity === 'projection'
            ? { proj: ds[0]!.proj! }
            : {};
    units.push({ id, layer: ds[0]!.layer, ...at, free, fixed, options });
  }
  return units;
}

export function unitCostBits(u: Unit, opt: UnitOption, gs: number, format: StoredFormat = 'gptq', actOrder = false): number {
  let bytes = 0;
  for (const d of u.free) bytes += decisionBytesAt(d, optionBits(opt, d), gs, format, actOrder);
  for (const d of u.fixed) bytes += decisionBytesAt(d, d.bits as QuantBits | 'keep', gs, format, actOrder);
  return bytes * 8;
}

/** MC-MoE importance f_j^a * w_j^beta with f (routing frequency) and w (router probability mass) normalised per layer. */
export function importance(inp: MoeLayerInput, alpha: number, beta: number): Float64Array {
  const E = inp.experts.length;
  const { T, k, idx, w } = inp.routing;
  const f = new Float64Array(E);
  const mass = new Float64Array(E);
  for (let s = 0; s < T * k; s++) if (w[s] !== 0) f[idx[s]!]! += 1;
  for (let t = 0; t < T; t++) for (let e = 0; e < E; e++) mass[e]! += inp.probs[t * E + e]!;
  const fs = f.reduce((a, b) => a + b, 0) || 1;
  const ms = mass.reduce((a, b) => a + b, 0) || 1;
  return f.map((v, e) => (v / fs) ** alpha * (mass[e]! / ms) ** beta);
}

function projBits(exp: readonly LinearDecision[], choose: (d: LinearDecision) => QuantBits | 'keep'): ProjBits {
  const pb: ProjBits = { gate: 'keep', up: 'keep', down: 'keep' };
  for (const d of exp) pb[d.proj!] = choose(d);
  return pb;
}

const QUANTIZE_PIPELINE = {
  tool: 'quantize',
  spec: QUANTIZE_SPEC,
  reportFile: REPORT_FILE,
  checkModel: (model: Model, o: { model: string }) => {
    refuseQuantized(model.ckpt.config, o.model);
    refuseFactors(model.ckpt.config, o.model);
  },
} as const;

export async function quantize(request: QuantizeRequest): Promise<QuantizeReport> {
  const t0 = performance.now();
  let v: ReturnType<typeof derive>;
  return runPipeline(QUANTIZE_PIPELINE, request, (r) => run(r, v, t0), {
    // llama.cpp's block types, one per tensor: a pipeline of its own (src/gguf/quantize.ts)
    divert: (o) =>
      o.format === 'gguf'
        ? refuseQuantizedDir(o.model).then(async () => {
            const { quantizeGguf } = await import('../gguf/quantize.js');
            return (await quantizeGguf(o, t0)) as unknown as QuantizeReport;
          })
        : undefined,
    before: (o) => {
      v = derive(o);
      registerGptqFormat();
    },
  });
}

async function run(pr: PipelineRun<QuantizeRun>, v: ReturnType<typeof derive>, t0: number): Promise<QuantizeReport> {
  const { model, o: req } = pr;
  const { view, ckpt } = model;
  if (view.moeLayers.length === 0) fail('UnsupportedArchitecture', `${req.model} has no MoE layers: nothing to allocate`);
  const decisions = decide(view, ckpt, {
    denseBits: v.denseBits,
    candidates: v.candidates,
    groupSize: v.groupSize,
    overrides: v.overrides,
    ignores: v.ignores,
    allocate: v.allocate,
    format: v.format,
  });
  const expertDecisions = decisions.filter((d) => d.cls === 'expert');
  if (v.target) checkServeModel(v.target, view, decisions, v.groupSize, req.tensorParallel);
  const units = buildUnits(decisions, v.granularity, v.candidates, v.mixedDown);
  // what --bits measures: the routed experts, plus (--allocate) the classes allocated as units of their own
  const budgeted = decisions.filter((d) => d.cls === 'expert' || (v.allocate as readonly string[]).includes(d.cls));
  const expertParams = budgeted.reduce((a, d) => a + d.params, 0);
  const measured = v.allocate.length ? `the routed experts and the ${v.allocate.join(', ')} linears` : 'the routed experts';
  const gs = v.groupSize;
  // linears of routed experts not in any unit (projection/layer granularity: fixed/kept projections) cost a constant
  const inUnits = new Set(units.flatMap((u) => [...u.free, ...u.fixed]).map((d) => d.tensor));
  const linBytes = (d: LinearDecision, b: QuantBits | 'keep') => decisionBytesAt(d, b, gs, v.format, v.settings.actOrder);
  const constBits = budgeted.filter((d) => !inUnits.has(d.tensor)).reduce((a, d) => a + 8 * linBytes(d, d.bits as QuantBits | 'keep'), 0);
  const budget = v.bits * expertParams - constBits;
  const costs = units.map((u) => u.options.map((b) => unitCostBits(u, b, gs, v.format, v.settings.actOrder)));
  const minBpw = (constBits + costs.reduce((a, c) => a + Math.min(...c), 0)) / expertParams;
  const maxBpw = (constBits + costs.reduce((a, c) => a + Math.max(...c), 0)) / expertParams;
  if (minBpw > v.bits + 1e-12) {
    fail(
      'ImpossibleBudget',
      `--bits ${v.bits} is below the smallest true size of ${measured} with --candidates ${v.candidates.join(',')}: ${minBpw.toFixed(4)} bpw (largest ${maxBpw.toFixed(4)})`,
    );
  }
  const finalBitsOf = (choice: readonly number[]) => {
    const chosen = new Map<string, QuantBits | 'keep'>();
    units.forEach((u, i) => {
      const b = u.options[choice[i]!]!;
      for (const d of u.free) chosen.set(d.tensor, optionBits(b, d));
    });
    return (d: LinearDecision): QuantBits | 'keep' => (d.bits === 'alloc' ? (chosen.get(d.tensor) ?? 'keep') : d.bits);
  };

  // with one width per unit there is nothing to choose: no scores, no plan needed
  const needScores = units.some((u) => u.options.length > 1);
  let loaded: { plan: QuantizePlan; choice: number[] } | undefined;
  if (req.plan) {
    const plan = (await pr.loadPlan<QuantizePlan>(v.planSettings))!;
    loaded = { plan, choice: checkPlan(req.plan, plan, { units, decisions, finalBits: finalBitsOf }) };
  }
  if (req.shard && needScores && !loaded) {
    fail(
      'Usage',
      `--shard: the widths are chosen by scores over all layers (--candidates ${v.candidates.join(',')}); compute the plan once with --save-plan FILE (with --dry-run it writes nothing else) and give every job --plan FILE`,
    );
  }
  // a dry run refuses what the real run refuses (it predicts that run)
  if (!loaded && needScores && !req.calib) {
    fail(
      'Usage',
      `choosing bits among --candidates ${v.candidates.join(',')} needs calibration text to measure errors: give --calib FILE, or one candidate width with --method rtn`,
    );
  }
  if (needScores && v.bits > maxBpw + 1e-12) {
    fail(
      'ImpossibleBudget',
      `--bits ${v.bits} is above the largest true size of ${measured} with --candidates ${v.candidates.join(',')}: ${maxBpw.toFixed(4)} bpw (every unit at its widest); give --bits at most that, or wider --candidates`,
    );
  }
  let scoring = !loaded && needScores && !!req.calib;
  // the MoE layers whose routed/shared experts GPTQ quantizes in the apply pass (this shard's only)
  const mine = (layer: number) => !req.shard || shardOwner(layer, req.shard.count) === req.shard.index;
  const gptqLayersOf = (fb: (d: LinearDecision) => QuantBits | 'keep') =>
    !getQuantizer(v.method).hessians
      ? []
      : [...new Set(decisions.filter((d) => (d.cls === 'expert' || d.cls === 'shared') && mine(d.layer) && fb(d) !== 'keep').map((d) => d.layer))].sort(
          (a, b) => a - b,
        );

  const progress = req.progress;
  let windows: Int32Array[] | undefined;
  let calibTokens = 0;
  let seqLen = 0;
  // kernels run on tfjs with or without calibration (round-to-nearest at write time too)
  await pr.startBackend();
  // round-to-nearest needs no activations: calibration is read only to score, or for a Hessian method (GPTQ)
  if (req.calib && (scoring || getQuantizer(v.method).hessians)) {
    const set = await loadWindowSet(req.model, req.calib, { seqLen: req.seqLen, maxTokens: req.calibTokens, format: calibFormat(req) });
    windows = set.windows;
    calibTokens = windows.reduce((a, w) => a + w.length, 0);
    seqLen = windows[0]?.length ?? 0;
  }
  // a killed run of this same command may have left the plan it scored in the staging directory: no rescoring
  let planKey: string | undefined;
  let planResumed = false;
  if (scoring && windows && req.out && !req.dryRun) {
    planKey = resumeKey(
      {
        format: 'moe-quantize-plan',
        version: 1,
        model: modelFingerprint(ckpt),
        settings: v.planSettings,
        solverTimeLimit: req.solverTimeLimit ?? null,
      },
      windows,
    );
    const staged = await loadStagedPlan<QuantizePlan>(stagingDirFor(req.out), planKey);
    if (staged) {
      try {
        loaded = { plan: staged, choice: checkPlan('the staged plan', staged, { units, decisions, finalBits: finalBitsOf }) };
        scoring = false;
        planResumed = true;
      } catch {
        // not usable: score again
      }
    }
  }

  // ---- score
  const losses: number[][] = units.map((u) => u.options.map(() => 0));
  const unitIndex = new Map(units.map((u, i) => [u.id, i]));
  // projection/layer granularity: each layer's units in order, and the unit each free linear belongs to
  const layerUnits = new Map<number, number[]>();
  const unitOf = new Map<string, number>();
  units.forEach((u, i) => {
    if (u.expert !== undefined || u.cls) return;
    layerUnits.set(u.layer, [...(layerUnits.get(u.layer) ?? []), i]);
    for (const d of u.free) unitOf.set(d.tensor, i);
  });
  const act = view.forward.activation;
  const tScore = performance.now();
  if (windows && scoring) {
    const ph = progress?.phase('scoring units at each candidate width');
    const L = view.layers.length;
    // --allocate: attention, shared-expert and dense-MLP units (classunits.ts)
    const own = new ClassUnitScores(units, ckpt, v.settings, act, calibTokens);
    await streamModel(
      model,
      windows,
      {
        ...(own.active ? { onLinearInput: own.onLinearInput, onAttention: own.onAttention, onLayerOutput: own.onLayerOutput } : {}),
        onMoeLayer: async (inp) => {
          const imp = importance(inp, v.alpha, v.beta);
          const routed = routedTokens(inp);
          const li = inp.layer.index;
          // each expert's widths are scored as one task on the worker pool (inline with one thread); the losses
          // are combined below in expert order, so they do not depend on the thread count
          const tasks: ScoreExpertTask[] = [];
          const combine: { scale: number; targets: { ui: number; oi: number }[]; add: boolean }[] = [];
          const sharedUnit = own.moeLayer(inp, imp);
          inp.experts.forEach((w, e) => {
            const r = routed[e]!;
            if (r.n === 0) return;
            const exp = expertDecisions.filter((d) => d.layer === li && d.expert === e);
            const gptq = compensates(v.method, r.n, v.settings.minTokens);
            const scale = imp[e]! / r.n;
            const jobs: ProjBits[] = [];
            const targets: { ui: number; oi: number }[] = [];
            if (v.granularity === 'expert') {
              const ui = unitIndex.get(`L${li}.E${e}`);
              if (ui === undefined) return;
              units[ui]!.options.forEach((b, oi) => {
                jobs.push(projBits(exp, (d) => (d.bits === 'alloc' ? b.bits[d.proj!]! : (d.bits as QuantBits | 'keep'))));
                targets.push({ ui, oi });
              });
            } else {
              for (const ui of layerUnits.get(li) ?? []) {
                // this expert's linears the unit sets (one projection, or gate and up of a packed gate_up)
                const ds = exp.filter((x) => x.bits === 'alloc' && unitOf.get(x.tensor) === ui);
                if (ds.length === 0) continue;
                units[ui]!.options.forEach((b, oi) => {
                  const pb: ProjBits = { gate: 'keep', up: 'keep', down: 'keep' };
                  for (const d of ds) pb[d.proj!] = b.bits[d.proj!]!;
                  jobs.push(pb);
                  targets.push({ ui, oi });
                });
              }
            }
            if (!jobs.length) return;
            tasks.push({ w, x: r.x, n: r.n, gates: r.gates, activation: act, settings: v.settings, gptq, jobs, reuse: v.granularity === 'expert' });
            combine.push({ scale, targets, add: v.granularity !== 'expert' });
          });
          if (sharedUnit) tasks.push(sharedUnit.task);
          const errs = await runTasks<ScoreExpertTask, Float64Array>(activeBackend()!, LINALG_TASKS_MODULE, 'scoreExpert', tasks);
          if (sharedUnit) own.sharedErrors(sharedUnit.ui, errs[tasks.length - 1]!);
          combine.forEach((c, i) =>
            c.targets.forEach(({ ui, oi }, j) => {
              if (c.add) losses[ui]![oi]! += c.scale * errs[i]![j]!;
              else losses[ui]![oi] = c.scale * errs[i]![j]!;
            }),
          );
        },
      },
      { onProgress: (l) => ph?.tick(l, L, 'layers') },
    );
    own.finish(losses);
    ph?.succeed(`scored ${units.length} units x ${v.candidates.length} widths`);
  }
  const scoreMs = performance.now() - tScore;

  // ---- plan (or the saved one)
  let alloc: AllocResult;
  let scored: boolean;
  if (loaded) {
    const s = loaded.plan.solver;
    alloc = {
      choice: loaded.choice,
      cost: loaded.choice.reduce((a, k, i) => a + costs[i]![k]!, 0),
      loss: s.loss,
      solveMs: s.solveMs,
      optimal: s.optimal,
      gap: s.gap,
    };
    scored = loaded.plan.scored;
    loaded.plan.units.forEach((u) => {
      const i = unitIndex.get(u.id)!;
      units[i]!.options.forEach((o, oi) => (losses[i]![oi] = u.losses?.[o.label] ?? 0));
    });
  } else {
    const allocUnits: AllocUnit[] = units.map((u, i) => ({
      id: u.id,
      options: u.options.map((b, oi) => ({ cost: costs[i]![oi]!, loss: losses[i]![oi]!, label: b.label })),
    }));
    alloc = await allocate(allocUnits, budget, {
      describeCost: (c) => `${((c + constBits) / expertParams).toFixed(4)} bpw`,
      ...(req.solverTimeLimit ? { timeLimitSec: req.solverTimeLimit } : {}),
    });
    scored = scoring;
  }
  // without calibration every loss is 0: the plan then only shows the fates and the budget
  const finalBits = finalBitsOf(alloc.choice);
  const planFile: QuantizePlan = {
    scored,
    units: units.map((u, i) => ({
      id: u.id,
      choice: u.options[alloc.choice[i]!]!.label,
      ...(scored ? { losses: Object.fromEntries(u.options.map((o, oi) => [o.label, losses[i]![oi]!])) } : {}),
    })),
    linears: Object.fromEntries(decisions.map((d) => [d.tensor, finalBits(d)])),
    solver: { optimal: alloc.optimal, gap: alloc.gap, loss: alloc.loss, solveMs: alloc.solveMs },
  };
  await pr.savePlan(v.planSettings, planFile);

  const gptqLayers = windows ? gptqLayersOf(finalBits) : [];
  const memory = pr.memory(
    quantizeMemoryPhases({
      model,
      decisions,
      finalBits,
      groupSize: gs,
      method: v.method,
      tokens: calibTokens,
      seqLen,
      scoring,
      applyLayers: gptqLayers,
      sequential: v.sequential,
    }),
  );

  // ---- apply and write, concurrently: the writer takes each layer's packed tensors as the pass produces them
  const packed = new Map<string, Uint8Array[]>();
  const tensorBytes = (ql: QuantizedLinear) => (v.format === 'compressed-tensors' ? ctTensorBytes(ql, v.settings.actOrder) : gptqTensorBytes(ql));
  const fallbacks: { layer: number; expert: number; tokens: number }[] = [];
  const handoff = new LayerHandoff<void, WriterInfo>();
  const gptqLayer = new Set(gptqLayers);
  const fates = new Map<string, TensorFate>();
  /** output tensors the apply pass produces, by input linear, and their layer */
  const passTensors = new Map<string, { layer: number; names: string[] }>();
  const modQuant: { module: string; bits: QuantBits }[] = [];
  const unquantized: string[] = [];
  // fused experts: written as the family's per-expert GPTQ modules (fused.ts), each from the pass's quantized parts
  const packedQuant = new Map<string, QuantizedLinear>();
  const fusedLayout = view.expertLayout === 'fused' ? fusedGptqLayout(view, v.format) : undefined;
  const renames = fusedLayout && !('refuse' in fusedLayout) ? fusedLayout : undefined;
  /** an unquantized tensor written under the per-expert layout's name, its bytes unchanged */
  const writeAs = (from: string, to: string) => {
    const info = ckpt.info(from);
    fates.set(from, { kind: 'replace', tensors: [{ spec: { name: to, dtype: info.dtype, shape: info.shape }, produce: () => ckpt.readBytes(from) }] });
  };
  for (const layer of view.layers) {
    if (layer.block.kind !== 'moe') continue;
    const router = layer.block.router.weight;
    // transformers-5 mixtral keeps its router at mlp.gate; the per-expert GPTQ layout has it at block_sparse_moe.gate
    const renamed = renames?.routerName(layer);
    if (renamed) writeAs(router, renamed);
    unquantized.push((renamed ?? router).replace(/\.weight$/, ''));
    const bias = layer.block.router.correctionBias;
    const biasRenamed = bias ? renames?.correctionBiasName(layer) : undefined;
    if (bias && biasRenamed) writeAs(bias, biasRenamed);
  }
  const fusedWrites = fusedModuleWrites(decisions, {
    ckpt,
    finalBits,
    groupSize: gs,
    sym: v.settings.sym,
    format: v.format,
    actOrder: v.settings.actOrder,
    fromPass: async (d) => {
      if (!gptqLayer.has(d.layer)) return undefined;
      await handoff.take(d.layer);
      return packedQuant.get(d.tensor);
    },
    release: (parts) => {
      for (const d of parts) packedQuant.delete(d.tensor);
    },
  });
  for (const [name, fate] of fusedWrites.fates) fates.set(name, fate);
  for (const m of fusedWrites.modules) {
    if (m.bits === 'keep') {
      unquantized.push(m.module);
      continue;
    }
    modQuant.push({ module: m.module, bits: m.bits });
    if (gptqLayer.has(m.layer)) for (const d of m.parts) passTensors.set(d.tensor, { layer: m.layer, names: m.names });
  }
  for (const d of decisions) {
    if (d.fused) continue;
    const b = finalBits(d);
    if (b === 'keep') {
      unquantized.push(d.module);
      continue;
    }
    modQuant.push({ module: d.module, bits: b });
    const specs =
      v.format === 'compressed-tensors'
        ? ctTensorSpecs(d.module, d.ref.outFeatures, d.ref.inFeatures, b, gs, v.settings.actOrder)
        : gptqTensorSpecs(d.module, d.ref.outFeatures, d.ref.inFeatures, { bits: b, groupSize: gs, sym: v.settings.sym });
    const fromPass = gptqLayer.has(d.layer) && (d.cls === 'expert' || d.cls === 'shared');
    if (fromPass) passTensors.set(d.tensor, { layer: d.layer, names: specs.map((s) => s.name) });
    let bytes: Promise<Uint8Array[]> | undefined;
    const get = async () => {
      if (fromPass) {
        await handoff.take(d.layer);
      }
      const have = packed.get(d.tensor);
      return (
        have ??
        tensorBytes(quantizeRtn((await loadLinear(ckpt, d.ref)).w, d.ref.outFeatures, d.ref.inFeatures, { bits: b, groupSize: gs, sym: v.settings.sym }))
      );
    };
    const tensors: NewTensor[] = specs.map((spec, k) => ({
      spec,
      produce: async () => {
        const all = await (bytes ??= get());
        // the module's last tensor is out: drop its packed bytes so memory stays at one module, not the output
        if (k === specs.length - 1) {
          packed.delete(d.tensor);
          bytes = undefined;
        }
        return all[k]!;
      },
    }));
    fates.set(d.tensor, { kind: 'replace', tensors });
  }
  const qcSpec = { groupSize: gs, sym: v.settings.sym, actOrder: v.settings.actOrder, damp: v.settings.damp };
  const qc = outputConfig(v.format, !!v.target, decisions, modQuant, unquantized, qcSpec);
  // a transformers-5 fused input is written as per-expert GPTQ modules: record its layout so dequantize restores it
  if (renames && v.format === 'gptq' && readsFusedAlternative(view)) qc[SOURCE_LAYOUT_KEY] = SOURCE_LAYOUT_FUSED;
  // multi-token-prediction layers are outside the plan: copied and declared unquantized, or dropped (--drop-mtp)
  const mtp = mtpPassThrough(view, ckpt.tensorNames, (n) => layerOfTensor(view, n), !!req.dropMtp);
  for (const n of mtp.dropped) fates.set(n, { kind: 'drop' });
  if (mtp.exclusions.length) {
    if (qc.dynamic && typeof qc.dynamic === 'object') for (const x of mtp.exclusions) (qc.dynamic as Record<string, unknown>)[x] = {};
    // compressed-tensors: a regex entry of `ignore` per MTP layer
    else if (Array.isArray(qc.ignore)) for (const x of mtp.exclusions) (qc.ignore as string[]).push(`re:${x.slice(2)}.*`);
    else fail('Usage', `this quantization_config cannot declare the multi-token-prediction layers unquantized: give --drop-mtp`);
  }
  const rewritePlan = { fates, config: { quantization_config: qc, ...mtp.config } };
  const shardSpec = pr.shard({ units: planFile.units.map((u) => [u.id, u.choice]), linears: planFile.linears });

  let applyMs = 0;
  let writeMs = 0;
  /** the apply pass resumed after this layer (-1: from the start) */
  let resumedAfter = -1;
  let res: RewriteResult;
  if (req.dryRun) res = await rewriteCheckpoint(model, rewritePlan, req.out ?? '(dry run)', { dryRun: true });
  else {
    const tApply = performance.now();
    const _L = view.layers.length;
    const what = gptqLayers.length ? `quantizing experts (gptq, ${v.sequential ? 'sequential' : 'not sequential'}) and writing` : 'quantizing and writing';
    const ph = progress?.phase(`${what} ${req.out}${req.shard ? ` (shard ${req.shard.index}/${req.shard.count})` : ''}`);
    const apply = async () => {
      if (!windows || gptqLayers.length === 0) return;
      const lastLayer = gptqLayers[gptqLayers.length - 1]!;
      // resume (a killed run restarted with the same command): the hidden states after the last layer whose
      // tensors are all written, keyed by everything that determines the pass
      const key = resumeKey(
        {
          format: 'moe-quantize-apply',
          version: 1,
          model: modelFingerprint(ckpt),
          settings: v.planSettings,
          sequential: v.sequential,
          linears: planFile.linears,
          layers: gptqLayers,
          shard: req.shard ? [req.shard.index, req.shard.count] : null,
        },
        windows,
      );
      const H = view.dims.hidden;
      let writer: WriterInfo | undefined;
      let saving: Promise<void> = Promise.resolve();
      /** every tensor the pass produces for layers <= l is finished in the staging directory */
      const writtenThrough = (l: number) => [...passTensors.values()].every((p) => p.layer > l || p.names.every((n) => writer!.isWritten(n)));
      const checkpoint: StreamCheckpoint = {
        restore: async () => {
          writer = await handoff.whenOpen();
          const st = await loadResumeState<{ fallbacks: typeof fallbacks }>(writer.dir, key, calibTokens * H);
          if (!st || st.after >= lastLayer || !writtenThrough(st.after)) return undefined;
          fallbacks.push(...st.extra.fallbacks);
          resumedAfter = st.after;
          return { after: st.after, hidden: st.hidden };
        },
        save: async (l, h) => {
          // saved in the background once the writer has finished layer l (the pass goes on meanwhile; the next
          // GPTQ layer waits for the same point anyway, and for this save before it hands tensors over)
          const hidden = h.slice();
          const done = fallbacks.filter((f) => f.layer <= l);
          saving = saving.then(async () => {
            await handoff.consumerAt(l + 1);
            await saveResumeState(writer!.dir, key, { after: l, hidden, extra: { fallbacks: done } });
          });
          saving.catch(() => {});
        },
      };
      await streamModel(
        model,
        windows,
        {
          onMoeLayer: async (inp) => {
            const li = inp.layer.index;
            if (!gptqLayer.has(li)) return;
            // backpressure: the previous layers' packed tensors are written (and released) first
            await handoff.consumerAt(li);
            await saving;
            // tensors a killed earlier run already wrote are not handed over (the writer skips them)
            const set = (tensor: string, q: Uint8Array[]) => {
              if (!passTensors.get(tensor)?.names.every((n) => writer!.isWritten(n))) packed.set(tensor, q);
            };
            const routed = routedTokens(inp);
            // GPTQ of each expert (Hessians, Cholesky, column loop) is one task on the worker pool; results come
            // back in expert order and are used exactly as if computed here
            const quants = await runTasks<GptqExpertTask, Omit<ExpertQuant, 'downPrep'>>(
              activeBackend()!,
              LINALG_TASKS_MODULE,
              'gptqExpert',
              inp.experts.map((w, e) => ({
                w,
                x: routed[e]!.x,
                n: routed[e]!.n,
                bits: projBits(
                  expertDecisions.filter((d) => d.layer === li && d.expert === e),
                  finalBits,
                ),
                settings: v.settings,
                activation: act,
              })),
            );
            const experts: SwiGLUWeights[] = inp.experts.map((_w, e) => {
              const exp = expertDecisions.filter((d) => d.layer === li && d.expert === e);
              const r = routed[e]!;
              const q = quants[e]!;
              if (q.fallback) fallbacks.push({ layer: li, expert: e, tokens: r.n });
              for (const d of exp) {
                const ql = q.quant[d.proj!];
                if (!ql) continue;
                // a slice of fused experts: its module packs it with its sibling (gate with up) when written
                if (d.fused) {
                  if (!passTensors.get(d.tensor)?.names.every((n) => writer!.isWritten(n))) packedQuant.set(d.tensor, ql);
                } else set(d.tensor, tensorBytes(ql));
              }
              return q.deq;
            });
            let shared: SwiGLUWeights | undefined;
            if (inp.shared) {
              const sd = decisions.filter((d) => d.cls === 'shared' && d.layer === li);
              const pb = projBits(sd, finalBits);
              const q = quantizeMlp(inp.shared, inp.x, inp.T, pb, v.settings, act);
              for (const d of sd) if (q.quant[d.proj!]) set(d.tensor, tensorBytes(q.quant[d.proj!]!));
              shared = q.deq;
            }
            handoff.publish(li);
            // sequential: later layers see the quantized experts; otherwise the full-precision ones
            if (v.sequential) return { experts, ...(shared ? { shared } : {}) };
          },
        },
        { stopAfterLayer: lastLayer, checkpoint },
      );
      await saving;
      handoff.close();
      applyMs = performance.now() - tApply;
    };
    const write = async () => {
      const r = await rewriteCheckpoint(model, rewritePlan, req.out!, {
        force: !!req.force,
        onOpen: async (info) => {
          if (planKey && !planResumed) await saveStagedPlan(info.dir, planKey, planFile);
          handoff.opened(info);
        },
        ...(shardSpec ? { shard: shardSpec } : {}),
        onProgress: (done, total, name) => {
          handoff.reached(layerOfTensor(view, name));
          ph?.tick(done, total, 'tensors');
        },
      });
      handoff.finish();
      writeMs = performance.now() - tApply;
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
      // the side that failed first; the other one only saw the hand-off released with the same error
      throw handoff.error ?? (a.status === 'rejected' ? a.reason : (w as PromiseRejectedResult).reason);
    }
    res = w.value;
    if (!applyMs) applyMs = performance.now() - tApply;
    ph?.succeed(`wrote ${req.out}${req.shard ? ` (shard ${req.shard.index}/${req.shard.count})` : ''}`);
  }

  attachLosses(units, losses);
  const report = buildReport({
    req,
    model,
    decisions,
    units,
    alloc,
    finalBits,
    groupSize: gs,
    outBytes: res.totalBytes,
    fallbacks,
    calibTokens,
    expertParams,
    scoreMs,
    applyMs,
    writeMs,
    seconds: (performance.now() - t0) / 1000,
    method: v.method,
    granularity: v.granularity,
    format: v.format,
    ...(v.target ? { serve: v.target.name } : {}),
    sym: v.settings.sym,
    candidates: v.candidates,
    denseBits: v.denseBits,
    allocate: v.allocate,
    scored,
    sequential: v.sequential,
    memory,
    ...(!req.dryRun && windows && gptqLayers.length ? { resumedAfterLayer: resumedAfter } : {}),
    ...(planResumed ? { resumedPlan: true } : {}),
    ...(req.plan ? { planLoaded: req.plan } : {}),
    ...(req.savePlan ? { planSaved: req.savePlan } : {}),
    ...(fusedLayout && !('refuse' in fusedLayout) ? { fusedExperts: describeFusedExperts(ckpt, view, fusedLayout) } : {}),
  });
  if (mtp.layers.length) report.mtp = req.dropMtp ? { unquantized: [], dropped: mtp.layers } : { unquantized: mtp.layers, dropped: [] };
  return report;
}

/**
 * --serve: the model-dependent rules of the target (targets.ts), before anything is read or scored (fused experts
 * are placed, or refused with vLLM's reason, by decide: fused.ts): the shapes
 * its kernels need, and one scheme per fused MoE layer (an --override or --ignore that splits a layer's experts,
 * or keeps some of them, cannot load there). Refused with exit 2.
 */
export function checkServeModel(t: ServeTarget, view: ModelView, decisions: readonly LinearDecision[], groupSize: number, tensorParallel = 1): void {
  const flag = `--serve ${t.name}`;
  for (const layer of view.layers) {
    if (layer.block.kind !== 'moe') continue;
    const e0 = layer.block.experts[0]!;
    const why = t.shape({ hidden: view.dims.hidden, intermediate: e0.down.inFeatures }, groupSize, tensorParallel);
    if (why) fail('Usage', `${flag}: layer ${layer.index}: ${why}; this model cannot be served there quantized`);
    const ds = decisions.filter((d) => d.cls === 'expert' && d.layer === layer.index);
    const fates = new Set(ds.map((d) => String(d.bits)));
    if (fates.size > 1) {
      fail(
        'Usage',
        `${flag}: layer ${layer.index}: its experts would get different fates (${[...fates].join(', ')}) from --override/--ignore or shapes; vLLM loads one scheme per fused MoE layer`,
      );
    }
  }
}

/**
 * quantization_config of the output: GPTQ (per-module `dynamic` keys; with --serve layer-level keys on the fused
 * MoE prefix) or compressed-tensors (config groups per width).
 */
function outputConfig(
  format: StoredFormat,
  serve: boolean,
  decisions: readonly LinearDecision[],
  mods: readonly ModuleQuant[],
  unquantized: readonly string[],
  spec: { groupSize: number; sym: boolean; actOrder: boolean; damp: number },
): Record<string, unknown> {
  const expertModules = new Set(decisions.filter((d) => d.cls === 'expert').map((d) => d.module));
  const layerWidths = () => {
    const byPrefix = new Map<string, QuantBits>();
    for (const m of mods) if (expertModules.has(m.module)) byPrefix.set(fusedPrefix(m.module), m.bits);
    return [...byPrefix].map(([prefix, bits]) => ({ prefix, bits }));
  };
  const clsOf = new Map(decisions.map((d) => [d.module, d.cls]));
  const dense = mods.filter((m) => !expertModules.has(m.module)).map((m) => ({ ...m, cls: clsOf.get(m.module) ?? 'dense' }));
  if (format === 'compressed-tensors') return ctQuantizationConfig(layerWidths(), dense, unquantized, { groupSize: spec.groupSize, actOrder: spec.actOrder });
  if (serve) return vllmGptqConfig(layerWidths(), dense, unquantized, spec);
  return quantizationConfig(mods, unquantized, spec);
}
