/**
 * Compute backend ladder: tensorflow (libtensorflow through tfjs-node-gpu, else tfjs-node) -> webgpu (Dawn's Node
 * binding, when it finds an adapter) -> wasm (SIMD) -> cpu. Every kernel is written on tfjs-core ops, so the choice
 * changes speed, never results beyond float rounding. The tensorflow and webgpu packages are optional dependencies:
 * they are imported dynamically and skipped with a reason when absent or not loadable (tfjs-node's install step
 * downloads libtensorflow, which many machines cannot; `webgpu` ships Dawn's binaries in the package).
 */
import { existsSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { fail } from '../errors.js';

export type BackendChoice = 'auto' | 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'];
export type BackendName = Exclude<BackendChoice, 'auto'>;

export interface BackendCandidate {
  name: BackendName;
  /** the package that provides it */
  pkg: string;
  available: boolean;
  reason: string;
}

export interface BackendReport {
  candidates: BackendCandidate[];
  /** the backend `auto` picks (or the one explicitly requested, when available) */
  chosen: string;
  /** what was asked for (`auto` or one name) */
  requested?: BackendChoice;
}

const TF_PACKAGES = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'] as const;

let active: string | undefined;
let pending: Promise<string> | undefined;

async function tryImport(pkg: string): Promise<{ ok: true } | { ok: false; reason: string }> {
  try {
    // a variable specifier keeps TypeScript from requiring the optional package's types
    const spec: string = pkg;
    await import(spec);
    return { ok: true };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') return { ok: false, reason: 'not installed' };
    return { ok: false, reason: `not loadable: ${String((e as Error).message).split('\n')[0]}` };
  }
}

async function probeTensorflow(): Promise<BackendCandidate> {
  const reasons: string[] = [];
  for (const pkg of TF_PACKAGES) {
    const r = await tryImport(pkg);
    if (r.ok && tf.findBackend('tensorflow')) return { name: 'tensorflow', pkg, available: true, reason: `${pkg} loaded` };
    reasons.push(`${pkg}: ${r.ok ? 'loaded but registered no backend' : r.reason}`);
  }
  return { name: 'tensorflow', pkg: TF_PACKAGES.join(' | '), available: false, reason: reasons.join('; ') };
}

/**
 * Dawn's options (`create([...])` of the `webgpu` package: `backend=vulkan|null|...`, `adapter=NAME`,
 * `enable-dawn-features=...`), comma-separated in MOE_WEBGPU_FLAGS, ';' between options.
 */
function dawnFlags(): string[] {
  const v = process.env['MOE_WEBGPU_FLAGS'];
  return v ? v.split(';').filter((f) => f.trim() !== '') : [];
}

/**
 * Dawn reaches NVIDIA/AMD/Intel GPUs on Linux through the Vulkan loader. Without it Dawn finds no adapter and prints
 * a warning on stderr, so the probe does not start Dawn at all (unless MOE_WEBGPU_FLAGS asks for a backend).
 */
function vulkanLoaderFound(): boolean {
  if (process.platform !== 'linux') return true;
  const dirs = [
    ...(process.env['LD_LIBRARY_PATH'] ?? '').split(':').filter(Boolean),
    '/usr/lib/x86_64-linux-gnu',
    '/usr/lib/aarch64-linux-gnu',
    '/lib/x86_64-linux-gnu',
    '/lib/aarch64-linux-gnu',
    '/usr/lib64',
    '/usr/lib',
    '/lib64',
    '/usr/local/lib',
  ];
  return dirs.some((d) => existsSync(`${d}/libvulkan.so.1`));
}

/**
 * Why tfjs-backend-webgpu cannot run moe's kernels under Node even with an adapter: its synchronous read-back
 * (dataSync, which every moe kernel uses between ops) draws the buffer onto an OffscreenCanvas, which Node does
 * not have; only the asynchronous `data()` works there. Exported for the tests and bench/gpu.
 */
export function webgpuSyncReadback(): { ok: true } | { ok: false; reason: string } {
  if (typeof (globalThis as { OffscreenCanvas?: unknown }).OffscreenCanvas === 'function') return { ok: true };
  return {
    ok: false,
    reason: "tfjs-backend-webgpu reads tensors back synchronously (dataSync, used by moe's kernels) only through OffscreenCanvas, which Node does not provide",
  };
}

/** The adapter Dawn picks (high-performance preference), described, or why there is none. Keeps no reference to Dawn. */
export async function probeDawnAdapter(flags = dawnFlags()): Promise<{ ok: true; adapter: string } | { ok: false; reason: string }> {
  if (!flags.length && !vulkanLoaderFound()) return { ok: false, reason: 'no GPU adapter: the Vulkan loader (libvulkan.so.1) is not on the library path' };
  let gpu: { requestAdapter(o?: object): Promise<unknown> } | undefined;
  try {
    const spec: string = 'webgpu';
    const m = (await import(spec)) as { create(flags: string[]): typeof gpu };
    gpu = m.create(flags);
    const a = (await gpu!.requestAdapter({ powerPreference: 'high-performance' })) as { info?: Record<string, string> } | null;
    if (!a) return { ok: false, reason: `Dawn found no GPU adapter${flags.length ? ` (MOE_WEBGPU_FLAGS=${flags.join(';')})` : ''}` };
    const i = a.info ?? {};
    const name = [i['vendor'], i['architecture'], i['device'], i['description']].filter((x) => x).join(' ') || 'unnamed';
    return { ok: true, adapter: `${name}${flags.length ? ` (MOE_WEBGPU_FLAGS=${flags.join(';')})` : ''}` };
  } catch (e) {
    return { ok: false, reason: `Dawn failed: ${String((e as Error).message).split('\n')[0]}` };
  } finally {
    // a live Dawn instance keeps the process from exiting (the webgpu package's README, "Lifetime")
    gpu = undefined;
  }
}

async function probeWebgpu(): Promise<BackendCandidate> {
  const pkg = '@tensorflow/tfjs-backend-webgpu + webgpu';
  for (const p of ['webgpu', '@tensorflow/tfjs-backend-webgpu']) {
    // importing tfjs-backend-webgpu only registers a factory; it starts nothing
    const r = await tryImport(p);
    if (!r.ok) return { name: 'webgpu', pkg, available: false, reason: `${p}: ${r.reason}` };
  }
  const a = await probeDawnAdapter();
  if (!a.ok) return { name: 'webgpu', pkg, available: false, reason: a.reason };
  const read = webgpuSyncReadback();
  if (!read.ok) return { name: 'webgpu', pkg, available: false, reason: `adapter ${a.adapter} found, but ${read.reason}` };
  return { name: 'webgpu', pkg, available: true, reason: `adapter ${a.adapter}` };
}

async function probeWasm(): Promise<BackendCandidate> {
  const pkg = '@tensorflow/tfjs-backend-wasm';
  const r = await tryImport(pkg);
  if (!r.ok) return { name: 'wasm', pkg, available: false, reason: r.reason };
  return {
    name: 'wasm',
    pkg,
    available: true,
    reason: 'WebAssembly (SIMD when the engine supports it), one thread per instance (--threads N runs N workers, each with its own)',
  };
}

async function probeCpu(): Promise<BackendCandidate> {
  const pkg = '@tensorflow/tfjs-backend-cpu';
  const r = await tryImport(pkg);
  if (!r.ok) return { name: 'cpu', pkg, available: false, reason: r.reason };
  return { name: 'cpu', pkg, available: true, reason: 'plain JavaScript kernels (slow; last resort)' };
}

const PROBES: Record<BackendName, () => Promise<BackendCandidate>> = { tensorflow: probeTensorflow, webgpu: probeWebgpu, wasm: probeWasm, cpu: probeCpu };

/** Every candidate with whether it can be used here and why (for `moe inspect` / diagnostics). */
export async function describeBackends(choice: BackendChoice = 'auto'): Promise<BackendReport> {
  const candidates = [await probeTensorflow(), await probeWebgpu(), await probeWasm(), await probeCpu()];
  return { candidates, chosen: chooseBackend(candidates, choice), requested: choice };
}

/** The ladder's rule: `auto` takes the first usable candidate in order; an explicit choice only itself. */
export function chooseBackend(candidates: readonly BackendCandidate[], choice: BackendChoice): BackendName | 'none' {
  if (choice === 'auto') return candidates.find((c) => c.available)?.name ?? 'none';
  return candidates.find((c) => c.name === choice && c.available)?.name ?? 'none';
}

/**
 * Select and initialise the backend once per process. `auto` walks the ladder; an explicit choice that is not
 * available is a usage error (the user asked for something this machine cannot give).
 */
export async function initBackend(choice: BackendChoice = 'auto'): Promise<string> {
  if (!BACKEND_CHOICES.includes(choice)) fail('Usage', `--backend must be one of ${BACKEND_CHOICES.join(', ')} (got '${choice}')`);
  if (active && (choice === 'auto' || choice === active)) return active;
  if (pending && choice === 'auto') return pending;
  const run = (async () => {
    // an explicit choice (a worker of the pool gets the main thread's) probes only itself: importing the other
    // candidates' packages (Dawn's binding, tfjs-backend-webgpu) cost each worker 0.1 CPU-s for nothing
    const report = choice === 'auto' ? await describeBackends(choice) : { candidates: [await PROBES[choice]()] };
    const order = choice === 'auto' ? report.candidates.filter((c) => c.available).map((c) => c.name) : [choice];
    const errors: string[] = [];
    for (const name of order) {
      const cand = report.candidates.find((c) => c.name === name)!;
      if (!cand.available) {
        errors.push(`${name}: ${cand.reason}`);
        continue;
      }
      try {
        if (name === 'webgpu') await startWebgpu();
        if (await tf.setBackend(name)) {
          await tf.ready();
          active = name;
          return name;
        }
        errors.push(`${name}: failed to initialise`);
      } catch (e) {
        errors.push(`${name}: ${(e as Error).message}`);
      }
    }
    fail('Usage', `backend '${choice}' is not available here (${errors.join('; ')})`);
  })();
  pending = run;
  try {
    return await run;
  } finally {
    pending = undefined;
  }
}

/** tfjs-backend-webgpu asks navigator.gpu for its adapter: give it Dawn's, with the same flags the probe used. */
async function startWebgpu(): Promise<void> {
  const spec: string = 'webgpu';
  const m = (await import(spec)) as { create(flags: string[]): unknown; globals: Record<string, unknown> };
  Object.assign(globalThis, m.globals);
  const nav = ((globalThis as { navigator?: object }).navigator ?? {}) as { gpu?: unknown };
  if (!nav.gpu) Object.defineProperty(nav, 'gpu', { value: m.create(dawnFlags()), configurable: true });
  if (!(globalThis as { navigator?: object }).navigator) Object.defineProperty(globalThis, 'navigator', { value: nav, configurable: true });
  const pkg: string = '@tensorflow/tfjs-backend-webgpu';
  await import(pkg);
}

/** The backend initialised by initBackend, if any. */
export function activeBackend(): string | undefined {
  return active;
}

/** Commander option helper so every command that computes offers the same flag. */
export function parseBackendOption(v: string): BackendChoice {
  if (!(BACKEND_CHOICES as readonly string[]).includes(v)) fail('Usage', `--backend must be one of ${BACKEND_CHOICES.join(', ')} (got '${v}')`);
  return v as BackendChoice;
}
