import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadStats, saveStats, sumStats } from '../../src/calibrate/artifact.js';
import { collectStats } from '../../src/calibrate/collect.js';
import { resolveCalibration } from '../../src/calibrate/resolve.js';
import { registerCalibrate } from '../../src/cli/commands/calibrate.js';
import { loadWindows } from '../../src/data/windows.js';
import { openModel, type Model } from '../../src/model/open.js';
import type { MoeLayerInput, SwiGLUWeights } from '../../src/runtime/api.js';
import { initBackend } from '../../src/runtime/backend.js';
import { streamModel } from '../../src/runtime/stream.js';
import { makeTinyCheckpoint } from '../helpers/families.js';
import { runCommand } from '../eval/cli.js';
import { writeWordTokenizer, WORDS } from '../eval/tokenizer.js';

let root: string;
let dirA: string;
let dirQ: string;
let data: string;
let model: Model;

function text(seed: number, lines: number): string {
  let s = seed;
  const r = () => ((s = (s * 1103515245 + 12345) >>> 0) >>> 8) / 2 ** 24;
  return Array.from({ length: lines }, () => Array.from({ length: 3 + Math.floor(r() * 8) }, () => WORDS[Math.floor(r() * WORDS.length)]).join(' ')).join('\n');
}

/** plain-JS expert output (independent of the tfjs path) */
function expertOut(w: SwiGLUWeights, x: Float32Array, t: number, H: number): Float64Array {
  const I = w.gate.out;
  const a = new Float64Array(I);
  for (let i = 0; i < I; i++) {
    let g = 0,
      u = 0;
    for (let j = 0; j < H; j++) {
      g += w.gate.w[i * H + j]! * x[t * H + j]!;
      u += w.up.w[i * H + j]! * x[t * H + j]!;
    }
    a[i] = (g / (1 + Math.exp(-g))) * u;
  }
  const y = new Float64Array(H);
  for (let j = 0; j < H; j++) {
    let s = 0;
    for (let i = 0; i < I; i++) s += w.down.w[j * I + i]! * a[i]!;
    y[j] = s;
  }
  return y;
}

beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-cal-'));
  dirA = join(root, 'mixtral');
  dirQ = join(root, 'qwen');
  await makeTinyCheckpoint('mixtral', dirA, { seed: 11 });
  await makeTinyCheckpoint('qwen2_moe', dirQ, { seed: 12 });
  await writeWordTokenizer(dirA);
  await writeWordTokenizer(dirQ, { bos: null });
  data = join(root, 'calib.txt');
  await writeFile(data, text(9, 16));
  model = await openModel(dirA);
});
afterAll(async () => {
  await model.ckpt.close();
  await rm(root, { recursive: true, force: true });
});

describe('collectStats', () => {
  it('counts, masses, REAP, EASY-EP and output sums equal an independent computation from the layer inputs', async () => {
    const windows = await loadWindows(dirA, data, { seqLen: 8 });
    const stats = await collectStats(model, windows);
    const H = model.view.dims.hidden;
    const E = model.view.dims.numExperts;
    const k = model.view.dims.topK;
    // independent: capture each MoE layer's input and the layer output, recompute in plain JS
    const inputs = new Map<number, MoeLayerInput>();
    const after = new Map<number, Float32Array>();
    await streamModel(model, windows, {
      onMoeLayer(inp) {
        inputs.set(inp.layer.index, { ...inp, x: inp.x.slice() });
      },
      onLayerOutput(l, _b, h) {
        after.set(l, h.slice());
      },
    });
    expect(stats.layers.map((l) => l.layer)).toEqual(model.view.moeLayers);
    for (const ls of stats.layers) {
      const inp = inputs.get(ls.layer)!;
      const T = inp.T;
      expect(ls.tokens).toBe(T);
      const count = new Float64Array(E),
        gate = new Float64Array(E),
        reap = new Float64Array(E),
        easy = new Float64Array(E),
        mass = new Float64Array(E);
      const outSum = new Float64Array(E * H);
      const hOut = after.get(ls.layer)!;
      for (let t = 0; t < T; t++) {
        const y = new Float64Array(H);
        const fs: Float64Array[] = [];
        for (let s = 0; s < k; s++) {
          const e = inp.routing.idx[t * k + s]!;
          const f = expertOut(inp.experts[e]!, inp.x, t, H);
          fs.push(f);
          for (let j = 0; j < H; j++) y[j]! += inp.routing.w[t * k + s]! * f[j]!;
        }
        // residual before the block = layer output - block output
        let ab = 0,
          aa = 0,
          bb = 0;
        for (let j = 0; j < H; j++) {
          const b = hOut[t * H + j]!,
            a0 = b - y[j]!;
          ab += a0 * b;
          aa += a0 * a0;
          bb += b * b;
        }
        const contrib = Math.max(0, 1 - ab / Math.sqrt(aa * bb));
        for (let s = 0; s < k; s++) {
          const e = inp.routing.idx[t * k + s]!;
          const g = inp.routing.w[t * k + s]!;
          const nrm = Math.hypot(...fs[s]!);
          count[e]!++;
          gate[e]! += g;
          reap[e]! += g * nrm;
          easy[e]! += g * nrm * contrib;
          for (let j = 0; j < H; j++) outSum[e * H + j]! += fs[s]![j]!;
        }
        for (let e = 0; e < E; e++) mass[e]! += inp.probs[t * E + e]!;
      }
      expect(Array.from(ls.count)).toEqual(Array.from(count));
      expect(ls.count.reduce((a, b) => a + b, 0)).toBe(T * k);
      for (let e = 0; e < E; e++) {
        expect(ls.gateSum[e]!).toBeCloseTo(gate[e]!, 4);
        expect(ls.probMass[e]!).toBeCloseTo(mass[e]!, 4);
        expect(ls.reapSum[e]! / reap[e]!).toBeCloseTo(1, 4);
        expect(Math.abs(ls.easyEpSum[e]! - easy[e]!)).toBeLessThan(1e-3 * Math.max(1e-3, easy[e]!) + 1e-6);
        for (let j = 0; j < H; j++) expect(Math.abs(ls.outputSum[e * H + j]! - outSum[e * H + j]!)).toBeLessThan(1e-3);
      }
      // mixtral renormalises: gate weights of each token sum to 1
      expect(ls.gateSum.reduce((a, b) => a + b, 0)).toBeCloseTo(T, 3);
      expect(ls.logitSampleRows).toBe(Math.min(512, T));
      expect(ls.logitSample[0]).toBeCloseTo(inp.logits[0]!, 6);
    }
  });

  it('statistics of two halves of the text sum to the statistics of the whole (data-parallel calibration)', async () => {
    const windows = await loadWindows(dirA, data, { seqLen: 8 });
    expect(windows.length).toBeGreaterThanOrEqual(4);
    const half = Math.floor(windows.length / 2);
    const whole = await collectStats(model, windows);
    const s1 = await collectStats(model, windows.slice(0, half));
    const s2 = await collectStats(model, windows.slice(half));
    const sum = sumStats([s1, s2]);
    expect(sum.runs).toBe(2);
    expect(sum.tokens).toBe(whole.tokens);
    sum.layers.forEach((l, i) => {
      const w = whole.layers[i]!;
      expect(Array.from(l.count)).toEqual(Array.from(w.count));
      for (let e = 0; e < l.numExperts; e++) {
        expect(l.reapSum[e]! / w.reapSum[e]!).toBeCloseTo(1, 4);
        expect(l.probMass[e]! / w.probMass[e]!).toBeCloseTo(1, 4);
      }
    });
  });
});

describe('artifact', () => {
  it('round-trips and validates on load with clear errors', async () => {
    const windows = await loadWindows(dirA, data, { seqLen: 8 });
    const stats = await collectStats(model, windows, { logitSampleRows: 5 });
    const out = join(root, 'art1');
    await saveStats(stats, out);
    const back = await loadStats(out);
    expect(back.family).toBe('mixtral');
    expect(back.layers.length).toBe(stats.layers.length);
    expect(Array.from(back.layers[1]!.reapSum)).toEqual(Array.from(stats.layers[1]!.reapSum));
    expect(Array.from(back.layers[0]!.logitSample)).toEqual(Array.from(stats.layers[0]!.logitSample));
    await expect(saveStats(stats, out)).rejects.toThrow(/already exists/);

    const j = JSON.parse(await readFile(join(out, 'stats.json'), 'utf8'));
    await writeFile(join(out, 'stats.json'), JSON.stringify({ ...j, version: 99 }));
    await expect(loadStats(out)).rejects.toThrow(/version 99 is not supported/);
    await writeFile(join(out, 'stats.json'), JSON.stringify(j));
    await writeFile(join(out, 'layer-0.count.bin'), new Uint8Array(3));
    await expect(loadStats(out)).rejects.toThrow(/layer-0.count.bin is 3 bytes/);
    await writeFile(join(out, 'layer-0.count.bin'), new Uint8Array(new Float64Array(stats.numExperts).fill(NaN).buffer));
    await expect(loadStats(out)).rejects.toThrow(/non-finite/);
    await expect(loadStats(join(root, 'nope'))).rejects.toThrow(/calibration statistics not found/);
  });

  it('resolveCalibration: --calib runs the model and returns windows; --stats of another model is refused', async () => {
    const r = await resolveCalibration({ model, calib: data, seqLen: 8 });
    expect(r.windows!.length).toBeGreaterThan(0);
    expect(r.layers.length).toBe(model.view.moeLayers.length);
    const q = await openModel(dirQ);
    try {
      const qs = await resolveCalibration({ model: q, calib: data, seqLen: 8 });
      // Qwen-style tokenizer without BOS: windows are fed alone
      expect(qs.windows![0]!.length).toBe(8);
      const art = join(root, 'qart');
      await saveStats(qs, art);
      await expect(resolveCalibration({ model, stats: art })).rejects.toThrow(/computed on another model/);
      const again = await resolveCalibration({ model: q, stats: art });
      expect(again.windows).toBeUndefined();
      expect(again.tokens).toBe(qs.tokens);
    } finally {
      await q.ckpt.close();
    }
    await expect(resolveCalibration({ model })).rejects.toThrow(/--stats DIR .* or --calib FILE/);
  });
});

describe('moe calibrate', () => {
  it('writes an artifact, sums artifacts with --merge, and --grams writes X^T X of routed tokens after printing its size', async () => {
    const a1 = join(root, 'c1');
    const r1 = await runCommand(registerCalibrate, [
      'calibrate',
      '--model',
      dirA,
      '--data',
      data,
      '--out',
      a1,
      '--seq-len',
      '8',
      '--grams',
      '--quiet',
      '--backend',
      'wasm',
    ]);
    expect(r1.code).toBe(0);
    const H = model.view.dims.hidden;
    const printed = Number(/--grams will write ([\d.]+) MiB/.exec(r1.err)![1]);
    // the printed size is what was written
    const { readdir, stat: fstat } = await import('node:fs/promises');
    const names = await readdir(join(a1, 'grams'));
    let total = 0;
    for (const n of names) total += (await fstat(join(a1, 'grams', n))).size;
    expect(printed).toBeCloseTo(total / 2 ** 20, 2);
    expect(names).toContain('layer-0.attention.in.gram.bin');
    expect(names).toContain('layer-0.attention.o_proj.in.gram.bin');
    expect(names).toContain('layer-1.expert-3.down.in.gram.bin');
    const s1 = await loadStats(a1);
    // Gram of expert 0 in layer 0 from the routed rows of the MoE input
    const windows = await loadWindows(dirA, data, { seqLen: 8 });
    let g: Float64Array | undefined;
    let gd: Float64Array | undefined;
    let I = 0;
    await streamModel(model, windows, {
      onMoeLayer(inp) {
        if (inp.layer.index !== 0) return;
        const w = inp.experts[0]!;
        I = w.gate.out;
        g = new Float64Array(H * H);
        gd = new Float64Array(I * I);
        for (let t = 0; t < inp.T; t++) {
          let routed = false;
          for (let s = 0; s < inp.routing.k; s++) if (inp.routing.idx[t * inp.routing.k + s] === 0) routed = true;
          if (!routed) continue;
          for (let a = 0; a < H; a++) for (let b = 0; b < H; b++) g[a * H + b]! += inp.x[t * H + a]! * inp.x[t * H + b]!;
          // down_proj input of expert 0: silu(gate x) * up x
          const act = new Float64Array(I);
          for (let i = 0; i < I; i++) {
            let gg = 0,
              uu = 0;
            for (let j = 0; j < H; j++) {
              gg += w.gate.w[i * H + j]! * inp.x[t * H + j]!;
              uu += w.up.w[i * H + j]! * inp.x[t * H + j]!;
            }
            act[i] = (gg / (1 + Math.exp(-gg))) * uu;
          }
          for (let a = 0; a < I; a++) for (let b = 0; b < I; b++) gd[a * I + b]! += act[a]! * act[b]!;
        }
      },
    });
    const read = async (n: string) => new Float64Array(new Uint8Array(await readFile(join(a1, 'grams', n))).buffer);
    const got = await read('layer-0.expert-0.in.gram.bin');
    expect(got.length).toBe(H * H);
    for (let i = 0; i < H * H; i += 7) expect(Math.abs(got[i]! - g![i]!)).toBeLessThan(1e-3 * (1 + Math.abs(g![i]!)));
    expect(got[1 * H + 5]).toBe(got[5 * H + 1]);
    const gotD = await read('layer-0.expert-0.down.in.gram.bin');
    expect(gotD.length).toBe(I * I);
    for (let i = 0; i < I * I; i += 3) expect(Math.abs(gotD[i]! - gd![i]!)).toBeLessThan(1e-3 * (1 + Math.abs(gd![i]!)));

    const a2 = join(root, 'c2');
    const r2 = await runCommand(registerCalibrate, ['calibrate', '--model', dirA, '--data', data, '--out', a2, '--seq-len', '8', '--quiet']);
    expect(r2.code).toBe(0);
    const m = join(root, 'csum');
    const r3 = await runCommand(registerCalibrate, ['calibrate', '--merge', a1, a2, '--out', m, '--json']);
    expect(r3.code).toBe(0);
    const sum = await loadStats(m);
    expect(sum.runs).toBe(2);
    expect(sum.tokens).toBe(2 * s1.tokens);
    expect(sum.layers[0]!.count[1]).toBe(2 * s1.layers[0]!.count[1]!);
    const bad = await runCommand(registerCalibrate, ['calibrate', '--model', dirA, '--out', join(root, 'c3')]);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/needs --model DIR and --data FILE/);
    const exists = await runCommand(registerCalibrate, ['calibrate', '--model', dirA, '--data', data, '--out', a2]);
    expect(exists.code).toBe(4);
  });
});

describe('moe calibrate --shard (data-parallel calibration)', () => {
  it('splits the windows n ways; the shards summed with --merge equal one run over all of them', async () => {
    const whole = join(root, 'shard-whole');
    const parts = [0, 1, 2].map((i) => join(root, `shard-${i}`));
    expect((await runCommand(registerCalibrate, ['calibrate', '--model', dirA, '--data', data, '--out', whole, '--seq-len', '8', '--quiet'])).code).toBe(0);
    for (const [i, p] of parts.entries()) {
      const r = await runCommand(registerCalibrate, [
        'calibrate',
        '--model',
        dirA,
        '--data',
        data,
        '--out',
        p,
        '--seq-len',
        '8',
        '--shard',
        `${i}/3`,
        '--quiet',
      ]);
      expect(r.code).toBe(0);
    }
    const merged = join(root, 'shard-merged');
    expect((await runCommand(registerCalibrate, ['calibrate', '--merge', ...parts, '--out', merged, '--quiet'])).code).toBe(0);
    const a = await loadStats(whole);
    const b = await loadStats(merged);
    expect(b.tokens).toBe(a.tokens);
    expect(b.runs).toBe(3);
    const shardTokens = await Promise.all(parts.map(async (p) => (await loadStats(p)).tokens));
    expect(Math.min(...shardTokens)).toBeGreaterThan(0);
    for (const [l, la] of a.layers.entries()) {
      const lb = b.layers[l]!;
      expect(Array.from(lb.count)).toEqual(Array.from(la.count));
      for (let e = 0; e < la.numExperts; e++) {
        expect(lb.reapSum[e]!).toBeCloseTo(la.reapSum[e]!, 6);
        expect(lb.probMass[e]!).toBeCloseTo(la.probMass[e]!, 6);
      }
    }
  });

  it('rejects a malformed or out-of-range shard as a usage error', async () => {
    for (const bad of ['3/3', '1', 'a/b', '0/0']) {
      const r = await runCommand(registerCalibrate, ['calibrate', '--model', dirA, '--data', data, '--out', join(root, 'bad-shard'), '--shard', bad]);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/--shard must be i\/n/);
    }
  });
});
