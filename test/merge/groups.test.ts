/**
 * Merging under group-limited routing (DeepSeek-V2 group_limited_greedy, DeepSeek-V3 noaux_tc, GLM-4.5): every
 * merged expert stays inside one routing group, every routing group merges to the same count, n_group and
 * topk_group stay valid, and router rows, router bias and e_score_correction_bias follow the groups.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { evaluate } from '../../src/eval/perplexity.js';
import { checkGroupCount, groupExperts, routingGroupProblem, sliceSignals, validGroupCounts } from '../../src/merge/grouping.js';
import { merge, runningEdit, type MergeReport } from '../../src/merge/pipeline.js';
import { GROUPING_METHODS } from '../../src/merge/methods.js';
import type { LayerSignals, RouterMethod } from '../../src/merge/types.js';
import { loadRouter, loadSwiGLU } from '../../src/model/load.js';
import { openModel } from '../../src/model/open.js';
import type { RoutingRule } from '../../src/model/types.js';
import { initBackend } from '../../src/runtime/backend.js';
import { route } from '../../src/runtime/routing.js';
import { wordLines, writeWordTokenizer } from '../eval/tokenizer.js';
import { runMoe } from '../helpers/cli.js';
import { makeTinyCheckpoint, type Family } from '../helpers/families.js';
import { gaussian, randomArray, randomExpert, rng, routerLogits } from './synthetic.js';

function randomSignals(E: number, H: number, seed: number): LayerSignals {
  const r = rng(seed);
  const S = 40;
  return {
    numExperts: E,
    hidden: H,
    count: Float64Array.from({ length: E }, () => Math.floor(r() * 100)),
    saliency: Float64Array.from({ length: E }, () => r()),
    meanOutput: Float64Array.from({ length: E * H }, () => gaussian(r)),
    logitSample: Float32Array.from({ length: S * E }, () => gaussian(r)),
    logitRows: S,
  };
}

describe('grouping inside routing groups', () => {
  for (const method of GROUPING_METHODS) {
    it(`${method}: each routing group is grouped on its own signals, n / n_group groups each, in routing-group order`, () => {
      for (const seed of [1, 2, 3]) {
        const sig = randomSignals(12, 6, seed);
        const groups = groupExperts(method, sig, 6, 3);
        expect(groups).toHaveLength(6);
        expect(routingGroupProblem(groups, 12, 3)).toBeUndefined();
        // the same as the method run on each routing group's slice of the signals alone
        for (let r = 0; r < 3; r++) {
          const alone = groupExperts(method, sliceSignals(sig, r * 4, 4), 2);
          expect(groups.slice(r * 2, r * 2 + 2).map((g) => g.members)).toEqual(alone.map((g) => g.members.map((m) => m + r * 4)));
        }
        // a flat grouping of the same signals usually crosses groups; the routing-group one never does
        const members = groups.flatMap((g) => g.members).sort((a, b) => a - b);
        expect(members).toEqual(Array.from({ length: 12 }, (_, i) => i));
      }
    });
  }

  it('routingGroupProblem names a group that crosses routing groups, or an uneven split', () => {
    expect(
      routingGroupProblem(
        [
          { anchor: 0, members: [0, 4] },
          { anchor: 1, members: [1, 2, 3] },
          { anchor: 5, members: [5, 6] },
          { anchor: 7, members: [7] },
        ],
        8,
        2,
      ),
    ).toMatch(/takes expert 4 from another routing group/);
    expect(
      routingGroupProblem(
        [
          { anchor: 0, members: [0, 1] },
          { anchor: 2, members: [2, 3] },
          { anchor: 4, members: [4, 5] },
          { anchor: 6, members: [6, 7, 8, 9, 10, 11] },
        ],
        12,
        2,
      ),
    ).toMatch(/routing group 0 must merge to 2 experts/);
  });

  it('valid counts: multiples of n_group, at least 2 per group under top-2-sum scoring, enough for top-k', () => {
    const rule = (nGroup: number, topkGroup: number, groupScore: 'max' | 'top2sum', topK: number): Pick<RoutingRule, 'groups' | 'topK'> => ({
      groups: { nGroup, topkGroup, groupScore },
      topK,
    });
    expect(validGroupCounts(8, rule(2, 1, 'top2sum', 2))).toEqual([4, 6, 8]);
    expect(validGroupCounts(8, rule(2, 1, 'max', 1))).toEqual([2, 4, 6, 8]);
    expect(validGroupCounts(16, rule(4, 2, 'max', 6))).toEqual([12, 16]);
    // a limit that selects every group is no limit
    expect(validGroupCounts(8, rule(2, 2, 'top2sum', 2))).toEqual([]);
    expect(() => checkGroupCount(5, 8, rule(2, 1, 'top2sum', 2), 'deepseek_v3')).toThrow(/--groups 5 must be a multiple of n_group 2.*nearest valid: 4 or 6/);
    expect(() => checkGroupCount(2, 8, rule(2, 1, 'top2sum', 2), 'deepseek_v3')).toThrow(/leaves 1 per routing group.*nearest valid: 4/);
    expect(() => checkGroupCount(3, 8, rule(2, 2, 'top2sum', 2), 'deepseek_v3')).not.toThrow();
  });
});

describe('the running layer of a merge under group-limited routing', () => {
  for (const [score, groupScore] of [
    ['softmax', 'max'],
    ['sigmoid', 'top2sum'],
  ] as const) {
    it(`${score} / ${groupScore}: routes exactly as the merged checkpoint does (same experts, same weights)`, () => {
      const r = rng(11);
      const H = 8,
        E = 12,
        N = 6,
        T = 80;
      const nGroup = 3;
      const experts = Array.from({ length: N }, () => randomExpert(H, 4, r));
      const w = randomArray(N * H, r);
      const correctionBias = score === 'sigmoid' ? randomArray(N, r, 0.3) : undefined;
      const x = randomArray(T * H, r);
      const rule: RoutingRule = {
        score,
        afterTopk: 'none',
        selectionBias: score === 'sigmoid',
        topK: 2,
        normalize: score === 'sigmoid',
        normEps: 1e-20,
        scale: 1.5,
        groups: { nGroup, topkGroup: 1, groupScore },
      };
      const edit = runningEdit(experts, { w, ...(correctionBias ? { correctionBias } : {}) }, E, H, nGroup);
      const small = route(rule, routerLogits(w, N, x, T, H), T, N, correctionBias);
      const logits = routerLogits(edit.router!.w, E, x, T, H).map((v, i) => v + edit.router!.bias![i % E]!);
      const big = route(rule, logits, T, E, edit.router!.correctionBias);
      // slot -> merged expert, read off the edit's experts
      const slot = Array.from({ length: E }, (_, s) => experts.indexOf(edit.experts![s]!));
      const chosen = Array.from(big.routing.idx, (s) => slot[s]);
      expect(chosen).toEqual(Array.from(small.routing.idx));
      for (let i = 0; i < T * 2; i++) expect(big.routing.w[i]).toBeCloseTo(small.routing.w[i]!, 6);
    });
  }
});

const FAMILIES: Family[] = ['deepseek_v2', 'deepseek_v3', 'glm4_moe'];
/** group-limited routing switched on where the fixture has none (glm4_moe's default n_group is 1) */
const GROUPED = { n_group: 2, topk_group: 1 };

let root: string;
let calib: string;
beforeAll(async () => {
  await initBackend('wasm');
  root = await mkdtemp(join(tmpdir(), 'moe-merge-groups-'));
  calib = join(root, 'calib.txt');
  await writeFile(calib, wordLines(40, rng(3)).join('\n') + '\n');
  for (const f of FAMILIES) {
    await makeTinyCheckpoint(f, join(root, f), { experts: 8, seed: 5, config: GROUPED });
    await writeWordTokenizer(join(root, f));
  }
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Every grouping method with every router option across the three families (9 runs, each family all three). */
const RUNS: Array<[Family, (typeof GROUPING_METHODS)[number], RouterMethod]> = FAMILIES.flatMap((f, i) =>
  GROUPING_METHODS.map((g, j) => [f, g, (['anchor', 'mean', 'fit'] as const)[(i + j) % 3]] as [Family, (typeof GROUPING_METHODS)[number], RouterMethod]),
);

describe('merge on group-limited families', () => {
  it.each(RUNS)('%s --grouping %s --router %s: groups stay in routing groups, tensors follow them, the output runs', async (family, grouping, router) => {
    const src = join(root, family);
    const out = join(root, `${family}-${grouping}-${router}`);
    const N = 4;
    const rep: MergeReport = await merge({
      model: src,
      out,
      groups: N,
      grouping,
      router,
      align: 'none',
      weighting: 'uniform',
      calib,
      calibTokens: 256,
      seqLen: 32,
      fitSteps: 10,
    });
    const input = await openModel(src);
    const output = await openModel(out);
    try {
      const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
      expect(cfg.n_routed_experts).toBe(N);
      expect(cfg.n_group).toBe(2);
      expect(cfg.topk_group).toBe(1);
      expect(output.view.routing.groups).toEqual({ ...input.view.routing.groups, nGroup: 2, topkGroup: 1 });
      for (const l of rep.layers) {
        const inBlock = input.view.layers[l.layer]!.block;
        const outBlock = output.view.layers[l.layer]!.block;
        if (inBlock.kind !== 'moe' || outBlock.kind !== 'moe') throw new Error('not a MoE layer');
        const inRouter = await loadRouter(input.ckpt, inBlock.router);
        const outRouter = await loadRouter(output.ckpt, outBlock.router);
        const H = input.view.dims.hidden;
        expect(outRouter.w.length).toBe(N * H);
        expect(!!outRouter.correctionBias).toBe(!!inRouter.correctionBias);
        for (const [i, g] of l.groups.entries()) {
          // merged expert i is in routing group floor(i / 2); so are all its members (4 input experts per group)
          for (const m of g.members) expect(Math.floor(m / 4)).toBe(Math.floor(i / 2));
          const rows = router === 'anchor' ? [g.anchor] : g.members;
          const mean = (v: Float32Array, d: number, k: number) => rows.reduce((a, m) => a + v[m * d + k]!, 0) / rows.length;
          if (router !== 'fit') {
            for (let h = 0; h < H; h++) expect(outRouter.w[i * H + h]).toBeCloseTo(mean(inRouter.w, H, h), 6);
          }
          // the selection bias follows the members for every router option (fit keeps the members' mean)
          if (inRouter.correctionBias) {
            const cbRows = router === 'anchor' ? [g.anchor] : g.members;
            const want = cbRows.reduce((a, m) => a + inRouter.correctionBias![m]!, 0) / cbRows.length;
            expect(outRouter.correctionBias![i]).toBeCloseTo(want, 6);
          }
          // uniform weighting without alignment: the merged expert is the members' mean
          const got = await loadSwiGLU(output.ckpt, outBlock.experts[i]!);
          const ms = await Promise.all(g.members.map((m) => loadSwiGLU(input.ckpt, inBlock.experts[m]!)));
          for (const p of ['gate', 'up', 'down'] as const) {
            const want = got[p].w.map((_, k) => ms.reduce((a, e) => a + e[p].w[k]!, 0) / ms.length);
            for (let k = 0; k < want.length; k += 7) expect(got[p].w[k]).toBeCloseTo(want[k]!, 5);
            if (g.members.length === 1) expect(Array.from(got[p].w)).toEqual(Array.from(ms[0]![p].w));
          }
        }
      }
    } finally {
      await input.ckpt.close();
      await output.ckpt.close();
    }
    const ev = await evaluate({ model: out, data: calib, seqLen: 32, maxTokens: 256 });
    expect(Number.isFinite(ev.perplexity)).toBe(true);
    expect(ev.perplexity).toBeGreaterThan(1);
  });

  it('--stats: the plan from saved statistics respects the routing groups too', async () => {
    const src = join(root, 'deepseek_v3');
    const stats = join(root, 'v3-stats');
    expect((await runMoe(['calibrate', '--model', src, '--data', calib, '--max-tokens', '256', '--seq-len', '32', '--out', stats, '--quiet'])).code).toBe(0);
    const rep = await merge({ model: src, groups: 6, grouping: 'saliency', stats, dryRun: true });
    for (const l of rep.layers) {
      expect(l.groups).toHaveLength(6);
      l.groups.forEach((g, i) => {
        for (const m of g.members) expect(Math.floor(m / 4)).toBe(Math.floor(i / 3));
      });
    }
  });

  it('a count that is not a valid multiple of n_group is refused with exit 2, naming the nearest valid counts', async () => {
    for (const family of FAMILIES) {
      const r = await runMoe(['merge', '--model', join(root, family), '--groups', '5', '--calib', calib, '--seq-len', '32', '--out', join(root, 'never')]);
      expect(r.code).toBe(ExitCode.usage);
      expect(r.stderr).toMatch(/^moe: --groups 5 must be a multiple of n_group 2: .* nearest valid: 4 or 6\n$/);
    }
  });

  it('a saved plan whose groups cross routing groups is refused', async () => {
    const src = join(root, 'deepseek_v2');
    const plan = join(root, 'v2-plan.json');
    await merge({ model: src, groups: 4, grouping: 'msmoe', router: 'mean', calib, calibTokens: 256, seqLen: 32, dryRun: true, savePlan: plan });
    const saved = JSON.parse(await readFile(plan, 'utf8'));
    // every layer: four groups of two where the first pairs expert 0 (routing group 0) with expert 4 (group 1)
    const pairs = [
      [0, 4],
      [1, 2],
      [3, 5],
      [6, 7],
    ];
    for (const layer of saved.plan.layers) {
      layer.groups = pairs.map((members) => ({ anchor: members[0], members, weights: [0.5, 0.5], alignment: [null, null] }));
    }
    await writeFile(plan, JSON.stringify(saved));
    await expect(merge({ model: src, groups: 4, grouping: 'msmoe', router: 'mean', plan, out: join(root, 'never2') })).rejects.toThrow(
      /breaks? group-limited routing|another routing group/,
    );
  });
});
