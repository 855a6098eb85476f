/**
 * Perplexity of a checkpoint on a text file, and its comparison with a base checkpoint, under the windowing
 * convention of src/data/windows.ts: perplexity = exp(mean negative log-likelihood over all scored tokens).
 * With a base: both models run on the same windows (the evaluated model's tokenizer), their final hidden states
 * meet at the lm_head, and per scored token we get KL(base || model) and whether the argmax tokens agree.
 *
 * Dynamic expert skipping (Lu et al. 2024, rule in src/runtime/routing.ts) plugs into the routing path through the
 * stream's onRouting hook: a fixed beta, or beta per layer = median w2/w1 measured on calibration text.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadWindowSet, type WindowSet } from '../data/windows.js';
import { fail } from '../errors.js';
import { openModel, type Model } from '../model/open.js';
import type { Progress } from '../progress.js';
import type { Routing, StreamHooks } from '../runtime/api.js';
import { activeBackend } from '../runtime/backend.js';
import { applySkip, medianSecondRatio } from '../runtime/routing.js';
import { scoreHeads } from '../runtime/head.js';
import { prestartWorkers } from '../runtime/pool.js';
import { streamModel } from '../runtime/stream.js';

export interface EvalRequest {
  model: string;
  data: string;
  seqLen?: number;
  maxTokens?: number;
  base?: string;
  /** dynamic expert skipping: a beta for every layer, or 'auto' (median w2/w1 per layer on calibration text) */
  skip?: number | 'auto';
  calib?: string;
  calibTokens?: number;
  /** set when --data / --calib are pre-tokenized (--data-ids / --calib-ids): one JSON array of ids per line */
  dataIds?: string;
  calibIds?: string;
  progress?: Progress;
}

export interface SkipReport {
  beta: number[] | number;
  /** routed token-expert pairs the model would compute, and how many the rule skipped */
  slots: number;
  skipped: number;
  savedFraction: number;
}

export interface EvalReport {
  model: string;
  data: string;
  perplexity: number;
  /** scored tokens */
  tokens: number;
  meanNll: number;
  seqLen: number;
  windows: number;
  bos: number | null;
  backend: string;
  seconds: number;
  tokensPerSecond: number;
  base?: {
    model: string;
    perplexity: number;
    perplexityDelta: number;
    perplexityRatio: number;
    /** mean over scored tokens of KL(base || model), nats */
    meanKl: number;
    /** share of scored tokens where both models' most likely next token is the same */
    top1Agreement: number;
  };
  skip?: SkipReport;
}

async function sameTokenizer(a: string, b: string): Promise<boolean> {
  const read = (d: string) => readFile(join(d, 'tokenizer.json'), 'utf8').catch(() => undefined);
  const [x, y] = await Promise.all([read(a), read(b)]);
  return x === undefined || y === undefined || x === y;
}

function checkSameShape(a: Model, b: Model): void {
  if (a.view.dims.vocab !== b.view.dims.vocab)
    fail('InvalidConfig', `--base has a vocabulary of ${b.view.dims.vocab}, the model ${a.view.dims.vocab}: they cannot be compared token by token`);
}

/** beta per layer from calibration text: the median of w2/w1 of every MoE layer's routing. */
export async function skipBetas(model: Model, windows: Int32Array[]): Promise<number[]> {
  const betas = new Array<number>(model.view.layers.length).fill(0);
  await streamModel(model, windows, {
    onRouting(layer, r) {
      betas[layer] = medianSecondRatio(r);
    },
  });
  return betas;
}

function skipHook(model: Model, beta: number[] | number, tally: { slots: number; skipped: number }): StreamHooks['onRouting'] {
  const renorm = model.view.routing.normalize;
  return (layer: number, r: Routing) => {
    const b = typeof beta === 'number' ? beta : (beta[layer] ?? 0);
    const s = applySkip(r, b, renorm);
    tally.slots += r.T * r.k;
    tally.skipped += s.skipped;
    return s.routing;
  };
}

export async function evaluate(req: EvalRequest): Promise<EvalReport> {
  const started = Date.now();
  if (req.skip !== undefined && req.skip !== 'auto' && !(req.skip >= 0 && req.skip <= 1))
    fail('Usage', `--skip must be 'auto' or a beta in [0, 1], got ${req.skip}`);
  if (req.skip === 'auto' && !req.calib) fail('Usage', '--skip auto estimates beta on calibration text: give --calib FILE (or a fixed --skip BETA)');
  const model = await openModel(req.model);
  // the forward passes below run as window shares at more than one thread: their workers start while this thread
  // tokenizes
  const backend = activeBackend();
  if (backend) await prestartWorkers(backend);
  let base: Model | undefined;
  try {
    const p = req.progress;
    const ph = p?.phase('tokenizing');
    const set: WindowSet = await loadWindowSet(req.model, req.data, {
      format: req.dataIds ? 'ids' : 'text',
      ...(req.seqLen !== undefined ? { seqLen: req.seqLen } : {}),
      ...(req.maxTokens !== undefined ? { maxTokens: req.maxTokens } : {}),
    });
    ph?.succeed(
      `tokenized ${set.lines} lines: ${set.streamTokens} tokens -> ${set.windows.length} windows of ${set.seqLen}${set.bos === null ? ' (no BOS)' : ` (+BOS ${set.bos})`}`,
    );

    let skip: SkipReport | undefined;
    const hooks: StreamHooks = {};
    const tally = { slots: 0, skipped: 0 };
    if (req.skip !== undefined) {
      let beta: number[] | number = req.skip === 'auto' ? 0 : req.skip;
      if (req.skip === 'auto') {
        const cal = await loadWindowSet(req.model, req.calib!, {
          format: req.calibIds ? 'ids' : 'text',
          seqLen: set.seqLen,
          ...(req.calibTokens !== undefined ? { maxTokens: req.calibTokens } : {}),
        });
        const pc = p?.phase('skip: beta per layer on calibration text');
        beta = await skipBetas(model, cal.windows);
        pc?.succeed(`skip: beta per layer ${beta.map((b) => b.toFixed(3)).join(' ')}`);
      }
      hooks.onRouting = skipHook(model, beta, tally);
      skip = { beta, slots: 0, skipped: 0, savedFraction: 0 };
    }

    const L = model.view.layers.length;
    const run = async (m: Model, label: string, h: StreamHooks) => {
      const ph2 = p?.phase(`${label}: forward`);
      const r = await streamModel(m, set.windows, h, { returnHidden: true, onProgress: (l) => ph2?.tick(l, L, 'layers') });
      ph2?.succeed(`${label}: ${L} layers`);
      return r;
    };
    let report: EvalReport;
    if (req.base) {
      base = await openModel(req.base);
      checkSameShape(model, base);
      if (!(await sameTokenizer(req.model, req.base)))
        p?.warn(`--base ${req.base} has a different tokenizer.json: both models read the evaluated model's tokens`);
      const rb = await run(base, 'base', {});
      const rm = await run(model, 'model', hooks);
      const ps = p?.phase('scoring: lm_head, KL, top-1');
      const s = await scoreHeads(
        [
          { model: base, hidden: rb.hidden! },
          { model, hidden: rm.hidden! },
        ],
        set.windows,
      );
      ps?.succeed();
      const ppl = Math.exp(s.nll[1]! / s.scored);
      const pplBase = Math.exp(s.nll[0]! / s.scored);
      report = baseReport(req, set, s.nll[1]!, s.scored, started);
      report.base = {
        model: req.base,
        perplexity: pplBase,
        perplexityDelta: ppl - pplBase,
        perplexityRatio: ppl / pplBase,
        meanKl: s.kl! / s.scored,
        top1Agreement: s.top1Agree! / s.scored,
      };
    } else {
      const rm = await run(model, 'model', hooks);
      const ps = p?.phase('scoring: lm_head');
      const s = await scoreHeads([{ model, hidden: rm.hidden! }], set.windows);
      ps?.succeed();
      report = baseReport(req, set, s.nll[0]!, s.scored, started);
    }
    if (skip) {
      skip.slots = tally.slots;
      skip.skipped = tally.skipped;
      skip.savedFraction = tally.slots ? tally.skipped / tally.slots : 0;
      report.skip = skip;
    }
    report.seconds = (Date.now() - started) / 1000;
    report.tokensPerSecond = report.tokens / Math.max(report.seconds, 1e-9);
    return report;
  } finally {
    await model.ckpt.close();
    await base?.ckpt.close();
  }
}

function baseReport(req: EvalRequest, set: WindowSet, nll: number, scored: number, started: number): EvalReport {
  if (scored !== set.scoredTokens) fail('ComputeError', `internal: scored ${scored} tokens, the windows hold ${set.scoredTokens}`);
  const mean = nll / scored;
  if (!Number.isFinite(mean)) fail('NonFinite', `the model's log-likelihood is not finite (NaN or Inf in the weights or activations)`);
  return {
    model: req.model,
    data: req.data,
    perplexity: Math.exp(mean),
    tokens: scored,
    meanNll: mean,
    seqLen: set.seqLen,
    windows: set.windows.length,
    bos: set.bos,
    backend: activeBackend() ?? 'none',
    seconds: (Date.now() - started) / 1000,
    tokensPerSecond: 0,
  };
}
