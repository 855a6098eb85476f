/**
 * `moe decompose`: score -> plan -> apply + write -> report.
 *
 * score   one pass over the model: each MoE layer's units are factorised, each one a task (whitened modes with the
 *         Gram matrices of their routed tokens, collected inside the layer-streamed forward pass on calibration
 *         text) and only each unit's truncation spectrum is kept (a few numbers per rank), not its factors;
 * plan    ranks under the parameter budget, allocated by the shared knapsack on truncation loss; --uniform ranks
 *         follow from shapes alone (no score pass), and --plan FILE loads a saved plan (no score pass either);
 * apply   a second pass: each layer is factorised again when its turn comes (whitened modes recollect its Grams in a
 *   +     second streamed forward pass), cut at the planned ranks, measured, and handed to the writer, which streams
 * write   the factors (moe-lowrank) or dense weights (--materialize) into the output while the pass waits: at most
 *         one layer of factors is alive. --shard i/n factorises and writes only layers l with l % n == i;
 * report  ranks per layer / expert / projection, parameters before and after, predicted vs measured error, and
 *         the estimated peak memory.
 *
 * Each unit's factorisation (and, applying, its cut and measured error) is one task of unit-task.ts: inline with one
 * thread, on the worker pool with more, up to 2 x threads units ahead, consumed in unit order, so the spectra, the
 * plan and the written bytes are the same for any thread count.
 *
 * Memory is bounded by one layer (its weights, its Grams, one unit's factorisation per thread and the inputs of the
 * units in flight, one layer's factors) plus the calibration activations, whatever the number of layers.
 * Recomputing the Grams costs a second forward pass; the alternative, spilling them to disk, would write
 * E (H^2 + I^2) floats per layer (about 7 GB per layer of Mixtral-8x7B in float32), and --plan / --shard jobs need
 * the forward pass anyway.
 */
import type { z } from 'zod';
import type { Engine } from '../../kernels/linalg/matmul.js';
import type { Progress } from '../progress.js';
import { fail } from '../errors.js';
import { loadSwiGLU } from '../model/load.js';
import type { Model } from '../model/open.js';
import { layerOfTensor } from '../model/rewrite.js';
import { shardOwner, type ShardSpec } from '../model/shard.js';
import type { MoeLayerInput, StreamCheckpoint, SwiGLUWeights } from '../runtime/api.js';
import type { MemoryEstimate } from '../runtime/memory.js';
import { streamModel } from '../runtime/stream.js';
import type { DecomposeMode } from './format.js';
import { layerGrams, type LayerGrams } from './grams.js';
import { decomposeMemoryPhases } from './memory.js';
import { getMode } from './methods.js';
import { type DECOMPOSE_OPTIONS, DECOMPOSE_SPEC, DEFAULT_MODE, type DecomposeOptions } from './options.js';
import { parseOptions } from '../pipeline/validate.js';
import { runPipeline } from '../pipeline/engine.js';
import { LayerHandoff, type WriterInfo } from '../pipeline/handoff.js';
import type { PassResume } from '../pipeline/resume.js';
import { budgetOf, planLoss, planRanks, uniformPlan, uniformRank, unitParams, type AllocLoss, type RankPlan } from './plan.js';
import { planRecord, planSettings, validatePlan, windowsDigest, type DecomposePlan } from './planfile.js';
import { factorLayer } from './unit-task.js';
import { layerUnitShapes, type AppliedUnit, type ExpertFactors, type ScoreOptions, type UnitShape, type UnitSummary } from './units.js';
import { describeFusedExperts, factorKey, largestNewTensor, planReplacements, writeDecomposed, type FactorSlot, type LayerFactors } from './write.js';

export { DEFAULT_MODE };
export const REPORT_FILE = 'moe-decompose-report.json';

/**
 * What a caller gives: the options (src/decompose/options.ts, the same for the command line and recipes) plus,
 * for library callers, calibration already in hand and the solver's finer knobs.
 */
export type DecomposeRequest = z.input<typeof DECOMPOSE_OPTIONS> & {
  /** calibration already tokenized (programmatic use, e.g. chained stages); takes the place of --calib */
  windows?: Int32Array[];
  /** Gram matrices already collected (collectGrams) for this model: no forward pass (comparing modes and ratios) */
  grams?: { layers: LayerGrams[]; tokens: number };
  engine?: Engine;
  /** how unit losses are scaled before allocation (default 'absolute') */
  allocLoss?: AllocLoss;
  /** smaller-side dimension above which the randomized SVD is used (default 2048; tests lower it) */
  randomizedAbove?: number;
  progress?: Progress;
};
/** The request after validation: every option resolved. */
export type DecomposeRun = DecomposeOptions & Omit<DecomposeRequest, keyof DecomposeOptions>;

export interface UnitReport {
  id: string;
  layer: number;
  proj: string;
  kind: UnitShape['kind'];
  experts: number[];
  shape: [number, number];
  rank: number;
  uniformRank: number;
  params: number;
  dense: number;
  tokens?: number[];
  /** ridge added to the Gram before its Cholesky (absent when the unit was not factorised in this run) */
  ridge?: number;
  /** sqrt of the spectrum's dropped energy (activation space for whitened modes); absent with --plan --dry-run */
  predictedError?: number;
  /** measured on the factors: each expert's own Gram (activation space) or weight space; absent in dry runs */
  measuredError?: number;
  /** measured / the same norm of the original weights; absent in dry runs */
  relativeError?: number;
}

export interface DecomposeReport {
  tool: 'moe decompose';
  mode: DecomposeMode;
  ratio: number;
  allocation: 'uniform' | 'knapsack';
  optimal: boolean;
  solveMs: number;
  /** seed of the randomized SVD */
  seed: number;
  /** where the ranks came from: the knapsack on this run's spectra, uniform shares, or a plan file */
  plan?: { source: 'allocated' | 'uniform' | 'file'; path?: string; saved?: string };
  model: string;
  out?: string;
  dryRun: boolean;
  materialize: boolean;
  family: string;
  calibration: { source: 'calib' | 'none'; path?: string; tokens: number };
  params: { expertBefore: number; expertAfter: number; budget: number; achievedRatio: number };
  /** the planned total loss (sum of weighted squared errors); absent when no spectrum of the whole plan is known
   *  (a --uniform shard, or a plan file without one) */
  plannedLoss?: number;
  /** a --shard job: which part, and the MoE layers it factorised (its units are the ones listed) */
  shard?: { index: number; count: number; layers: number[] };
  units: UnitReport[];
  output?: { tensors: number; bytes: number };
  /** estimated peak memory (src/runtime/memory.ts), from shapes and the plan */
  memory: MemoryEstimate;
  /** a forward score pass writing an output: it resumed after this layer (-1: from the start), and the MoE layers it computed */
  resumed?: { afterLayer: number; computed: number[] };
  /** a forward apply pass (whitened, shared-*, base-delta with --calib): it resumed after this layer (-1: from the
   *  start) of a killed run's, whose tensors were all written, and the MoE layers it factorised again */
  resumedApply?: { afterLayer: number; computed: number[] };
  /** experts stored fused in 3-D tensors (gpt_oss, granitemoe, transformers-5 layouts): what was read, what is written */
  fusedExperts?: { read: string; written: string };
  seconds: number;
}

/** Flag-level checks, before any file is opened (the options' schema and checkDecompose); returns the mode. */
export function validateRequest(req: DecomposeRequest): DecomposeMode {
  return parseOptions(DECOMPOSE_SPEC, req).mode;
}

/** Where the apply and score passes get each MoE layer's experts and Grams. */
type LayerSource = { kind: 'forward'; windows: readonly Int32Array[] } | { kind: 'grams'; layers: LayerGrams[]; tokens: number } | { kind: 'weights' };

/** Visit one MoE layer: its experts (float32, as loaded) and, when calibrated, its Grams; both fetched on demand. */
type LayerVisit = (layer: number, experts: () => Promise<SwiGLUWeights[]>, grams: () => LayerGrams | undefined) => Promise<void>;

async function loadExperts(model: Model, layer: number): Promise<SwiGLUWeights[]> {
  const block = model.view.layers[layer]!.block;
  if (block.kind !== 'moe') fail('ComputeError', `internal: layer ${layer} is not an MoE layer`);
  const experts = [];
  for (const refs of block.experts) experts.push(await loadSwiGLU(model.ckpt, refs));
  return experts;
}

/**
 * Walk the MoE layers in order; returns the calibration tokens that reached them (0 without calibration).
 * `last`: the last layer the caller needs (a shard's last layer): the forward pass stops after it.
 */
async function walkLayers(model: Model, src: LayerSource, visit: LayerVisit, last?: number, checkpoint?: StreamCheckpoint): Promise<number> {
  if (src.kind === 'forward') {
    let tokens = 0;
    await streamModel(
      model,
      src.windows,
      {
        async onMoeLayer(input: MoeLayerInput) {
          tokens = input.T;
          await visit(
            input.layer.index,
            async () => input.experts,
            () => layerGrams(input, model.view.forward.activation, true, model.view.routing.weightsInput),
          );
        },
        weightedInputs: true,
      },
      { stopAfterLayer: last ?? model.view.moeLayers[model.view.moeLayers.length - 1], ...(checkpoint ? { checkpoint } : {}) },
    );
    // a resumed pass may visit no layer: the tokens are the windows'
    return checkpoint ? src.windows.reduce((a, w) => a + w.length, 0) : tokens;
  }
  if (src.kind === 'grams') {
    const layers = src.layers.map((g) => g.layer);
    if (layers.join(',') !== model.view.moeLayers.join(','))
      fail('InvalidStats', `the Gram matrices cover layers ${layers.join(', ')}, the model's MoE layers are ${model.view.moeLayers.join(', ')}`);
    for (const g of src.layers) {
      const layer = model.view.layers[g.layer];
      if (layer?.block.kind !== 'moe' || layer.block.experts.length !== g.experts.length)
        fail('InvalidStats', `Gram matrices of layer ${g.layer} do not match the model`);
      await visit(
        g.layer,
        () => loadExperts(model, g.layer),
        () => g,
      );
    }
    return src.tokens;
  }
  for (const l of model.view.moeLayers)
    await visit(
      l,
      () => loadExperts(model, l),
      () => undefined,
    );
  return 0;
}

/** The Gram matrices of every MoE layer in one forward pass (kept in memory: E (H^2 + I^2) floats per layer). */
export async function collectGrams(model: Model, windows: readonly Int32Array[]): Promise<{ layers: LayerGrams[]; tokens: number }> {
  const layers: LayerGrams[] = [];
  let tokens = 0;
  await streamModel(model, windows, {
    onMoeLayer(input: MoeLayerInput) {
      tokens = input.T;
      layers.push(layerGrams(input, model.view.forward.activation, true, model.view.routing.weightsInput));
    },
    weightedInputs: true,
  });
  return { layers, tokens };
}

/** Every unit of the model from shapes, in visiting order (layer, projection, expert). */
export function modelUnitShapes(model: Model, opts: ScoreOptions): UnitShape[] {
  const out: UnitShape[] = [];
  for (const l of model.view.moeLayers) {
    const block = model.view.layers[l]!.block;
    if (block.kind !== 'moe') continue;
    const e0 = block.experts[0]!;
    out.push(...layerUnitShapes(l, block.experts.length, (proj) => ({ m: e0[proj].outFeatures, n: e0[proj].inFeatures }), opts));
  }
  return out;
}

function checkUnit(u: UnitSummary, shape: UnitShape | undefined): UnitShape {
  if (!shape || shape.maxRank !== u.maxRank || shape.m !== u.m || shape.n !== u.n) {
    fail(
      'ComputeError',
      `internal: unit ${u.id} factorised to rank ${u.maxRank} [${u.m}, ${u.n}], planned from shapes as ${shape ? `rank ${shape.maxRank} [${shape.m}, ${shape.n}]` : 'absent'}`,
    );
  }
  return shape;
}

/** A unit's summary in the resume state: JSON, with its spectrum as the bytes of its float64 values (exact). */
type SavedSummary = Omit<UnitSummary, 'tail'> & { tail: string };
const saveSummary = (u: UnitSummary): SavedSummary => ({ ...u, tail: Buffer.from(u.tail.buffer, u.tail.byteOffset, u.tail.byteLength).toString('base64') });
function loadSummary(u: SavedSummary): UnitSummary {
  const b = Buffer.from(u.tail, 'base64');
  const tail = new Float64Array(b.byteLength / 8);
  new Uint8Array(tail.buffer).set(b);
  return { ...u, tail };
}

/** Score: every unit's truncation spectrum, one unit's factorisation alive per thread; only the summaries are kept. */
async function scorePass(
  model: Model,
  src: LayerSource,
  shapes: ReadonlyMap<string, UnitShape>,
  opts: ScoreOptions,
  progress?: Progress,
  resume?: PassResume<SavedSummary[]>,
): Promise<{ units: UnitSummary[]; tokens: number; resumed?: ReturnType<PassResume<SavedSummary[]>['report']> }> {
  const units: UnitSummary[] = [];
  let done = 0;
  const total = model.view.moeLayers.length;
  const phase = progress?.phase(src.kind === 'weights' ? 'score: spectra per expert' : 'score: Gram matrices and spectra per expert');
  const tokens = await walkLayers(
    model,
    src,
    async (layer, experts, grams) => {
      const mine: UnitSummary[] = [];
      // each unit's factorisation is a task (on the worker pool with --threads > 1), consumed in unit order
      for await (const { summary } of factorLayer(layer, await experts(), grams(), opts)) {
        checkUnit(summary, shapes.get(summary.id));
        mine.push(summary);
      }
      units.push(...mine);
      resume?.record(layer, mine.map(saveSummary));
      phase?.tick(++done, total, 'layers');
    },
    undefined,
    resume?.checkpoint,
  );
  const resumed = resume?.report();
  if (resumed && resumed.afterLayer >= 0) {
    // the killed run's layers first (their spectra from the saved state), then this run's
    const all = resume!.entries().flatMap((l) => l.map(loadSummary));
    phase?.succeed(`score: ${total} layers (resumed after layer ${resumed.afterLayer}: ${done} computed), ${all.length} units, ${tokens} calibration tokens`);
    return { units: all, tokens, resumed };
  }
  phase?.succeed(`score: ${done} layers, ${units.length} units${tokens ? `, ${tokens} calibration tokens` : ''}`);
  return { units, tokens, ...(resumed ? { resumed } : {}) };
}

interface AppliedSummary {
  unit: UnitSummary;
  applied: Omit<AppliedUnit, 'factors'>;
}
/** An applied unit in the apply pass's resume state (its spectrum as float64 bytes, as in the score pass's). */
type SavedApplied = { unit: SavedSummary; applied: AppliedSummary['applied'] };

/** The apply pass's hidden-state resume, made once the pass knows which saved layers the writer has finished. */
type ApplyResume = (accept: (after: number) => Promise<boolean>) => PassResume<SavedApplied[]>;

/**
 * Apply and write, concurrently: the apply pass factorises each of this job's layers at the planned ranks (again:
 * the score pass kept only spectra) and hands the layer's factors to the writer, which streams them into the output
 * while the pass waits; at most one layer of factors is alive.
 */
async function applyAndWrite(
  model: Model,
  req: DecomposeRun,
  mode: DecomposeMode,
  src: LayerSource,
  shapes: readonly UnitShape[],
  ranks: readonly number[],
  opts: ScoreOptions,
  shard: ShardSpec | undefined,
  makeResume?: ApplyResume,
): Promise<{
  units: AppliedSummary[];
  tokens: number;
  output: { tensors: number; bytes: number };
  resumed?: { afterLayer: number; computed: number[] };
}> {
  const byId = new Map(shapes.map((u, i) => [u.id, { shape: u, rank: ranks[i]! }]));
  const own = (layer: number) => !shard || shardOwner(layer, shard.count) === shard.index;
  const handoff = new LayerHandoff<LayerFactors, WriterInfo>();
  const units: AppliedSummary[] = [];
  const ownLayers = model.view.moeLayers.filter(own);
  let done = 0;
  const phase = req.progress?.phase(
    `apply + write: ${req.out}${req.materialize ? ' (dense)' : ''}${shard ? ` (shard ${shard.index}/${shard.count}: layers ${ownLayers.join(', ')})` : ''}`,
  );
  const slots = factorSlots(shapes, ranks);
  const writeOpts = { mode, ratio: req.ratio, materialize: req.materialize };
  // resume (a killed run restarted with the same command): after a saved layer only if every tensor this job makes
  // for the layers up to it is in the writer's journal, so the writer never asks for factors the pass skips
  const resume = makeResume?.(async (after) => {
    // a writer that fails before it opens (an existing output without --force) rejects this wait too
    const w = await handoff.whenOpen();
    for (const fresh of planReplacements(model, slots, writeOpts).removed.values())
      for (const t of fresh) {
        const l = layerOfTensor(model.view, t.spec.name);
        if (l <= after && own(l) && !w.isWritten(t.spec.name)) return false;
      }
    return true;
  });
  const walk = (visit: LayerVisit) =>
    ownLayers.length ? walkLayers(model, src, visit, ownLayers[ownLayers.length - 1], resume?.checkpoint) : Promise.resolve(0);
  const apply = walk(async (layer, experts, grams) => {
    if (!own(layer)) return;
    const factors = new Map<string, ExpertFactors>();
    const mine: AppliedSummary[] = [];
    // factorised and cut at the planned rank as one task per unit (on the pool with --threads > 1), in unit order;
    // a unit the plan lacks is cut at 0 and refused by checkUnit before anything of it is used
    for await (const r of factorLayer(layer, await experts(), grams(), opts, (id) => byId.get(id)?.rank ?? 0)) {
      const planned = byId.get(r.summary.id);
      checkUnit(r.summary, planned?.shape);
      const { factors: fs, ...applied } = r.applied!;
      for (const f of fs) factors.set(factorKey(f.expert, f.proj), f);
      mine.push({ unit: r.summary, applied });
    }
    units.push(...mine);
    resume?.record(
      layer,
      mine.map((a) => ({ unit: saveSummary(a.unit), applied: a.applied })),
    );
    handoff.publish(layer, factors);
    phase?.tick(++done, ownLayers.length, 'layers');
    await handoff.released(layer);
  }).then(
    (tokens) => {
      handoff.close();
      return tokens;
    },
    (e: unknown) => {
      handoff.fail(e);
      throw e;
    },
  );
  const write = writeDecomposed(model, slots, (l) => handoff.take(l), {
    out: req.out!,
    force: req.force,
    ...writeOpts,
    shard,
    onOpen: (info) => handoff.opened(info),
  }).then(
    (r) => {
      handoff.finish();
      return r;
    },
    (e: unknown) => {
      handoff.fail(e);
      throw e;
    },
  );
  const [a, w] = await Promise.allSettled([apply, write]);
  // the first failure is the cause; the other side fails with the same error through the handoff
  if (a.status === 'rejected') throw a.reason;
  if (w.status === 'rejected') throw w.reason;
  const resumed = resume?.report();
  const after = resumed && resumed.afterLayer >= 0 ? ` (resumed after layer ${resumed.afterLayer}: ${done} computed)` : '';
  phase?.succeed(
    `apply + write: ${done} layers${after}, ${w.value.tensors} tensors, ${(w.value.bytes / 2 ** 20).toFixed(1)} MiB${shard ? ` (shard ${shard.index}/${shard.count})` : ''}`,
  );
  // a resumed pass: the killed run's layers first (from the saved state), then this run's
  const all = resumed && resumed.afterLayer >= 0 ? resume!.entries().flatMap((l) => l.map((a) => ({ unit: loadSummary(a.unit), applied: a.applied }))) : units;
  return { units: all, tokens: a.value, output: { tensors: w.value.tensors, bytes: w.value.bytes }, ...(resumed ? { resumed } : {}) };
}

/** The write plan's factored linears: one per expert and projection, at its unit's planned rank. */
export function factorSlots(shapes: readonly UnitShape[], ranks: readonly number[]): FactorSlot[] {
  const slots: FactorSlot[] = [];
  shapes.forEach((u, i) => {
    const rank = ranks[i]!;
    for (const expert of u.experts) {
      slots.push({
        layer: u.layer,
        expert,
        proj: u.proj,
        rank,
        ...(u.kind === 'shared-input' ? { shared: 'v' as const } : u.kind === 'shared-output' ? { shared: 'u' as const } : {}),
        ...(u.kind === 'delta' ? { base: true } : {}),
      });
    }
  });
  return slots;
}

function unitReport(shape: UnitShape, rank: number, ratio: number, unit?: UnitSummary, applied?: AppliedSummary['applied']): UnitReport {
  const r: UnitReport = {
    id: shape.id,
    layer: shape.layer,
    proj: shape.proj,
    kind: shape.kind,
    experts: shape.experts,
    shape: [shape.m, shape.n],
    rank,
    uniformRank: uniformRank(shape, ratio),
    params: unitParams(shape, rank),
    dense: shape.dense,
  };
  if (unit) {
    if (unit.tokens) r.tokens = unit.tokens;
    r.ridge = unit.ridge;
    r.predictedError = Math.sqrt(unit.tail[Math.min(rank, unit.tail.length - 1)]!);
  }
  if (applied) {
    r.measuredError = applied.measured;
    r.relativeError = applied.relative;
  }
  return r;
}

const DECOMPOSE_PIPELINE = { tool: 'decompose', spec: DECOMPOSE_SPEC, reportFile: REPORT_FILE, backendFirst: true } as const;

export async function decompose(request: DecomposeRequest): Promise<DecomposeReport> {
  return runPipeline(DECOMPOSE_PIPELINE, request, async (run) => {
    const { model } = run;
    const req: DecomposeRun = run.o;
    const mode = req.mode;
    if (model.view.moeLayers.length === 0) fail('InvalidConfig', `${req.model} has no MoE layers to decompose`);
    // checked before the calibration pass, so an impossible budget fails in the first second, not after minutes
    const E = model.view.dims.numExperts;
    getMode(mode).check?.({ ratio: req.ratio, E });
    const seed = req.seed;
    const opts: ScoreOptions = { mode, engine: req.engine, ratio: req.ratio, seed, randomizedAbove: req.randomizedAbove };

    // where layers come from: precollected Grams, a calibration forward pass, or the weights alone
    let src: LayerSource;
    let calibration: DecomposeReport['calibration'] = { source: 'none', tokens: 0 };
    let digest: string | null = null;
    let seqLen = 0;
    if (req.grams) {
      src = { kind: 'grams', layers: req.grams.layers, tokens: req.grams.tokens };
      calibration = { source: 'calib', path: req.calib ?? '(Grams)', tokens: req.grams.tokens };
      digest = `grams:${req.grams.tokens}`;
    } else if (req.calib || req.windows) {
      const windows = req.windows ?? (await run.windows());
      src = { kind: 'forward', windows };
      calibration = { source: 'calib', path: req.calib ?? '(windows)', tokens: windows.reduce((a, w) => a + w.length, 0) };
      digest = windowsDigest(windows);
      seqLen = windows.reduce((a, w) => Math.max(a, w.length), 0);
    } else {
      src = { kind: 'weights' };
    }
    const settings = planSettings({ ...req, mode, seed }, digest);
    const shapes = modelUnitShapes(model, opts);
    const shapeById = new Map(shapes.map((u) => [u.id, u]));

    // plan: from a file, from the spectra (score pass), or, uniform, from shapes alone
    let ranks: number[];
    let planned: Omit<DecomposePlan, 'ranks'>;
    let scored: UnitSummary[] | undefined;
    let source: NonNullable<DecomposeReport['plan']>['source'];
    let resumed: DecomposeReport['resumed'];
    if (req.plan) {
      const p = validatePlan(await run.loadPlan(settings), req.plan, shapes, req.ratio);
      ranks = p.list;
      planned = { solver: p.solver, optimal: p.optimal, solveMs: p.solveMs, ...(p.loss !== undefined ? { loss: p.loss } : {}) };
      source = 'file';
      req.progress?.phase(`plan: ${req.plan}`).succeed(`plan: ${shapes.length} units from ${req.plan} (${p.solver})`);
    } else if (!req.uniform || req.dryRun) {
      // a forward score pass writing an output resumes after the last layer a killed run of the same command finished
      const resume =
        src.kind === 'forward' && !req.dryRun
          ? run.passResume<SavedSummary[]>('score', { settings, opts: { ...opts, engine: undefined } }, src.windows)
          : undefined;
      const r = await scorePass(model, src, shapeById, opts, req.progress, resume);
      if (r.resumed) resumed = r.resumed;
      scored = r.units;
      if (r.tokens) calibration.tokens = r.tokens;
      if (scored.length !== shapes.length || scored.some((u, i) => u.id !== shapes[i]!.id))
        fail('ComputeError', 'internal: the score pass visited other units than planned from shapes');
      const planPhase = req.progress?.phase(`plan: ranks for ${scored.length} units at ratio ${req.ratio}${req.uniform ? ' (uniform)' : ''}`);
      const plan: RankPlan = await planRanks(scored, req.ratio, !!req.uniform, req.allocSeconds, req.allocLoss);
      planPhase?.succeed(`plan: ${plan.params} of ${plan.dense} expert parameters (${(plan.params / plan.dense).toFixed(4)}), ${plan.solver}`);
      ranks = plan.ranks;
      planned = { solver: plan.solver, optimal: plan.optimal, solveMs: plan.solveMs, loss: plan.loss };
      source = plan.solver === 'uniform' ? 'uniform' : 'allocated';
    } else {
      const plan = uniformPlan(shapes, req.ratio);
      ranks = plan.ranks;
      planned = { solver: 'uniform', optimal: true, solveMs: 0 };
      source = 'uniform';
    }
    const { budget, dense } = budgetOf(shapes, req.ratio);
    const params = shapes.reduce((a, u, i) => a + unitParams(u, ranks[i]!), 0);
    const record = planRecord(shapes, ranks);
    if (req.savePlan) {
      await run.savePlan(settings, { ranks: record, ...planned } satisfies DecomposePlan);
      req.progress?.phase('plan').succeed(`plan saved to ${req.savePlan}`);
    }

    const writing = !req.dryRun;
    // the estimate is the real run's (a dry run predicts the run it plans): it scores unless ranks come from a plan
    // file or from shapes (--uniform), and it writes
    const memory = run.memory(
      decomposeMemoryPhases(model, shapes, ranks, getMode(mode), {
        calibrated: src.kind === 'forward',
        grams: src.kind !== 'weights',
        tokens: calibration.tokens,
        seqLen,
        scoring: !req.plan && !req.uniform,
        writing: true,
        materialize: !!req.materialize,
        largestNew: largestNewTensor(model, factorSlots(shapes, ranks), { mode, ratio: req.ratio, materialize: req.materialize }),
      }),
    );

    let applied: AppliedSummary[] | undefined;
    let output: DecomposeReport['output'];
    const shard = run.shard({ settings, ranks: record });
    let resumedApply: DecomposeReport['resumedApply'];
    if (writing) {
      // a forward apply pass resumes after the last layer a killed run of the same command finished writing
      const windows = src.kind === 'forward' ? src.windows : undefined;
      const makeResume: ApplyResume | undefined = windows
        ? (accept) =>
            run.passResume<SavedApplied[]>(
              'apply',
              {
                settings,
                opts: { ...opts, engine: undefined },
                ranks: record,
                materialize: !!req.materialize,
                shard: shard ? [shard.index, shard.count] : null,
              },
              windows,
              { accept },
            )
        : undefined;
      const r = await applyAndWrite(model, req, mode, src, shapes, ranks, opts, shard, makeResume);
      applied = r.units;
      output = r.output;
      if (r.resumed) resumedApply = r.resumed;
      if (r.tokens) calibration.tokens = r.tokens;
    }

    // units: the ones this job factorised (a shard: its layers), else every unit of the plan
    const scoredById = new Map(scored?.map((u) => [u.id, u]));
    const units: UnitReport[] = applied
      ? applied.map((a) => unitReport(shapeById.get(a.unit.id)!, a.applied.rank, req.ratio, a.unit, a.applied))
      : shapes.map((u, i) => unitReport(u, ranks[i]!, req.ratio, scoredById.get(u.id)));
    let plannedLoss = planned.loss;
    if (plannedLoss === undefined && applied && applied.length === shapes.length) {
      plannedLoss = planLoss(
        applied.map((a) => a.unit),
        applied.map((a) => a.applied.rank),
        req.allocLoss,
      );
    }

    const fusedExperts = describeFusedExperts(model, !!req.materialize);
    const report: DecomposeReport = {
      tool: 'moe decompose',
      mode,
      ratio: req.ratio,
      allocation: planned.solver,
      optimal: planned.optimal,
      solveMs: planned.solveMs,
      seed,
      plan: { source, ...(req.plan ? { path: req.plan } : {}), ...(req.savePlan ? { saved: req.savePlan } : {}) },
      model: req.model,
      out: req.out,
      dryRun: !!req.dryRun,
      materialize: !!req.materialize,
      family: model.view.family,
      calibration,
      params: { expertBefore: dense, expertAfter: params, budget, achievedRatio: params / dense },
      ...(plannedLoss !== undefined ? { plannedLoss } : {}),
      ...(req.shard && writing
        ? {
            shard: {
              index: req.shard.index,
              count: req.shard.count,
              layers: model.view.moeLayers.filter((l) => shardOwner(l, req.shard!.count) === req.shard!.index),
            },
          }
        : {}),
      units,
      ...(output ? { output } : {}),
      memory,
      ...(resumed ? { resumed } : {}),
      ...(resumedApply ? { resumedApply } : {}),
      ...(fusedExperts ? { fusedExperts } : {}),
      seconds: 0,
    };
    report.seconds = run.seconds();
    return report;
  });
}
