/**
 * Train the project's quality fixture: a small Mixtral (8 experts, top-2) on real English text, written as a
 * Hugging Face checkpoint (bf16 safetensors + config + byte-level BPE tokenizer) to test/fixtures/tiny-mixtral,
 * with the held-out and calibration text in test/fixtures/text.
 *
 *   npx tsx scripts/train-fixture.ts [--minutes 25] [--seed 1] [--batch 16] [--seq 128] [--lr 3e-3] [--out DIR]
 *       [--text-out DIR] [--resume DIR] [--experts 8] [--top-k 2] [--aux-coef 0.02] [--hidden 128] [--intermediate 256]
 *
 * --minutes is a wall-clock budget for the training loop: the step count is estimated after 30 steps and re-estimated
 * every 25 steps from the recent step rate, so a machine whose load changes still ends on time (the cosine schedule
 * follows the revised count).
 *
 * --resume continues from a previous run's checkpoint (fresh optimizer state and lr schedule); TRAINING.json then
 * lists each phase.
 *
 * Afterwards the held-out perplexity (seq-len 128 and 256, the runtime's window convention) and per-layer expert
 * usage are measured on the written bf16 weights, read back from disk, and saved in TRAINING.json together with
 * the untrained initialisation's perplexity.
 */
import '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Checkpoint } from '../src/io/checkpoint.js';
import { editJsonText } from '../src/model/configjson.js';
import { bf16BitsToF32, f32ToBf16Bits, fromF32 } from '../src/io/dtype.js';
import { CheckpointWriter } from '../src/io/writer.js';
import { makeSplits } from './tokenizer/corpus.js';
import { BOS_ID, BpeEncoder, EOS_ID, SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG, UNK_ID, tokenizerJson, trainBpe } from './tokenizer/bpe.js';
import { encodeLines, windowAt } from './fixture/data.js';
import { forward, initParams, mulberry32, paramShapes, ropeTables, type FixtureDims, type RopeTables, type Weights } from './fixture/model.js';
import { referenceNll } from './fixture/reference.js';
import { registerGradients } from './fixture/gradients.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : dflt;
}

/** MixtralConfig fields that hold floats (transformers 5 types them float, or float | int with a float default) */
const FIXTURE_FLOAT_KEYS = new Set(['attention_dropout', 'initializer_range', 'rms_norm_eps', 'rope_theta', 'router_aux_loss_coef', 'router_jitter_noise']);
const ROOT = resolve(import.meta.dirname, '..');
const OUT = resolve(arg('out', join(ROOT, 'test/fixtures/tiny-mixtral')));
const TEXT_OUT = resolve(arg('text-out', join(ROOT, 'test/fixtures/text')));
const MINUTES = Number(arg('minutes', '25'));
const SEED = Number(arg('seed', '1'));
const BATCH = Number(arg('batch', '16'));
const SEQ = Number(arg('seq', '128'));
/** smoke-test overrides: fixed step count, and held-out windows per evaluation */
const FIXED_STEPS = Number(arg('steps', '0'));
const EVAL_WINDOWS = Number(arg('eval-windows', 'Infinity'));
/** continue training from a previous run's output directory */
const RESUME = process.argv.includes('--resume') ? resolve(arg('resume', '')) : undefined;
const VOCAB = Number(arg('vocab', '2048'));
const PEAK_LR = Number(arg('lr', '3e-3'));
/** load-balancing loss weight: 0.02 gives the balanced first fixture; a weak one (0 to 0.001) lets routing collapse unevenly */
const AUX_COEF = Number(arg('aux-coef', '0.02'));
const WARMUP = 100;
const EVAL_SEQ = [128, 256];

const dims: FixtureDims = {
  vocab: VOCAB,
  hidden: Number(arg('hidden', '128')),
  layers: 4,
  heads: 4,
  kvHeads: 2,
  headDim: 32,
  experts: Number(arg('experts', '8')),
  topK: Number(arg('top-k', '2')),
  intermediate: Number(arg('intermediate', '256')),
  eps: 1e-5,
  ropeTheta: 10000,
};

function log(...a: unknown[]): void {
  console.log(new Date().toISOString().slice(11, 19), ...a);
}

function toWeights(params: Map<string, Float32Array>): Weights {
  const w: Weights = new Map();
  for (const [name, shape] of paramShapes(dims)) w.set(name, tf.tensor(params.get(name)!, shape));
  return w;
}

function roundBf16(a: Float32Array): Float32Array {
  const o = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) o[i] = bf16BitsToF32(f32ToBf16Bits(a[i]!));
  return o;
}

interface EvalResult {
  seqLen: number;
  windows: number;
  tokens: number;
  meanNll: number;
  ppl: number;
  /** per layer: fraction of all top-k slots that went to each expert */
  expertUsage: number[][];
}

function evaluate(w: Weights, stream: Int32Array, L: number, rt: RopeTables, maxWindows = Infinity): EvalResult {
  const nWin = Math.min(Math.floor(stream.length / L), maxWindows);
  const counts = Array.from({ length: dims.layers }, () => new Float64Array(dims.experts));
  let sum = 0;
  const per = Math.max(1, Math.floor(2048 / L));
  for (let b0 = 0; b0 < nWin; b0 += per) {
    const B = Math.min(per, nWin - b0);
    const ids = new Int32Array(B * L);
    const targets = new Int32Array(B * L);
    for (let r = 0; r < B; r++) windowAt(stream, (b0 + r) * L, L, ids, targets, r);
    tf.tidy(() => {
      const res = forward(dims, w, ids, B, L, rt, targets);
      for (const v of res.nll!.dataSync()) sum += v;
      res.routing.forEach((r, l) => {
        for (const e of r.experts) counts[l]![e]!++;
      });
    });
  }
  const tokens = nWin * L;
  return {
    seqLen: L,
    windows: nWin,
    tokens,
    meanNll: sum / tokens,
    ppl: Math.exp(sum / tokens),
    expertUsage: counts.map((c) => [...c].map((x) => x / (tokens * dims.topK))),
  };
}

async function main(): Promise<void> {
  const t0 = Date.now();
  await tf.setBackend('wasm');
  await tf.ready();
  await registerGradients();

  // ---- text and tokenizer ---------------------------------------------------------------------------------
  const splits = makeSplits();
  await mkdir(TEXT_OUT, { recursive: true });
  await writeFile(join(TEXT_OUT, 'heldout.txt'), splits.heldout.join('\n') + '\n');
  await writeFile(join(TEXT_OUT, 'calib.txt'), splits.calib.join('\n') + '\n');
  const bpe = trainBpe(splits.train, dims.vocab);
  if (bpe.tokens.length !== dims.vocab) throw new Error(`BPE stopped at ${bpe.tokens.length} tokens`);
  const enc = new BpeEncoder(bpe);
  const train = encodeLines(enc, splits.train);
  const heldout = encodeLines(enc, splits.heldout);
  const calib = encodeLines(enc, splits.calib);
  log(`text: train ${train.length} tokens (${splits.trainDocs} Brown docs + nlp-corpus), heldout ${heldout.length}, calib ${calib.length}`);

  await mkdir(OUT, { recursive: true });
  await writeFile(join(OUT, 'tokenizer.json'), JSON.stringify(tokenizerJson(bpe)) + '\n');
  await writeFile(join(OUT, 'tokenizer_config.json'), JSON.stringify(TOKENIZER_CONFIG, null, 2) + '\n');
  await writeFile(join(OUT, 'special_tokens_map.json'), JSON.stringify(SPECIAL_TOKENS_MAP, null, 2) + '\n');

  // ---- model ------------------------------------------------------------------------------------------------
  const rtEval = new Map(EVAL_SEQ.map((L) => [L, ropeTables(dims, L)] as const));
  type Phase = { steps: number; batch: number; seqLen: number; tokens: number; seconds: number; peakLr: number; history: unknown[] };
  let init: Map<string, Float32Array>;
  let untrained: Record<string, unknown>;
  const phases: Phase[] = [];
  if (RESUME) {
    // continue a previous run: its bf16 weights are the start point, its untrained figures (same seed) carry over
    const prev = JSON.parse(await readFile(join(RESUME, 'TRAINING.json'), 'utf8'));
    if (JSON.stringify(prev.dims) !== JSON.stringify(dims) || prev.seed !== SEED) throw new Error('--resume: dims or seed differ');
    if ((await readFile(join(RESUME, 'tokenizer.json'), 'utf8')) !== JSON.stringify(tokenizerJson(bpe)) + '\n') throw new Error('--resume: tokenizer differs');
    const ck = await Checkpoint.open(RESUME);
    init = new Map();
    for (const [name] of paramShapes(dims)) init.set(name, await ck.readF32(name));
    untrained = prev.heldout.untrained;
    const t = prev.training;
    phases.push(
      ...((t.phases as Phase[] | undefined) ?? [
        {
          steps: t.steps,
          batch: t.batch,
          seqLen: t.seqLen,
          tokens: t.tokens,
          seconds: t.seconds,
          peakLr: 3e-3,
          history: t.history,
        },
      ]),
    );
    log(`resuming from ${RESUME} after ${prev.training.tokens} tokens`);
  } else {
    init = initParams(dims, SEED);
    const initW = toWeights(new Map([...init].map(([k, v]) => [k, roundBf16(v)] as const)));
    const before = EVAL_SEQ.map((L) => evaluate(initW, heldout, L, rtEval.get(L)!, EVAL_WINDOWS));
    for (const t of initW.values()) t.dispose();
    untrained = Object.fromEntries(before.map((r) => [String(r.seqLen), { ppl: r.ppl, meanNll: r.meanNll, windows: r.windows, tokens: r.tokens }]));
    log('untrained held-out ppl', before.map((r) => `L=${r.seqLen}: ${r.ppl.toFixed(1)}`).join(', '));
  }

  const names = paramShapes(dims).map(([n]) => n);
  const vars = new Map<string, tf.Variable>();
  for (const [name, shape] of paramShapes(dims)) vars.set(name, tf.variable(tf.tensor(init.get(name)!, shape), true, name));
  const m1 = new Map<string, tf.Variable>();
  const m2 = new Map<string, tf.Variable>();
  for (const n of names) {
    m1.set(n, tf.variable(tf.zerosLike(vars.get(n)!), false));
    m2.set(n, tf.variable(tf.zerosLike(vars.get(n)!), false));
  }
  const decayed = (n: string) => vars.get(n)!.rank === 2 && n !== 'model.embed_tokens.weight';
  const rtTrain = ropeTables(dims, SEQ);
  const rnd = mulberry32(SEED + 1000);
  const budgetMs = MINUTES * 60_000;
  const tTrain = Date.now();
  let totalSteps = FIXED_STEPS > 0 ? FIXED_STEPS : Infinity;
  let step = 0;
  let lastMark = 0;
  let lossEma = NaN;
  let auxEma = NaN;
  const history: { step: number; loss: number; aux: number; tokens: number; seconds: number }[] = [];
  const b1 = 0.9,
    b2 = 0.95,
    wd = 0.05,
    clip = 1.0;
  while (step < totalSteps) {
    const lr =
      step < WARMUP
        ? (PEAK_LR * (step + 1)) / WARMUP
        : Number.isFinite(totalSteps)
          ? PEAK_LR * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, (step - WARMUP) / (totalSteps - WARMUP)))))
          : PEAK_LR;
    const ids = new Int32Array(BATCH * SEQ);
    const targets = new Int32Array(BATCH * SEQ);
    for (let r = 0; r < BATCH; r++) windowAt(train, Math.floor(rnd() * (train.length - SEQ)), SEQ, ids, targets, r);
    let auxV = 0;
    const lossV = tf.tidy(() => {
      const { value, grads } = tf.variableGrads(
        () => {
          const res = forward(dims, vars as unknown as Weights, ids, BATCH, SEQ, rtTrain, targets);
          auxV = res.aux.dataSync()[0]!;
          return tf.add(res.loss!, tf.mul(res.aux, AUX_COEF)) as tf.Scalar;
        },
        names.map((n) => vars.get(n)!),
      );
      // an expert that received no token in this batch has no gradient: treat it as zero
      for (const n of names) if (!grads[n]) grads[n] = tf.zerosLike(vars.get(n)!);
      let sq = 0;
      for (const n of names) sq += tf.sum(tf.square(grads[n]!)).dataSync()[0]!;
      const scale = Math.min(1, clip / (Math.sqrt(sq) + 1e-6));
      const bc1 = 1 - b1 ** (step + 1);
      const bc2 = 1 - b2 ** (step + 1);
      for (const n of names) {
        const g = tf.mul(grads[n]!, scale);
        const v = vars.get(n)!;
        const m = m1.get(n)!;
        const s = m2.get(n)!;
        m.assign(tf.add(tf.mul(m, b1), tf.mul(g, 1 - b1)));
        s.assign(tf.add(tf.mul(s, b2), tf.mul(tf.square(g), 1 - b2)));
        let upd = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(s, bc2)), 1e-8));
        if (decayed(n)) upd = tf.add(upd, tf.mul(v, wd));
        v.assign(tf.sub(v, tf.mul(upd, lr)));
      }
      return value.dataSync()[0]! - AUX_COEF * auxV;
    });
    step++;
    lossEma = Number.isNaN(lossEma) ? lossV : 0.98 * lossEma + 0.02 * lossV;
    auxEma = Number.isNaN(auxEma) ? auxV : 0.98 * auxEma + 0.02 * auxV;
    const elapsed = Date.now() - tTrain;
    if (step === 30 && FIXED_STEPS === 0) {
      totalSteps = Math.max(WARMUP + 50, Math.floor((budgetMs / elapsed) * 30));
      log(`${(elapsed / 30).toFixed(0)} ms/step -> ${totalSteps} steps in ${MINUTES} min`);
    } else if (step > 30 && FIXED_STEPS === 0 && step % 25 === 0 && step < totalSteps) {
      // re-estimate from the last 25 steps: on a shared machine the rate drifts, the budget must still hold
      const recent = (elapsed - lastMark) / 25;
      totalSteps = Math.max(step + 1, step + Math.floor((budgetMs - elapsed) / recent));
    }
    if (step % 25 === 0) lastMark = elapsed;
    if (step % 50 === 0 || step === totalSteps) {
      const tokens = step * BATCH * SEQ;
      history.push({ step, loss: +lossEma.toFixed(4), aux: +auxEma.toFixed(4), tokens, seconds: Math.round(elapsed / 1000) });
      log(
        `step ${step}/${totalSteps} loss ${lossEma.toFixed(3)} aux ${auxEma.toFixed(3)} lr ${lr.toExponential(2)} ${(tokens / (elapsed / 1000)).toFixed(0)} tok/s`,
      );
    }
    if (!Number.isFinite(lossV)) throw new Error(`loss is ${lossV} at step ${step}`);
  }
  const trainSeconds = (Date.now() - tTrain) / 1000;
  const trainTokens = step * BATCH * SEQ;
  const allPhases: Phase[] = [
    ...phases,
    { steps: step, batch: BATCH, seqLen: SEQ, tokens: trainTokens, seconds: Math.round(trainSeconds), peakLr: PEAK_LR, history },
  ];

  // ---- write the checkpoint (bf16) ---------------------------------------------------------------------------
  const specs = paramShapes(dims).map(([name, shape]) => ({ name, dtype: 'BF16' as const, shape }));
  const writer = await CheckpointWriter.create(OUT, specs);
  for (const [name] of paramShapes(dims)) await writer.write(name, fromF32(vars.get(name)!.dataSync() as Float32Array, 'BF16'));
  await writer.finalize();
  const config = {
    architectures: ['MixtralForCausalLM'],
    model_type: 'mixtral',
    attention_dropout: 0.0,
    bos_token_id: BOS_ID,
    eos_token_id: EOS_ID,
    hidden_act: 'silu',
    hidden_size: dims.hidden,
    head_dim: dims.headDim,
    initializer_range: 0.02,
    intermediate_size: dims.intermediate,
    max_position_embeddings: 512,
    num_attention_heads: dims.heads,
    num_experts_per_tok: dims.topK,
    num_hidden_layers: dims.layers,
    num_key_value_heads: dims.kvHeads,
    num_local_experts: dims.experts,
    output_router_logits: false,
    rms_norm_eps: dims.eps,
    rope_theta: dims.ropeTheta,
    router_aux_loss_coef: AUX_COEF,
    router_jitter_noise: 0.0,
    sliding_window: null,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    transformers_version: '4.46.0',
    use_cache: true,
    vocab_size: dims.vocab,
  };
  // Python json.dumps style with float literals where transformers 5 types a field as float (its strict config
  // validation refuses `router_jitter_noise: 0`); JSON.stringify would write 0.0 as 0
  await writeFile(join(OUT, 'config.json'), editJsonText(undefined, config, { floatKeys: FIXTURE_FLOAT_KEYS }));
  await writeFile(
    join(OUT, 'generation_config.json'),
    JSON.stringify(
      {
        _from_model_config: true,
        bos_token_id: BOS_ID,
        eos_token_id: EOS_ID,
        transformers_version: '4.46.0',
      },
      null,
      2,
    ) + '\n',
  );
  for (const v of [...vars.values(), ...m1.values(), ...m2.values()]) v.dispose();

  // ---- evaluate exactly what was written ---------------------------------------------------------------------
  const ckpt = await Checkpoint.open(OUT);
  const loaded = new Map<string, Float32Array>();
  for (const [name] of paramShapes(dims)) loaded.set(name, await ckpt.readF32(name));
  const w = toWeights(loaded);
  const after = EVAL_SEQ.map((L) => evaluate(w, heldout, L, rtEval.get(L)!, EVAL_WINDOWS));
  const calibEval = evaluate(w, calib, 128, rtEval.get(128)!, EVAL_WINDOWS);
  log('trained held-out ppl', after.map((r) => `L=${r.seqLen}: ${r.ppl.toFixed(2)}`).join(', '), `calib L=128: ${calibEval.ppl.toFixed(2)}`);

  // an independent plain-JS forward (sparse experts, float64 accumulation) on the first windows cross-checks
  // the tfjs numbers that TRAINING.json reports
  const refWindows = 2;
  const ids = new Int32Array(refWindows * 128);
  const targets = new Int32Array(refWindows * 128);
  for (let r = 0; r < refWindows; r++) windowAt(heldout, r * 128, 128, ids, targets, r);
  const tfNll = tf.tidy(() => forward(dims, w, ids, refWindows, 128, rtEval.get(128)!, targets).nll!.dataSync());
  let maxDiff = 0;
  let refSum = 0;
  for (let r = 0; r < refWindows; r++) {
    const nll = referenceNll(dims, loaded, ids.subarray(r * 128, (r + 1) * 128), targets.subarray(r * 128, (r + 1) * 128));
    nll.forEach((v, t) => {
      refSum += v;
      maxDiff = Math.max(maxDiff, Math.abs(v - tfNll[r * 128 + t]!));
    });
  }
  log(`reference forward on ${refWindows} windows: mean NLL ${(refSum / (refWindows * 128)).toFixed(5)}, max |dNLL| vs tfjs ${maxDiff.toExponential(2)}`);

  const facts = {
    description: 'Trained Mixtral-format fixture: facts measured by scripts/train-fixture.ts on the committed bf16 weights',
    convention:
      'each line of the text file encoded alone without special tokens, ids concatenated; non-overlapping windows of seqLen tokens (partial tail dropped), model input [BOS] + window[0..seqLen-2], every window token scored; ppl = exp(mean NLL)',
    dims,
    seed: SEED,
    tokenizer: { type: 'byte-level BPE (GPT-2 pre-tokenizer)', vocab: dims.vocab, unk: UNK_ID, bos: BOS_ID, eos: EOS_ID },
    text: {
      trainTokens: train.length,
      heldoutTokens: heldout.length,
      calibTokens: calib.length,
      trainSources: `${splits.trainDocs} Brown documents + nlp-corpus builds (all 50 files)`,
      heldoutDocs: splits.heldoutDocs,
      calibDocs: splits.calibDocs,
    },
    training: {
      steps: allPhases.reduce((a, p) => a + p.steps, 0),
      tokens: allPhases.reduce((a, p) => a + p.tokens, 0),
      seconds: allPhases.reduce((a, p) => a + p.seconds, 0),
      tokensPerSecond: Math.round(trainTokens / trainSeconds),
      epochs: +(allPhases.reduce((a, p) => a + p.tokens, 0) / train.length).toFixed(3),
      optimizer: `AdamW(b1=${b1}, b2=${b2}, wd=${wd} on matrices except embeddings), grad clip ${clip}, per phase: lr warmup ${WARMUP} steps then cosine to 10% of peak`,
      auxLossCoef: AUX_COEF,
      backend: tf.getBackend(),
      phases: allPhases,
    },
    heldout: {
      untrained,
      trained: Object.fromEntries(after.map((r) => [String(r.seqLen), { ppl: r.ppl, meanNll: r.meanNll, windows: r.windows, tokens: r.tokens }])),
    },
    calib: { trained: { '128': { ppl: calibEval.ppl, meanNll: calibEval.meanNll, windows: calibEval.windows, tokens: calibEval.tokens } } },
    expertUsage: {
      note: 'fraction of the top-k slots taken by each expert, per layer, on held-out text at seqLen 128 (trained weights)',
      perLayer: after[0]!.expertUsage.map((u) => u.map((x) => +x.toFixed(5))),
    },
    referenceCheck: { windows: refWindows, seqLen: 128, meanNll: refSum / (refWindows * 128), maxAbsNllDiffVsTfjs: maxDiff },
    totalSeconds: Math.round((Date.now() - t0) / 1000),
  };
  await writeFile(join(OUT, 'TRAINING.json'), JSON.stringify(facts, null, 2) + '\n');
  log('wrote', OUT);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
