/**
 * examples/scale-out as shipped: the GitHub Actions workflow and the Kubernetes Jobs parse and carry the fields their
 * engines require, and the jobs they describe, run the way each engine runs them, assemble to the bytes of a single
 * run. The engines cannot run here, so this file plays them, from their documentation:
 * - GitHub Actions: jobs in `needs` order, a matrix job once per combination, each run on its own fresh machine (a
 *   fresh working directory) that sees only the artifacts it downloads; `run:` in `bash -e`, the workflow's env in
 *   the process environment, `${{ matrix.x }}` substituted before the shell sees it; upload-artifact@v4 uploads a
 *   directory's contents without hidden files, download-artifact@v4 extracts `name` into `path` and each artifact
 *   matching `pattern` into `path/<artifact name>`;
 * - Kubernetes: the Jobs in file order (as the comments tell a user to apply them), an Indexed Job once per index
 *   with JOB_COMPLETION_INDEX set, envFrom the ConfigMap, `$(VAR)` in command/args expanded from the container's
 *   environment, each pod in its own working directory; a PersistentVolumeClaim is one host directory shared by
 *   every pod that mounts it.
 * What a user changes (model, calibration text, output, shard counts, pipeline flags) is changed here to the fixture,
 * and every job is a separate process of the built CLI (bin/moe.js).
 */
import { execFile } from 'node:child_process';
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { outputFiles } from '../helpers/files.js';

const run = promisify(execFile);
const EXAMPLES = 'examples/scale-out';
const MODEL = resolve('test/fixtures/tiny-mixtral');
const CALIB = resolve('test/fixtures/text/calib.txt');
const CALIB_TOKENS = '512';
const SEQ_LEN = '64';
let root: string;
let binDir: string;

// biome-ignore lint/suspicious/noExplicitAny: parsed YAML
type Doc = any;

async function newestMtime(dir: string): Promise<number> {
  let t = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? await newestMtime(p) : (await stat(p)).mtimeMs);
  }
  return t;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-examples-'));
  // every job runs the built CLI, as a machine with moe installed would: rebuild when the sources are newer
  const built = await stat('dist/src/cli/entry.js').then(
    (s) => s.mtimeMs,
    () => 0,
  );
  if (Math.max(await newestMtime('src'), await newestMtime('kernels')) > built) await run('npx', ['tsc', '-p', 'tsconfig.json']);
  // `moe` on PATH, as in the examples' image
  binDir = join(root, 'bin');
  await mkdir(binDir);
  await writeFile(join(binDir, 'moe'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(resolve('bin/moe.js'))} "$@"\n`);
  await chmod(join(binDir, 'moe'), 0o755);
}, 300_000);
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** The environment of every job: the machine's, moe on PATH, one worker thread (outputs are identical for any count). */
function jobEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${binDir}:${process.env.PATH}`, MOE_THREADS: '1', ...extra };
}

async function shell(file: string, cwd: string, env: NodeJS.ProcessEnv, what: string): Promise<void> {
  try {
    await run('bash', ['-e', file], { cwd, env, maxBuffer: 64 << 20 });
  } catch (e) {
    const err = e as { stderr?: string; code?: number };
    throw new Error(`${what}: exit ${err.code}: ${err.stderr}`);
  }
}

/** At most two jobs at once: the machines of a matrix run in parallel, this one has two cores. */
async function parallel<T>(items: T[], f: (t: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await f(items[i]!, i);
    }
  };
  await Promise.all([worker(), worker()]);
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** What a user sets for each pipeline: its flags, the plan job's data ('STATS' = the summed statistics). */
interface Case {
  pipeline: string;
  flags: string;
  planData: 'STATS' | 'CALIB' | '';
  /** the single run to compare with */
  single: (out: string, dir: string) => string[][];
}
const CALIB_FLAGS = ['--calib-tokens', CALIB_TOKENS, '--seq-len', SEQ_LEN];
const CASES: Case[] = [
  {
    pipeline: 'prune',
    flags: '--method reap --keep 6',
    planData: 'STATS',
    // one prune with --calib: the data-parallel statistics are the same sums
    single: (out) => [['prune', '--model', MODEL, '--method', 'reap', '--keep', '6', '--calib', CALIB, ...CALIB_FLAGS, '--out', out]],
  },
  {
    pipeline: 'merge',
    flags: '--groups 6',
    planData: 'STATS',
    // merge with --calib is its sequential mode, another method: the single run reads one calibrate run's statistics
    single: (out, dir) => [
      ['calibrate', '--model', MODEL, '--data', CALIB, '--max-tokens', CALIB_TOKENS, '--seq-len', SEQ_LEN, '--out', join(dir, 'stats')],
      ['merge', '--model', MODEL, '--groups', '6', '--stats', join(dir, 'stats'), '--out', out],
    ],
  },
  {
    pipeline: 'quantize',
    // a global bit allocation scored on calibration text: the layer jobs apply the plan (RTN needs no data then)
    flags: '--method rtn --bits 3 --candidates 2,4',
    planData: 'CALIB',
    single: (out) => [['quantize', '--model', MODEL, '--method', 'rtn', '--bits', '3', '--candidates', '2,4', '--calib', CALIB, ...CALIB_FLAGS, '--out', out]],
  },
  {
    pipeline: 'decompose',
    // ranks allocated over all layers by truncation loss: a plan that spans layers, no data
    flags: '--mode svd --ratio 0.5',
    planData: '',
    single: (out) => [['decompose', '--model', MODEL, '--mode', 'svd', '--ratio', '0.5', '--out', out]],
  },
];

const singles = new Map<string, Promise<Record<string, string>>>();
/** The single run of a case, once per file. */
function singleRun(c: Case): Promise<Record<string, string>> {
  let p = singles.get(c.pipeline);
  if (!p) {
    p = (async () => {
      const dir = join(root, `single-${c.pipeline}`);
      await mkdir(dir);
      const out = join(dir, 'out');
      for (const argv of c.single(out, dir)) await run(join(binDir, 'moe'), [...argv, '--quiet'], { env: jobEnv({}), cwd: dir });
      return outputFiles(out);
    })();
    singles.set(c.pipeline, p);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------------------------
// GitHub Actions

const GHA_FILE = join(EXAMPLES, 'github-actions.yml');
const JOB_ID = /^[A-Za-z_][A-Za-z0-9_-]*$/;
const USES = /^[\w.-]+\/[\w./-]+@[\w.-]+$/;

const needsOf = (job: Doc): string[] => (job.needs === undefined ? [] : typeof job.needs === 'string' ? [job.needs] : job.needs);

/** Jobs in an order where every job comes after its needs (GitHub starts a job when all its needs succeeded). */
function jobOrder(jobs: Record<string, Doc>): string[] {
  const order: string[] = [];
  const visit = (id: string, path: string[]) => {
    if (order.includes(id)) return;
    if (path.includes(id)) throw new Error(`needs cycle: ${[...path, id].join(' -> ')}`);
    for (const n of needsOf(jobs[id])) visit(n, [...path, id]);
    order.push(id);
  };
  for (const id of Object.keys(jobs)) visit(id, []);
  return order;
}

/** The matrix's combinations (arrays only: the examples use no include/exclude). */
function combinations(job: Doc): Array<Record<string, unknown>> {
  const m = job.strategy?.matrix as Record<string, unknown[]> | undefined;
  if (!m) return [{}];
  let out: Array<Record<string, unknown>> = [{}];
  for (const [k, values] of Object.entries(m)) out = out.flatMap((c) => values.map((v) => ({ ...c, [k]: v })));
  return out;
}

/** `${{ matrix.x }}` and `${{ env.X }}`, as GitHub substitutes them before a step runs; anything else is an error. */
function expand(s: string, matrix: Record<string, unknown>, env: Record<string, string>): string {
  return s.replace(/\$\{\{\s*([^}]*?)\s*\}\}/g, (_, expr: string) => {
    const m = /^(matrix|env)\.(\w+)$/.exec(expr);
    const v = m ? (m[1] === 'matrix' ? matrix[m[2]!] : env[m[2]!]) : undefined;
    if (v === undefined) throw new Error(`expression the test does not evaluate: ${expr}`);
    return String(v);
  });
}

/** upload-artifact@v4: a directory's contents (hidden files excluded, the v4.4 default), or one file. */
async function upload(store: string, name: string, src: string): Promise<void> {
  const dest = join(store, name);
  await expect(
    stat(dest).then(
      () => true,
      () => false,
    ),
    `artifact ${name} uploaded twice`,
  ).resolves.toBe(false);
  const s = await stat(src);
  await mkdir(dest, { recursive: true });
  const filter = (p: string) => !p.split('/').some((part) => part.startsWith('.') && part !== '.' && part !== '..');
  if (s.isDirectory()) await cp(src, dest, { recursive: true, filter: (p) => filter(p.slice(src.length)) });
  else await cp(src, join(dest, src.split('/').at(-1)!));
}

/** download-artifact@v4: `name` into `path`; every artifact matching `pattern` into `path/<name>`. */
async function download(store: string, w: Record<string, string>, cwd: string): Promise<void> {
  const path = join(cwd, w.path ?? '.');
  if (w.name !== undefined) {
    await cp(join(store, w.name), path, { recursive: true });
    return;
  }
  const re = new RegExp(`^${w.pattern!.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
  const names = (await readdir(store)).filter((n) => re.test(n));
  expect(names.length, `no artifact matches ${w.pattern}`).toBeGreaterThan(0);
  for (const n of names) await cp(join(store, n), w['merge-multiple'] ? path : join(path, n), { recursive: true });
}

/**
 * The settings a user changes, as both engines take them (the workflow's env, the ConfigMap's data): the paths as
 * the engine's jobs see them, shard counts, pipeline and its flags, and the plan job's data flags.
 */
function settings(c: Case, n: number, paths: { model: string; calib: string; out: string; stats: string }): Record<string, string> {
  const planData = { STATS: `--stats ${paths.stats}`, CALIB: `--calib ${paths.calib} ${CALIB_FLAGS.join(' ')}`, '': '' }[c.planData];
  return {
    MODEL: paths.model,
    CALIB: paths.calib,
    OUT: paths.out,
    CALIB_TOKENS,
    SEQ_LEN,
    CALIB_SHARDS: String(n),
    SHARDS: String(n),
    PIPELINE: c.pipeline,
    FLAGS: c.flags,
    PLAN_DATA: planData,
    SHARD_DATA: '',
  };
}

/** The workflow with what a user changes set for the fixture: paths, shard counts (and matrices), pipeline. */
function configureWorkflow(wf: Doc, c: Case, n: number, out: string): Doc {
  Object.assign(wf.env, settings(c, n, { model: MODEL, calib: CALIB, out, stats: 'stats' }));
  for (const job of Object.values(wf.jobs) as Doc[]) if (job.strategy?.matrix?.shard) job.strategy.matrix.shard = range(n);
  if (c.planData !== 'STATS') {
    // the edit the workflow's comment asks for when the plan job reads no statistics
    delete wf.jobs.calibrate;
    delete wf.jobs['calibrate-merge'];
    delete wf.jobs.plan.needs;
    wf.jobs.plan.steps = wf.jobs.plan.steps.filter((s: Doc) => !(s.uses?.startsWith('actions/download-artifact@') && s.with?.name === 'stats'));
  }
  return wf;
}

async function runWorkflow(wf: Doc, dir: string): Promise<void> {
  const store = join(dir, 'artifacts');
  await mkdir(store, { recursive: true });
  const env: Record<string, string> = Object.fromEntries(Object.entries(wf.env ?? {}).map(([k, v]) => [k, String(v)]));
  for (const id of jobOrder(wf.jobs)) {
    const job = wf.jobs[id];
    await parallel(combinations(job), async (matrix, k) => {
      // a fresh machine per job and matrix entry
      const cwd = join(dir, `${id}-${k}`);
      await mkdir(cwd, { recursive: true });
      const jenv = { ...env, ...(job.env ?? {}) };
      for (const [s, step] of (job.steps as Doc[]).entries()) {
        const w = Object.fromEntries(Object.entries(step.with ?? {}).map(([key, v]) => [key, expand(String(v), matrix, jenv)]));
        if (step.uses?.startsWith('actions/upload-artifact@')) await upload(store, w.name!, join(cwd, w.path!));
        else if (step.uses?.startsWith('actions/download-artifact@')) await download(store, w, cwd);
        else if (step.run !== undefined) {
          const file = join(dir, `${id}-${k}-step-${s}.sh`);
          await writeFile(file, expand(step.run, matrix, jenv));
          await shell(file, cwd, jobEnv(jenv), `${id} ${JSON.stringify(matrix)} step ${s}`);
        } else throw new Error(`${id}: a step the test does not play: ${JSON.stringify(step)}`);
      }
    });
  }
}

describe('examples/scale-out/github-actions.yml', () => {
  it('has the fields GitHub Actions requires, and the matrices match the shard counts', async () => {
    const wf = parse(await readFile(GHA_FILE, 'utf8'));
    expect(wf.on, 'on: a trigger').toBeDefined();
    expect(typeof wf.name).toBe('string');
    const ids = Object.keys(wf.jobs);
    expect(ids).toEqual(['calibrate', 'calibrate-merge', 'plan', 'shard', 'assemble']);
    for (const [k, v] of Object.entries(wf.env)) expect(typeof v, `env.${k} is a string`).toBe('string');
    for (const id of ids) {
      const job = wf.jobs[id];
      expect(id).toMatch(JOB_ID);
      const runsOn = job['runs-on'];
      expect(typeof runsOn === 'string' || (Array.isArray(runsOn) && runsOn.every((l: unknown) => typeof l === 'string')), `${id}: runs-on`).toBe(true);
      for (const n of needsOf(job)) expect(ids, `${id} needs ${n}`).toContain(n);
      expect(typeof job.container.image).toBe('string');
      for (const v of job.container.volumes ?? []) expect(v).toMatch(/^[^:]+:\/[^:]*$/);
      expect(Array.isArray(job.steps) && job.steps.length > 0, `${id}: steps`).toBe(true);
      for (const step of job.steps as Doc[]) {
        expect((step.uses === undefined) !== (step.run === undefined), `${id}: a step has exactly one of uses/run`).toBe(true);
        if (step.uses) expect(step.uses).toMatch(USES);
      }
      // one command per job, and only moe runs in it
      const runs = (job.steps as Doc[]).filter((s) => s.run !== undefined).map((s) => s.run as string);
      expect(runs).toHaveLength(1);
      expect(runs[0]).toMatch(/^moe /);
      const matrix = job.strategy?.matrix;
      if (matrix) {
        for (const v of Object.values(matrix)) expect(Array.isArray(v)).toBe(true);
        // --shard "${{ matrix.shard }}/$X": the list is 0 .. X-1
        const count = /--shard "\$\{\{ matrix\.shard \}\}\/\$(\w+)"/.exec(runs[0]!)?.[1];
        expect(count, `${id}: --shard from the matrix`).toBeDefined();
        expect(matrix.shard).toEqual(range(Number(wf.env[count!])));
      }
    }
    expect(jobOrder(wf.jobs)).toEqual(ids);
  });

  // each pipeline at 2 shards here and 3 in Kubernetes, or the other way round: every count on both engines
  for (const [c, n] of CASES.map((c, i) => [c, i % 2 === 0 ? 2 : 3] as const)) {
    it(`${c.pipeline} (${c.flags}), ${n} shards: the jobs assemble to the single run's bytes`, async () => {
      const dir = join(root, `gha-${c.pipeline}-${n}`);
      const out = join(dir, 'result');
      await runWorkflow(configureWorkflow(parse(await readFile(GHA_FILE, 'utf8')), c, n, out), dir);
      expect(await outputFiles(out)).toEqual(await singleRun(c));
      // the machines saw only what they downloaded: a layer job had the plan and nothing of the calibration
      expect((await readdir(join(dir, 'shard-0'))).sort()).toEqual(['part-0', 'plan.json']);
    }, 300_000);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes

const K8S_DIR = join(EXAMPLES, 'kubernetes');
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

async function k8sDocs(): Promise<Array<{ file: string; doc: Doc }>> {
  const out: Array<{ file: string; doc: Doc }> = [];
  for (const file of (await readdir(K8S_DIR)).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const d of parseAllDocuments(await readFile(join(K8S_DIR, file), 'utf8'))) {
      expect(d.errors, file).toEqual([]);
      out.push({ file, doc: d.toJS() });
    }
  }
  return out;
}

/** Kubernetes' `$(VAR)` in command and args: a defined variable is replaced, anything else is left as written. */
const k8sExpand = (s: string, env: Record<string, string>) => s.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v: string) => env[v] ?? m);

async function runJobs(docs: Doc[], dir: string): Promise<void> {
  const config = docs.find((d) => d.kind === 'ConfigMap');
  // one host directory per claim, the same for every pod; mount paths are replaced by it in commands and settings
  const claimDir = (claim: string) => join(dir, 'pvc', claim);
  // a bound claim is there, empty, before any pod mounts it
  for (const d of docs.filter((d) => d.kind === 'PersistentVolumeClaim')) await mkdir(claimDir(d.metadata.name), { recursive: true });
  for (const job of docs.filter((d) => d.kind === 'Job')) {
    const spec = job.spec;
    const pod = spec.template.spec;
    const indices = spec.completionMode === 'Indexed' ? range(spec.completions) : [undefined];
    await parallel(indices, async (index, k) => {
      const cwd = join(dir, 'pods', `${job.metadata.name}-${k}`);
      await mkdir(cwd, { recursive: true });
      for (const ct of pod.containers as Doc[]) {
        const mounts: Array<[string, string]> = (ct.volumeMounts ?? []).map((m: Doc) => {
          const claim = pod.volumes.find((v: Doc) => v.name === m.name).persistentVolumeClaim.claimName;
          return [m.mountPath, claimDir(claim)];
        });
        const local = (s: string) => mounts.reduce((acc, [from, to]) => acc.split(from).join(to), s);
        const env: Record<string, string> = {};
        for (const ef of ct.envFrom ?? []) {
          expect(ef.configMapRef.name).toBe(config.metadata.name);
          for (const [key, v] of Object.entries(config.data)) env[key] = local(String(v));
        }
        if (index !== undefined) env.JOB_COMPLETION_INDEX = String(index);
        const argv = [...ct.command, ...(ct.args ?? [])].map((a: string) => local(k8sExpand(a, env)));
        // the examples' containers are all `/bin/sh -c SCRIPT`
        expect(argv.slice(0, 2)).toEqual(['/bin/sh', '-c']);
        const file = join(dir, 'pods', `${job.metadata.name}-${k}.sh`);
        await writeFile(file, argv[2]!);
        await shell(file, cwd, jobEnv(env), `${job.metadata.name} index ${index}`);
      }
    });
  }
}

describe('examples/scale-out/kubernetes', () => {
  it('has the fields a batch/v1 Job requires; Indexed Jobs have their completions; volumes and settings resolve', async () => {
    const all = await k8sDocs();
    const docs = all.map((d) => d.doc);
    expect(all.map((d) => `${d.file}:${d.doc.kind}`)).toEqual([
      '00-config.yaml:ConfigMap',
      '00-config.yaml:PersistentVolumeClaim',
      '10-calibrate.yaml:Job',
      '20-calibrate-merge.yaml:Job',
      '30-plan.yaml:Job',
      '40-shards.yaml:Job',
      '50-assemble.yaml:Job',
    ]);
    const config = docs[0];
    expect(config.apiVersion).toBe('v1');
    for (const [k, v] of Object.entries(config.data)) expect(typeof v, `ConfigMap data.${k} is a string`).toBe('string');
    const pvc = docs[1];
    expect(pvc.apiVersion).toBe('v1');
    // every pod mounts it, on different nodes
    expect(pvc.spec.accessModes).toEqual(['ReadWriteMany']);
    expect(pvc.spec.resources.requests.storage).toMatch(/^\d+(Ki|Mi|Gi|Ti)$/);
    const indexedCounts: string[] = [];
    for (const job of docs.filter((d) => d.kind === 'Job')) {
      const name = job.metadata.name;
      expect(job.apiVersion).toBe('batch/v1');
      expect(name.length).toBeLessThanOrEqual(63);
      expect(name).toMatch(DNS_LABEL);
      const spec = job.spec;
      expect(Number.isInteger(spec.completions) && spec.completions > 0, `${name}: completions`).toBe(true);
      expect(Number.isInteger(spec.parallelism) && spec.parallelism > 0 && spec.parallelism <= spec.completions, `${name}: parallelism`).toBe(true);
      const pod = spec.template.spec;
      // a Job's pods may not restart Always
      expect(['Never', 'OnFailure']).toContain(pod.restartPolicy);
      expect(pod.containers.length).toBeGreaterThan(0);
      for (const ct of pod.containers as Doc[]) {
        expect(ct.name).toMatch(DNS_LABEL);
        expect(typeof ct.image).toBe('string');
        expect(Array.isArray(ct.command) && ct.command.every((a: unknown) => typeof a === 'string')).toBe(true);
        expect((ct.args ?? []).every((a: unknown) => typeof a === 'string')).toBe(true);
        expect(ct.resources.requests.memory).toMatch(/^\d+(Ki|Mi|Gi|Ti)$/);
        for (const m of ct.volumeMounts ?? []) {
          const v = pod.volumes.find((x: Doc) => x.name === m.name);
          expect(v, `${name}: volumeMount ${m.name} has a volume`).toBeDefined();
          expect(m.mountPath).toMatch(/^\//);
          expect(typeof v.persistentVolumeClaim.claimName).toBe('string');
        }
        for (const ef of ct.envFrom ?? []) expect(ef.configMapRef.name).toBe(config.metadata.name);
        const script = ct.args.join(' ');
        expect(script).toMatch(/^moe /);
        if (spec.completionMode === 'Indexed') {
          // --shard "$JOB_COMPLETION_INDEX/$X" with X = completions in the ConfigMap
          const count = /--shard "\$JOB_COMPLETION_INDEX\/\$(\w+)"/.exec(script)?.[1];
          expect(count, `${name}: --shard from the index`).toBeDefined();
          expect(spec.completions).toBe(Number(config.data[count!]));
          indexedCounts.push(count!);
        }
      }
      for (const v of pod.volumes ?? []) if (v.persistentVolumeClaim.claimName === pvc.metadata.name) expect(v.persistentVolumeClaim.readOnly).toBeUndefined();
    }
    expect(indexedCounts).toEqual(['CALIB_SHARDS', 'SHARDS']);
  });

  // each pipeline at the count the workflow test does not run
  for (const [c, n] of CASES.map((c, i) => [c, i % 2 === 0 ? 3 : 2] as const)) {
    it(`${c.pipeline} (${c.flags}), ${n} indexed pods: the Jobs assemble to the single run's bytes`, async () => {
      const dir = join(root, `k8s-${c.pipeline}-${n}`);
      const docs = (await k8sDocs()).map((d) => d.doc);
      // the model's volume: the fixture and the calibration text where the ConfigMap says
      const models = join(dir, 'pvc', 'moe-models');
      await mkdir(join(models, 'out'), { recursive: true });
      await symlink(MODEL, join(models, 'tiny-mixtral'));
      await symlink(CALIB, join(models, 'calib.txt'));
      Object.assign(
        docs[0].data,
        settings(c, n, { model: '/models/tiny-mixtral', calib: '/models/calib.txt', out: '/models/out/result', stats: '/shared/stats' }),
      );
      for (const job of docs.filter((d) => d.spec?.completionMode === 'Indexed')) {
        job.spec.completions = n;
        job.spec.parallelism = n;
      }
      // what the ConfigMap's comment says to do when the plan job reads no statistics: skip 10- and 20-
      const skip = c.planData === 'STATS' ? [] : ['moe-calibrate', 'moe-calibrate-merge'];
      await runJobs(
        docs.filter((d) => !skip.includes(d.metadata.name)),
        dir,
      );
      expect(await outputFiles(join(models, 'out', 'result'))).toEqual(await singleRun(c));
    }, 300_000);
  }
});
