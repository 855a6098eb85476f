/**
 * Memory-estimate composition in the engine (src/pipeline/memory.ts): a pipeline lists its phases and its own
 * working set, each method's descriptor gives its own part, and the engine adds the shared terms (runtime, the
 * streamed forward pass, the writer) and takes the largest phase. The dry-run figures of a fixed set of commands are
 * the ones the pipelines computed by hand before the composition moved into the engine (commit 89f65f6, the same
 * commands with --threads 1 --backend wasm on test/fixtures/tiny-mixtral): the move changed no estimate.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModel, type Model } from '../../src/model/open.js';
import { composeMemory, phaseParts } from '../../src/pipeline/memory.js';
import { ROUTERS, ALIGNS } from '../../src/merge/methods.js';
import { PRUNE_METHODS } from '../../src/prune/methods.js';
import { QUANTIZERS } from '../../src/quantize/methods.js';
import { RUNTIME_BASE_BYTES, TENSOR_BACKEND_BYTES, streamedPassParts, writerBytes, type MemoryEstimate } from '../../src/runtime/memory.js';
import { runMoe } from '../helpers/cli.js';

const M = 'test/fixtures/tiny-mixtral';
const CALIB = ['--calib', 'test/fixtures/text/calib.txt', '--calib-tokens', '2048', '--seq-len', '64'];
const FIXED = ['--out', '/tmp/moe-memory-test-out', '--dry-run', '--json', '--quiet', '--threads', '1', '--backend', 'wasm'];

let model: Model;
beforeAll(async () => {
  model = await openModel(M);
});
afterAll(async () => {
  await model.ckpt.close();
});

async function dryRun(args: string[]): Promise<{ memory: MemoryEstimate; calibration?: { tokens: number } }> {
  const r = await runMoe([...args, ...FIXED]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

const sum = (e: MemoryEstimate) => e.parts.reduce((a, p) => a + p.bytes, 0);
const labels = (e: MemoryEstimate) => e.parts.map((p) => p.label);

describe('composeMemory', () => {
  it('adds the runtime, the forward pass and the writer to a phase; the largest phase is the peak, the first wins a tie', () => {
    const pass = { tokens: 512, seqLen: 64, allExperts: true };
    const own = { label: 'own working set', bytes: 3 * 2 ** 20 };
    const e = composeMemory(model, [{ pass, parts: [own], writer: { label: 'the writer', largestNewBytes: 2 ** 22, extraBytes: 1000 } }]);
    const shared = streamedPassParts(model.ckpt, model.view, 512, 64, true);
    expect(e.peakBytes).toBe(sum(e));
    expect(e.peakBytes).toBe(
      RUNTIME_BASE_BYTES + TENSOR_BACKEND_BYTES + shared.reduce((a, p) => a + p.bytes, 0) + own.bytes + writerBytes(model.ckpt, 2 ** 22) + 1000,
    );
    expect(labels(e)).toEqual(expect.arrayContaining(['runtime (node + tfjs)', 'own working set', 'the writer', ...shared.map((p) => p.label)]));
    // largest first
    expect(e.parts.map((p) => p.bytes)).toEqual([...e.parts.map((p) => p.bytes)].sort((a, b) => b - a));

    // no tensor backend: Node's runtime alone
    const node = composeMemory(model, [{ parts: [], writer: { label: 'the writer' }, tensorBackend: false }]);
    expect(node.parts.map((p) => p.label)).toEqual(['runtime (node)', 'the writer']);
    expect(node.peakBytes).toBe(RUNTIME_BASE_BYTES + writerBytes(model.ckpt));

    // phases do not overlap: the larger one, the first of equal ones
    const small = { parts: [{ label: 'small', bytes: 1 }] };
    const big = { parts: [{ label: 'big', bytes: 2 ** 30 }] };
    expect(labels(composeMemory(model, [small, big]))).toContain('big');
    const a = { parts: [{ label: 'a', bytes: 5 }] };
    const b = { parts: [{ label: 'b', bytes: 5 }] };
    expect(labels(composeMemory(model, [a, b]))).toContain('a');
    expect(phaseParts(model, { parts: [own] })).toEqual([own]);
  });
});

describe('every pipeline composes its dry-run estimate in the engine', () => {
  // recorded on the estimates before the composition moved into the engine (see the header); the merge rows since
  // include the --drop auto whole-model choice's part (src/merge/memory.ts: +17959168 bytes here, the same in each;
  // +33280 more since every grouping's merges are candidates: four more plans' router rows)
  const BEFORE: [string, string[], number][] = [
    ['prune-random', ['prune', '--model', M, '--keep', '4', '--method', 'random'], 105906176],
    ['prune-reap', ['prune', '--model', M, '--keep', '4', '--method', 'reap', ...CALIB], 171614208],
    ['prune-reconstruct', ['prune', '--model', M, '--keep', '4', '--method', 'reconstruct', ...CALIB], 187604992],
    ['merge-stats', ['merge', '--model', M, '--groups', '4', ...CALIB], 204880672],
    ['merge-act-fit', ['merge', '--model', M, '--groups', '4', '--align', 'activations', '--router', 'fit', ...CALIB], 229951264],
    ['merge-weights', ['merge', '--model', M, '--groups', '4', '--align', 'weights', ...CALIB], 204880672],
    ['quantize-gptq', ['quantize', '--model', M, '--bits', '3', ...CALIB], 189393952],
    ['quantize-rtn', ['quantize', '--model', M, '--bits', '4.4', '--candidates', '4', '--method', 'rtn'], 143917056],
    ['quantize-rtn-calib', ['quantize', '--model', M, '--bits', '2.5', '--method', 'rtn', ...CALIB], 179253280],
    ['decompose-svd', ['decompose', '--model', M, '--ratio', '0.5', '--mode', 'svd'], 250929920],
    ['decompose-whitened', ['decompose', '--model', M, '--ratio', '0.5', '--mode', 'whitened', ...CALIB], 291890976],
    ['decompose-uniform', ['decompose', '--model', M, '--ratio', '0.5', '--mode', 'whitened', '--uniform', ...CALIB], 289708064],
  ];
  const seen = new Map<string, MemoryEstimate>();

  it('the same figures as before, each the sum of its parts, with the shared terms where they run', async () => {
    for (const [name, args, peak] of BEFORE) {
      const r = await dryRun(args);
      seen.set(name, r.memory);
      expect(r.memory.peakBytes, name).toBe(peak);
      expect(r.memory.peakBytes, name).toBe(sum(r.memory));
      const ls = labels(r.memory);
      expect(
        ls.some((l) => l.startsWith('runtime (node')),
        name,
      ).toBe(true);
      // a forward pass appears exactly when the command runs one in its largest phase
      const calibrated = args.includes('--calib');
      if (!calibrated)
        expect(
          ls.some((l) => /forward pass over \d+ calibration tokens/.test(l)),
          name,
        ).toBe(false);
    }
  }, 600_000);

  it("each method's own part is its descriptor's, present only when the method is chosen", async () => {
    const reconstruct = PRUNE_METHODS.find((m) => m.name === 'reconstruct')!;
    const pr = await dryRun(['prune', '--model', M, '--keep', '4', '--method', 'reconstruct', ...CALIB]);
    const { hidden, numExperts: experts } = model.view.dims;
    const [part] = reconstruct.memory!({ tokens: pr.calibration!.tokens, hidden, experts, sampleTokens: 2048 });
    expect(pr.memory.parts).toContainEqual(part);
    expect(labels(seen.get('prune-reap')!)).not.toContain(part!.label);

    // merge: the router fit and the activation alignment only with --router fit / --align activations
    const fit = ROUTERS.find((m) => m.name === 'fit')!;
    const act = ALIGNS.find((m) => m.name === 'activations')!;
    expect(fit.memory).toBeDefined();
    expect(act.memory).toBeDefined();
    const fitLabel = /^router fit on \d+ tokens$/;
    const actLabel = /^activation alignment: /;
    expect(labels(seen.get('merge-act-fit')!).some((l) => fitLabel.test(l))).toBe(true);
    expect(labels(seen.get('merge-act-fit')!).some((l) => actLabel.test(l))).toBe(true);
    expect(labels(seen.get('merge-stats')!).some((l) => fitLabel.test(l) || actLabel.test(l))).toBe(false);

    // quantize: GPTQ's Hessians only with --method gptq; rtn has no part of its own
    expect(QUANTIZERS.find((q) => q.name === 'rtn')).not.toHaveProperty('memory');
    expect(labels(seen.get('quantize-gptq')!).some((l) => /^GPTQ/.test(l))).toBe(true);
    expect(labels(seen.get('quantize-rtn-calib')!).some((l) => /^GPTQ/.test(l))).toBe(false);
  }, 300_000);
});
