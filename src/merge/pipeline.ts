/**
 * `moe merge --groups N`: score experts (calibration statistics) -> plan N groups per MoE layer -> apply (align
 * members onto anchors, frequency-weighted average, new router rows) -> write the family's own checkpoint with N
 * experts per layer -> report (groups, member weights, alignment, router fit per layer).
 *
 * Three ways to get the plan (src/merge/plan.ts says what a plan holds):
 * - --calib FILE: sequential. One streamed forward pass; at each MoE layer the hook measures that layer's
 *   statistics on the hidden states it really receives (earlier layers already merged), merges it, and hands
 *   the merged layer back so later layers see it. Activation alignment and the fitted router need this mode.
 * - --stats DIR: from a saved calibration artifact of the unmerged model; no forward pass, so only choices that
 *   need no hidden states (align none|weights, router anchor|mean).
 * - --plan FILE: a plan saved by either (--save-plan), applied without calibration data or forward pass.
 *
 * The write then produces each merged group from the plan while the checkpoint is written (members loaded one at a
 * time), so memory is one layer during the pass and one group during the write. `--shard i/n` writes only layers
 * l with l % n = i; it needs --stats or --plan, because a sequential plan is one pass through all layers.
 */
import type { z } from 'zod';
import { resolveCalibration } from '../calibrate/resolve.js';
import type { CalibStats } from '../calibrate/types.js';
import type { Progress } from '../progress.js';
import { fail } from '../errors.js';
import { loadRouter, loadSwiGLU } from '../model/load.js';
import type { Model } from '../model/open.js';
import { editedLayers, mtpIndices, mtpStatsMissing } from '../model/mtp.js';
import { writeExpertEdit, type ExpertEditPlan, type ExpertSource, type LayerExpertEdit } from '../model/rewrite.js';
import type { ModelView, MoeBlock } from '../model/types.js';
import { checkpointSizes, predictedSizes, writtenSizes, type SizeSummary } from '../model/sizes.js';
import { maskedEdit } from '../runtime/mask.js';
import type { MoeLayerEdit, MoeLayerInput, SwiGLUWeights } from '../runtime/api.js';
import type { MemoryEstimate } from '../runtime/memory.js';
import { streamModel } from '../runtime/stream.js';
import { swiglu } from '../runtime/swiglu.js';
import { parseOptions } from '../pipeline/validate.js';
import { runPipeline } from '../pipeline/engine.js';
import type { PassResume } from '../pipeline/resume.js';
import { memberWeights } from './combine.js';
import { checkGroupCount, checkPartition, groupExperts, mergeRoutingGroups, routingGroupOf } from './grouping.js';
import { allocationReport, errorCurve, type AllocationReport } from './allocate.js';
import { type CandidateScore, candidateName, type ChoiceReport, choiceGroupings, pickCandidate, type ReapCandidate, reapCandidate } from './choose.js';
import { decideTokens, decisionApplies, keptRows, LayerError, pruneGroups } from './decide.js';
import { mergeGroupStreamed, mergeLayer, type MergedLayer, type MergeLayerOptions } from './layer.js';
import { mergeMemoryPhases } from './memory.js';
import { DEFAULTS, type MERGE_OPTIONS, MERGE_SPEC, type MergeOptions } from './options.js';
import { checkSavedPlan, layerReport, serializePlan, shardDecisions, type MergePlan, type PlanMode, type PlannedLayer, type SavedMergePlan } from './plan.js';
import { mergeRouter, type RouterWeights } from './router.js';
import { signalsFromInput, signalsFromStats } from './signals.js';
import { fromHiddenStates, getAlign, getRouter } from './methods.js';
import { MERGE_OPTION_DEFAULTS, type ExpertGroup, type LayerReport, type MergeChoices } from './types.js';

/** What a caller gives: the options (src/merge/options.ts, the same for the command line and recipes) plus progress. */
export type MergeRequest = z.input<typeof MERGE_OPTIONS> & { progress?: Progress };
/** The request after validation: every option resolved. */
type MergeRun = MergeOptions & { progress?: Progress };

export interface MergeReport {
  tool: 'moe merge';
  /** multi-token-prediction layers: kept (merged like the others, planned in `layers` on their own inputs) or dropped (--drop-mtp) */
  mtp?: { kept: number[]; dropped: number[] };
  model: string;
  out?: string;
  dryRun: boolean;
  family: string;
  numExperts: number;
  groups: number;
  topK: number;
  choices: Omit<MergeChoices, 'groups'>;
  /** how the plan's statistics were measured (a --plan run reports the saved plan's mode) */
  mode: PlanMode;
  calibration: { source: 'calib' | 'stats' | 'plan'; path: string; tokens: number };
  /** the plan file written (--save-plan) */
  savedPlan?: string;
  shard?: { index: number; count: number };
  /** --drop auto: the whole-model candidates' NLL on the calibration windows and the one written (src/merge/choose.ts) */
  choice?: ChoiceReport;
  layers: LayerReport[];
  sizes: { before: SizeSummary; after: SizeSummary; predicted: boolean };
  /** --keep-per-layer auto: the per-layer counts the same total would allow, and the error they would save */
  keepPerLayer?: AllocationReport;
  /** estimated peak resident memory of the run (from shapes and the plan; bench/merge-memory.ts measures it) */
  memory: MemoryEstimate;
  /** --calib writing an output: the sequential pass resumed after this layer (-1: from the start), and the MoE layers it computed */
  resumed?: { afterLayer: number; computed: number[] };
  seconds: number;
}

export const REPORT_FILE = 'moe-merge-report.json';
export { DEFAULTS };

/** Flag-level checks, before any file is opened (the options' schema and checkMerge); returns the choices. */
export function validateRequest(req: MergeRequest): MergeChoices {
  return choicesOf(parseOptions(MERGE_SPEC, req));
}

const choicesOf = (o: MergeOptions): MergeChoices => ({ groups: o.groups, grouping: o.grouping, align: o.align, weighting: o.weighting, router: o.router });

/** Model-level checks: a merged checkpoint must load in stock tools and route top-k among N experts. */
export function checkGroups(view: ModelView, n: number): void {
  const E = view.dims.numExperts;
  const k = view.routing.topK;
  if (view.moeLayers.length === 0) fail('UnsupportedArchitecture', `${view.family} checkpoint has no MoE layers to merge`);
  if (n > E) fail('Usage', `--groups ${n} is more than the ${E} experts per layer`);
  if (n < 1) fail('Usage', `--groups must be at least 1, got ${n}`);
  if (n < k) fail('Usage', `--groups ${n} is fewer than the ${k} experts each token is routed to (num_experts_per_tok); use at least ${k}`);
  // group-limited routing: merged within each routing group, the same count per group
  checkGroupCount(n, E, view.routing, view.family);
}

const routerRows = (r: RouterWeights): RouterWeights => ({ w: r.w, bias: r.bias, correctionBias: r.correctionBias });

/**
 * The merged layer as the running forward pass sees it: the runtime keeps a layer's expert count during a pass,
 * so the N merged experts come first and the E - N spare slots are masked with a -inf router bias (the pruning
 * pipeline's mask, which routes exactly as the N-expert checkpoint does). Under group-limited routing
 * (`routingGroups` > 1) each routing group keeps its E / routingGroups slots: its N / routingGroups merged experts
 * first, its spare slots masked, so group scores and the group choice are those of the merged checkpoint.
 */
export function runningEdit(experts: SwiGLUWeights[], router: RouterWeights, E: number, H: number, routingGroups = 1): MoeLayerEdit {
  const N = experts.length;
  const size = E / routingGroups;
  const per = N / routingGroups;
  // merged expert i -> its slot in the E-slot layer
  const slotOf = (i: number) => Math.floor(i / per) * size + (i % per);
  const source = new Int32Array(E).fill(-1);
  for (let i = 0; i < N; i++) source[slotOf(i)] = i;
  const w = new Float32Array(E * H);
  for (let i = 0; i < N; i++) w.set(router.w.subarray(i * H, (i + 1) * H), slotOf(i) * H);
  const pad = (v: Float32Array | undefined) => (v ? Float32Array.from(source, (i) => (i >= 0 ? v[i]! : 0)) : undefined);
  const bias = pad(router.bias) ?? new Float32Array(E);
  const padded = {
    experts: Array.from(source, (i) => experts[Math.max(i, 0)]!),
    router: { w, bias, correctionBias: pad(router.correctionBias) },
  };
  return maskedEdit(
    padded,
    Array.from({ length: N }, (_, i) => slotOf(i)),
    routingGroups > 1 ? size : undefined,
  );
}

/**
 * Sequential planning (--calib): one streamed forward pass; at each MoE layer the hook measures that layer's
 * statistics on the hidden states it really receives (earlier layers already merged), merges it, keeps the plan
 * (groups, weights, permutations, fitted rows) and hands the merged layer to the pass. The merged weights are not
 * kept: the write produces them again from the plan, group by group, so memory stays about one layer instead of
 * growing with every merged layer until the write.
 */
/** One finished layer in the resume state: its plan in the plan file's encoding, and its --keep-per-layer curve. */
interface SequentialEntry {
  layer: SavedMergePlan['layers'][number];
  curve?: number[];
}

async function planSequential(
  model: Model,
  req: MergeRun,
  choices: MergeChoices,
  opts: MergeLayerOptions,
  windows: Int32Array[],
  resume: PassResume<SequentialEntry>,
  curves?: number[][],
  candidate?: 'merge' | 'planned',
): Promise<{ plan: MergePlan; resumed: ReturnType<typeof resume.report>; nll?: { nll: number; tokens: number } }> {
  const view = model.view;
  const plan: MergePlan = { mode: 'sequential', tokens: windows.reduce((a, w) => a + w.length, 0), layers: [] };
  // the MTP layers come after the decoder layers, on their own inputs (the stream runs them with `mtp`)
  const mtp = !req.dropMtp && !!view.mtp?.length;
  const total = view.moeLayers.length + (mtp ? view.mtp!.length : 0);
  const phase = req.progress?.phase(
    `merge: ${total} MoE layers, sequentially on calibration text${candidate ? ` (candidate: ${candidate} (${choices.grouping}))` : ''}`,
  );
  const H = view.dims.hidden;
  const expert = (w: SwiGLUWeights, x: Float32Array, T: number) => swiglu(w, x, T, view.forward.activation);
  const routingGroups = mergeRoutingGroups(view.routing);
  const mine: number[][] = [];
  let done = 0;
  const pass = await streamModel(
    model,
    windows,
    {
      onMoeLayer(input: MoeLayerInput) {
        const signals = signalsFromInput(input, expert);
        let curve: number[] | undefined;
        // --keep-per-layer auto allocates among the decoder layers; an MTP layer keeps the common count
        if (curves && input.layer.index < view.dims.layers) {
          const le = new LayerError({
            x: input.x,
            T: input.T,
            H,
            routing: input.routing,
            experts: input.experts,
            rule: view.routing,
            activation: view.forward.activation,
            maxTokens: opts.decideTokens,
          });
          curve = errorCurve(le, signals.saliency, input.experts, input.router, H, view.routing.topK);
          mine.push(curve);
        }
        const m: MergedLayer = mergeLayer(
          {
            layer: input.layer.index,
            experts: input.experts,
            router: input.router,
            signals,
            rule: view.routing,
            calib: { x: input.x, T: input.T, logits: input.logits, routing: input.routing },
            activation: view.forward.activation,
            routingGroups,
            routingRule: view.routing,
          },
          choices,
          candidate === 'planned' ? { ...opts, drop: 'never' } : opts,
        );
        const planned: PlannedLayer = {
          layer: input.layer.index,
          groups: m.report.groups.map((g, i) => ({ ...g, ...(getAlign(choices.align).similarity && g.members.length > 1 ? { perms: m.perms[i] } : {}) })),
          router: m.report.router,
          ...(m.report.decision ? { decision: m.report.decision } : {}),
          // decided rows (a dropped group keeps its member's own row) are data-dependent like fitted ones
          ...(fromHiddenStates(getRouter(choices.router)) || m.decided ? { rows: routerRows(m.router) } : {}),
        };
        plan.layers.push(planned);
        // the resume state holds each finished layer in the plan file's encoding
        resume.record(planned.layer, { layer: serializePlan({ ...plan, layers: [planned] }).layers[0]!, ...(curve ? { curve } : {}) });
        phase?.tick(++done, total, 'layers');
        return runningEdit(m.experts, m.router, input.experts.length, H, routingGroups);
      },
    },
    { checkpoint: resume.checkpoint, ...(mtp ? { mtp: true } : {}), ...(candidate ? { scoreLogits: true } : {}) },
  );
  const scored = candidate ? { nll: pass.nll / pass.scored, tokens: pass.scored } : undefined;
  const resumed = resume.report();
  if (resumed.afterLayer < 0) {
    curves?.push(...mine);
    phase?.succeed(`merge: ${plan.layers.length} layers planned${scored ? `, NLL ${scored.nll.toFixed(4)}` : ''}`);
    return { plan, resumed, ...(scored ? { nll: scored } : {}) };
  }
  // resumed: the killed run's layers, then this run's, checked like a plan file
  const entries = resume.entries();
  curves?.push(...entries.map((e) => e.curve ?? []));
  const layers = entries.map((e) => e.layer);
  const all = checkSavedPlan(model.view, { mode: 'sequential', tokens: plan.tokens, layers }, choices, 'the resume state', req.dropMtp);
  phase?.succeed(`merge: ${all.layers.length} layers planned (resumed after layer ${resumed.afterLayer}: ${resumed.computed.length} computed)`);
  return { plan: all, resumed, ...(scored ? { nll: scored } : {}) };
}

/** The REAP candidate as a merge plan: every kept expert a group of one, each removed one at weight 0, the kept experts' rows. */
async function reapPlan(model: Model, rc: ReapCandidate, choices: MergeChoices): Promise<MergePlan> {
  const layers: PlannedLayer[] = [];
  const H = model.view.dims.hidden;
  for (const layer of editedLayers(model.view, false)) {
    const ls = rc.stats.layers.find((s) => s.layer === layer.index);
    if (layer.block.kind !== 'moe' || !ls) continue;
    const kept = rc.kept.get(layer.index)!;
    const groups = pruneGroups(kept, ls.numExperts, signalsFromStats(ls));
    layers.push({
      layer: layer.index,
      groups: groups.map((g) => ({
        anchor: g.anchor,
        members: g.members,
        weights: g.members.map((_, k) => (k === 0 ? 1 : 0)),
        alignment: g.members.map(() => null),
      })),
      router: { method: choices.router },
      rows: keptRows(kept, await loadRouter(model.ckpt, layer.block.router), H),
    });
  }
  return { mode: 'sequential', tokens: rc.stats.tokens, layers };
}

function statsFor(stats: CalibStats, layer: number, E: number) {
  const ls = stats.layers.find((s) => s.layer === layer);
  if (!ls || ls.numExperts !== E)
    fail('InvalidStats', `calibration statistics do not match the model: layer ${layer} ${ls ? `has ${ls.numExperts} experts, the model ${E}` : 'is missing'}`);
  return ls;
}

/** Plan every layer from saved statistics of the unmerged model: groups and weights (alignment is left to the write). */
function planFromStats(model: Model, stats: CalibStats, choices: MergeChoices, dropMtp: boolean): MergePlan {
  const layers: PlannedLayer[] = [];
  for (const layer of editedLayers(model.view, dropMtp)) {
    if (layer.block.kind !== 'moe') continue;
    const E = layer.block.experts.length;
    if (layer.index >= model.view.dims.layers && !stats.layers.some((s) => s.layer === layer.index)) fail('InvalidStats', mtpStatsMissing(layer.index));
    const signals = signalsFromStats(statsFor(stats, layer.index, E));
    const groups = groupExperts(choices.grouping, signals, choices.groups, mergeRoutingGroups(model.view.routing));
    checkPartition(groups, E, choices.groups);
    layers.push({
      layer: layer.index,
      groups: groups.map((g) => ({
        anchor: g.anchor,
        members: g.members,
        weights: memberWeights(choices.weighting, g.members, signals),
        alignment: g.members.map(() => null),
      })),
      router: { method: choices.router },
    });
  }
  return { mode: 'stats', tokens: stats.tokens, layers };
}

/**
 * The checkpoint edit of a plan. Groups of one are copied byte for byte; every merged group is produced lazily
 * while the checkpoint is written: its members loaded one at a time, permuted (the plan's permutations, or weight
 * alignment computed now) and averaged, so memory stays bounded by one group. A shard's writer never calls the
 * producers of other shards' layers, so each job aligns only its own layers.
 */
async function planEdit(
  model: Model,
  plan: MergePlan,
  choices: MergeChoices,
  reports: LayerReport[],
  progress?: Progress,
): Promise<{ edit: ExpertEditPlan; finish(): void }> {
  const view = model.view;
  const H = view.dims.hidden;
  let produced = 0;
  const total = plan.layers.reduce((a, l) => a + l.groups.filter((g) => g.members.length > 1).length, 0);
  const phase = progress?.phase('merge: aligning and averaging groups while writing');
  const layers: LayerExpertEdit[] = [];
  const routingGroups = mergeRoutingGroups(view.routing);
  for (const [li, l] of plan.layers.entries()) {
    const block = editedLayers(view, false).find((x) => x.index === l.layer)!.block as MoeBlock;
    const E = block.experts.length;
    const groups: ExpertGroup[] = l.groups.map((g) => ({ anchor: g.anchor, members: g.members }));
    const router = l.rows ?? routerRows(mergeRouter(choices.router, await loadRouter(model.ckpt, block.router), groups, H, E, view.routing).router);
    const experts: ExpertSource[] = l.groups.map((g, gi) => {
      // a group of one, or one whose other members were dropped (weight 0): the kept expert's bytes
      if (g.members.length === 1 || (g.weights[0] === 1 && g.weights.slice(1).every((w) => w === 0))) return { from: g.anchor };
      return {
        // under group-limited routing the merged expert stays in its members' routing group
        ...(routingGroups > 1 ? { group: routingGroupOf(g.anchor, E, routingGroups) } : {}),
        weights: async () => {
          const load = (j: number) => loadSwiGLU(model.ckpt, block.experts[j]!);
          const applied = g.perms ? { perms: g.perms, alignment: g.alignment } : undefined;
          const m = await mergeGroupStreamed(g, load, g.weights, choices.align, { H, activation: view.forward.activation, ...(applied ? { applied } : {}) });
          reports[li]!.groups[gi] = m.report;
          phase?.tick(++produced, total, 'groups');
          return m.expert;
        },
      };
    });
    layers.push({ layer: l.layer, experts, router });
  }
  const g = view.routing.groups;
  // group-limited routing keeps its n_group / topk_group (each routing group merged to the same count); a group
  // limit that selects every group is a no-op: the merged model routes identically without groups
  const groups = !g || g.nGroup <= 1 ? undefined : routingGroups > 1 ? { nGroup: g.nGroup, topkGroup: g.topkGroup } : { nGroup: 1, topkGroup: 1 };
  const edit: ExpertEditPlan = { layers, groups };
  return { edit, finish: () => phase?.succeed(`merge: ${plan.layers.length} layers, ${produced} merged groups`) };
}

/** Everything that shapes the plan or how it is applied: a plan is refused under other values (src/model/planfile.ts). */
export function planSettings(choices: MergeChoices, req: Pick<MergeRequest, 'fitSteps' | 'fitTokens' | 'alignTokens'>): Record<string, unknown> {
  return {
    groups: choices.groups,
    grouping: choices.grouping,
    weighting: choices.weighting,
    align: choices.align,
    router: choices.router,
    ...methodSettings(choices, req),
  };
}

/** The options the chosen methods read (their descriptors' `reads`), with their defaults, in method order. */
function methodSettings(choices: MergeChoices, req: Pick<MergeRequest, 'fitSteps' | 'fitTokens' | 'alignTokens'>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of [getAlign(choices.align), getRouter(choices.router)]) for (const k of m.reads ?? []) out[k] = req[k] ?? MERGE_OPTION_DEFAULTS[k];
  return out;
}

const MERGE_PIPELINE = { tool: 'merge', spec: MERGE_SPEC, reportFile: REPORT_FILE } as const;

export async function merge(request: MergeRequest): Promise<MergeReport> {
  return runPipeline(MERGE_PIPELINE, request, async (run) => {
    const { model, seconds } = run;
    const req: MergeRun = run.o;
    const choices = choicesOf(req);
    const view = model.view;
    checkGroups(view, choices.groups);
    const opts: MergeLayerOptions = {
      maxAlignTokens: req.alignTokens,
      routerFit: { steps: req.fitSteps, maxTokens: req.fitTokens },
      drop: req.drop ?? (req.calib ? 'auto' : 'never'),
      decideTokens: decideTokens(view.dims.numExperts, choices.groups, view.dims.hidden),
    };
    const E = view.dims.numExperts;
    const before = checkpointSizes(model.ckpt, view);
    const settings = planSettings(choices, req);

    let plan: MergePlan;
    let keepPerLayer: AllocationReport | undefined;
    let pass: { tokens: number; seqLen: number } | undefined;
    let source: MergeReport['calibration']['source'];
    let resumed: MergeReport['resumed'];
    let choice: ChoiceReport | undefined;
    if (req.plan) {
      plan = checkSavedPlan(view, await run.loadPlan<unknown>(settings), choices, req.plan, req.dropMtp);
      source = 'plan';
    } else if (req.stats) {
      const stats = await resolveCalibration({ model, stats: req.stats, ...(req.progress ? { progress: req.progress } : {}) });
      if (stats.numExperts !== E) fail('InvalidStats', `calibration statistics describe ${stats.numExperts} experts per layer, the model has ${E}`);
      plan = planFromStats(model, stats, choices, !!req.dropMtp);
      source = 'stats';
    } else {
      await run.startBackend();
      const windows = await run.windows();
      pass = { tokens: windows.reduce((a, w) => a + w.length, 0), seqLen: windows[0]?.length ?? 0 };
      const curves: number[][] | undefined = req.keepPerLayer === 'auto' ? [] : undefined;
      if (curves && view.routing.groups && view.routing.groups.nGroup > 1)
        fail('Usage', `--keep-per-layer auto: ${view.family} routes within expert groups; per-layer counts would have to keep them even`);
      const parts = { settings, choices, opts, keepPerLayer: req.keepPerLayer ?? null };
      // --drop auto: whole-model candidates planned on the calibration windows, the one of lowest NLL written
      const choose = opts.drop === 'auto' && decisionApplies(view.routing);
      let r: Awaited<ReturnType<typeof planSequential>>;
      if (!choose) r = await planSequential(model, req, choices, opts, windows, run.passResume('sequential', parts, windows), curves);
      else {
        // per candidate grouping (choose.ts), its merge decided per layer and its planned merge (every group merged);
        // the configured grouping's decided merge keeps the single pass's resume state, each other candidate has its own
        const runs: (typeof r | undefined)[] = [];
        const scores: CandidateScore[] = [];
        for (const [gi, grouping] of choiceGroupings(choices.grouping, req.chooseGroupings).entries()) {
          const ch: MergeChoices = { ...choices, grouping };
          const own = grouping === choices.grouping ? '' : `-${grouping}`;
          const p = { ...parts, choices: ch };
          const m = await planSequential(model, req, ch, opts, windows, run.passResume(`sequential${own}`, p, windows), gi === 0 ? curves : undefined, 'merge');
          runs.push(m);
          scores.push({ candidate: 'merge', grouping, nll: m.nll!.nll });
          const pl = await planSequential(model, req, ch, opts, windows, run.passResume(`sequential-planned${own}`, p, windows), undefined, 'planned');
          runs.push(pl);
          scores.push({ candidate: 'planned', grouping, nll: pl.nll!.nll });
        }
        const ph = req.progress?.phase('merge: REAP pruning candidate (statistics pass, then the pruned model)');
        const rc = await reapCandidate(model, windows, choices.groups, !req.dropMtp && !!view.mtp?.length);
        ph?.succeed(`merge: REAP pruning candidate, NLL ${rc.nll.toFixed(4)}`);
        scores.push({ candidate: 'prune-reap', nll: rc.nll });
        const chosen = pickCandidate(scores);
        choice = { chosen, tokens: rc.tokens, candidates: scores };
        // the report's `resumed` is the first candidate's pass (the one a run without the choice has), whichever
        // candidate is written; each other candidate's pass resumes from its own state file
        r = { ...runs[0]!, plan: runs[chosen]?.plan ?? (await reapPlan(model, rc, choices)) };
        req.progress?.info(
          `merge: writing ${candidateName(scores[chosen]!)} (NLL on the calibration windows: ${scores.map((x) => `${candidateName(x)} ${x.nll.toFixed(4)}`).join(', ')})`,
        );
      }
      plan = r.plan;
      if (!req.dryRun) resumed = r.resumed;
      if (curves) {
        keepPerLayer = allocationReport(view.moeLayers, curves, choices.groups, view.routing.topK);
      }
      source = 'calib';
    }
    if (req.savePlan) {
      const needHidden = [getAlign(choices.align), getRouter(choices.router)].find(fromHiddenStates);
      if (plan.mode === 'stats' && needHidden) {
        fail('Usage', `a plan from --stats cannot hold ${needHidden.fromHiddenStates} (they need calibration hidden states): plan with --calib FILE`);
      }
      await run.savePlan(settings, serializePlan(plan));
    }
    const layers = plan.layers.map(layerReport);

    const removed = new Map(layers.map((l) => [l.layer, l.groups.flatMap((g) => g.members.slice(1))]));
    let after = predictedSizes(model.ckpt, view, before, removed);
    let predicted = true;
    if (!req.dryRun) {
      await run.startBackend();
      const { edit, finish } = await planEdit(model, plan, choices, layers, req.progress);
      const phase = req.progress?.phase(`writing ${req.out}`);
      const shard = run.shard(shardDecisions(plan, choices));
      await writeExpertEdit(model, edit, req.out!, { force: req.force, dropMtp: req.dropMtp, ...(shard ? { shard } : {}) });
      finish();
      phase?.succeed(`wrote ${req.out}${req.shard ? ` (shard ${req.shard.index}/${req.shard.count})` : ''}`);
      // a shard holds part of the checkpoint: its sizes stay the plan's prediction
      if (!req.shard) {
        after = await writtenSizes(req.out!);
        predicted = false;
      }
    }
    return {
      tool: 'moe merge',
      ...(view.mtp?.length ? { mtp: req.dropMtp ? { kept: [], dropped: mtpIndices(view) } : { kept: mtpIndices(view), dropped: [] } } : {}),
      model: req.model,
      out: req.out,
      dryRun: !!req.dryRun,
      family: view.family,
      numExperts: E,
      groups: choices.groups,
      topK: view.routing.topK,
      choices: { grouping: choices.grouping, align: choices.align, weighting: choices.weighting, router: choices.router },
      mode: plan.mode,
      calibration: { source, path: (req.plan ?? req.stats ?? req.calib)!, tokens: plan.tokens },
      ...(req.savePlan ? { savedPlan: req.savePlan } : {}),
      ...(req.shard ? { shard: { index: req.shard.index, count: req.shard.count } } : {}),
      ...(choice ? { choice } : {}),
      layers,
      ...(keepPerLayer ? { keepPerLayer } : {}),
      sizes: { before, after, predicted },
      memory: run.memory(
        mergeMemoryPhases(model, {
          choices,
          plan,
          ...(pass ? { pass } : {}),
          alignTokens: req.alignTokens ?? MERGE_OPTION_DEFAULTS.alignTokens,
          fitTokens: req.fitTokens ?? MERGE_OPTION_DEFAULTS.fitTokens,
          // the merge candidates' plans (REAP's kept sets are in its statistics term)
          ...(choice ? { choose: { plans: choice.candidates.length - 1 } } : {}),
        }),
      ),
      ...(resumed ? { resumed } : {}),
      seconds: seconds(),
    } satisfies MergeReport;
  });
}
