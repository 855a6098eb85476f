/**
 * transformers 5.18 conformance of the new families (families.ts: forward and every output's perplexity) and of
 * moe's multi-token-prediction handling (issue 15), run by
 * `npm run test:families-py` (from .ci/run), which makes the Python environment from requirements.txt:
 *
 * - on a tiny DeepSeek-V3 checkpoint with one MTP layer, the per-expert routed-slot counts moe prune reports
 *   (`--method frequency`) for the decoder MoE layer and for the MTP layer equal those of transformers'
 *   DeepseekV3ForCausalLM and MtpModel on the same windows (so moe feeds the MTP layer what transformers feeds it:
 *   eh_proj of enorm(embedding of token t+1) and hnorm(last hidden state at t));
 * - the pruned and the merged checkpoints load in MtpModel.from_pretrained (it raises on a missing MTP weight) with
 *   the MTP layer's router at the edited count and its correction bias sliced to the kept experts (prune) or the
 *   groups' anchors (merge --router anchor); decompose --materialize's output loads with all 8 experts.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadWindowSet } from '../../src/data/windows.js';
import { makeTinyMtpCheckpoint } from '../helpers/mtp.js';
import { checkFamily, NEW_FAMILIES, TOLERANCE } from './families.js';

const python = process.argv[2] ?? 'python3';
const root = mkdtempSync(join(tmpdir(), 'moe-families-py-'));
let failures = 0;
const check = (what: string, ok: boolean, detail = '') => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? ` (${detail})` : ''}`);
  if (!ok) failures++;
};
const moe = (args: string[]) => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`moe ${args.join(' ')}: exit ${r.status}\n${r.stderr}`);
};
try {
  const dir = join(root, 'ds3-mtp');
  await makeTinyMtpCheckpoint(dir);
  const SEQ = 15;
  const ids = join(root, 'calib.jsonl');
  writeFileSync(
    ids,
    Array.from({ length: 6 }, (_, i) => JSON.stringify(Array.from({ length: SEQ }, (_, j) => 1 + ((i * 13 + j * 7 + ((i * j) % 5)) % 63)))).join('\n') + '\n',
  );
  const set = await loadWindowSet(dir, ids, { seqLen: SEQ, format: 'ids' });
  const out = join(root, 'pruned');
  moe(['prune', '--model', dir, '--out', out, '--keep', '4', '--method', 'frequency', '--calib-ids', ids, '--seq-len', String(SEQ), '--quiet']);
  const report = JSON.parse(readFileSync(join(out, 'moe-prune-report.json'), 'utf8'));
  // merge keeps the MTP layer too (merged to the same count on its own inputs); decompose --materialize copies it
  const merged = join(root, 'merged');
  moe(['merge', '--model', dir, '--out', merged, '--groups', '4', '--router', 'anchor', '--calib-ids', ids, '--seq-len', String(SEQ), '--quiet']);
  const mergeReport = JSON.parse(readFileSync(join(merged, 'moe-merge-report.json'), 'utf8'));
  const decomposed = join(root, 'decomposed');
  moe(['decompose', '--model', dir, '--out', decomposed, '--ratio', '0.5', '--mode', 'svd', '--materialize', '--quiet']);
  const spec = join(root, 'spec.json');
  writeFileSync(spec, JSON.stringify({ models: [dir, out, merged, decomposed], windows: set.windows.map((w) => Array.from(w)) }));
  const py = spawnSync(python, ['test/interop-families/mtp_check.py', spec], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (py.status !== 0) throw new Error(`mtp_check.py: exit ${py.status}\n${py.stderr}`);
  const ref = JSON.parse(py.stdout);
  for (const layer of report.layers as { layer: number; scores: number[]; kept: number[] }[]) {
    const theirs = ref[dir].counts[String(layer.layer)];
    check(
      `layer ${layer.layer}${layer.layer >= 2 ? ' (MTP)' : ''}: routed-slot counts equal transformers'`,
      JSON.stringify(theirs) === JSON.stringify(layer.scores),
      `moe ${layer.scores.join(' ')} / transformers ${theirs?.join(' ')}`,
    );
  }
  const p = ref[out];
  check('pruned checkpoint: MtpModel loads 1 MTP layer', p.mtp_layers === 1);
  check('pruned MTP router is [4, H]', JSON.stringify(p.mtp_router_rows) === JSON.stringify([[4, 32]]), JSON.stringify(p.mtp_router_rows));
  const kept = report.layers.find((l: { layer: number }) => l.layer === 2).kept as number[];
  const cb0 = ref[dir].mtp_correction_bias[0] as number[];
  check("pruned MTP correction bias = the kept experts' biases", JSON.stringify(p.mtp_correction_bias[0]) === JSON.stringify(kept.map((j) => cb0[j])));
  const m = ref[merged];
  const anchors = (mergeReport.layers.find((l: { layer: number }) => l.layer === 2).groups as { anchor: number }[]).map((g) => g.anchor);
  check('merged checkpoint: MtpModel loads 1 MTP layer', m.mtp_layers === 1);
  check('merged MTP router is [4, H]', JSON.stringify(m.mtp_router_rows) === JSON.stringify([[4, 32]]), JSON.stringify(m.mtp_router_rows));
  check("merged MTP correction bias = the groups' anchors' biases", JSON.stringify(m.mtp_correction_bias[0]) === JSON.stringify(anchors.map((j) => cb0[j])));
  const d = ref[decomposed];
  check(
    'decomposed (--materialize) checkpoint: MtpModel loads 1 MTP layer with its 8 experts',
    d.mtp_layers === 1 && JSON.stringify(d.mtp_router_rows) === JSON.stringify([[8, 32]]),
  );
  // the mtp.* convention (qwen3_next): moe's routed-slot counts in every MoE layer and in the MTP layer equal those
  // of vLLM's qwen3_next_mtp formula run with transformers' own Qwen3Next modules (mtp_qwen_check.py); the pruned
  // checkpoint's MTP router has the pruned count and the main model still loads in transformers
  {
    const qdir = join(root, 'qwen3_next-mtp');
    const pyRun = (args: string[]) => {
      const r = spawnSync(python, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
      if (r.status !== 0) throw new Error(`${args[0]}: exit ${r.status}\n${r.stderr}`);
      return r.stdout;
    };
    pyRun(['test/interop-families/families.py', 'make', 'qwen3_next', qdir]);
    pyRun(['test/interop-families/mtp_qwen_check.py', 'add', qdir]);
    const qids = join(root, 'qwen3_next-mtp.jsonl');
    writeFileSync(
      qids,
      Array.from({ length: 6 }, (_, i) => JSON.stringify(Array.from({ length: SEQ }, (_, j) => 2 + ((i * 17 + j * 11 + ((i * j) % 7)) % 126)))).join('\n') +
        '\n',
    );
    const qset = await loadWindowSet(qdir, qids, { seqLen: SEQ, format: 'ids' });
    const qout = join(root, 'qwen3_next-mtp-pruned');
    moe(['prune', '--model', qdir, '--out', qout, '--keep', '4', '--method', 'frequency', '--calib-ids', qids, '--seq-len', String(SEQ), '--quiet']);
    const qrep = JSON.parse(readFileSync(join(qout, 'moe-prune-report.json'), 'utf8'));
    const qspec = join(root, 'qwen3_next-mtp-spec.json');
    const qwin = qset.windows.map((w) => Array.from(w));
    writeFileSync(qspec, JSON.stringify([qdir, qout].map((dir) => ({ dir, windows: qwin }))));
    const qref = JSON.parse(pyRun(['test/interop-families/mtp_qwen_check.py', 'counts', qspec]));
    check('qwen3_next mtp.*: the MTP layer (4) is kept', JSON.stringify(qrep.mtp) === JSON.stringify({ kept: [4], dropped: [] }), JSON.stringify(qrep.mtp));
    for (const layer of qrep.layers as { layer: number; scores: number[] }[]) {
      const theirs = qref[qdir].counts[String(layer.layer)];
      check(
        `qwen3_next mtp.* layer ${layer.layer}${layer.layer === 4 ? ' (MTP)' : ''}: routed-slot counts equal the reference's`,
        JSON.stringify(theirs) === JSON.stringify(layer.scores),
        `moe ${layer.scores.join(' ')} / reference ${theirs?.join(' ')}`,
      );
    }
    check(
      'qwen3_next mtp.* pruned: MTP router is [4, H]',
      JSON.stringify(qref[qout].mtp_router_rows) === JSON.stringify([4, 64]),
      JSON.stringify(qref[qout].mtp_router_rows),
    );
  }
  for (const family of NEW_FAMILIES) {
    for (const row of await checkFamily(python, family, root))
      if (row.check) check(`${family} ${row.command}`, row.rel === 0);
      else
        check(
          `${family} ${row.command}: perplexity within ${TOLERANCE} of transformers'`,
          row.rel <= TOLERANCE && Number.isFinite(row.moe),
          `moe ${row.moe.toFixed(6)} / transformers ${row.transformers.toFixed(6)}, rel ${row.rel.toExponential(2)}`,
        );
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}
if (failures) {
  console.log(`${failures} check(s) failed`);
  process.exit(1);
}
console.log('families interop: all checks passed');
