/**
 * Compute backend ladder: tensorflow (libtensorflow through tfjs-node-gpu, else tfjs-node) -> wasm (SIMD) -> cpu.
 * Every kernel is written on tfjs-core ops, so the choice changes speed, never results beyond float rounding.
 * The tensorflow bindings are optional dependencies: they are imported dynamically and skipped with a reason when
 * absent or not loadable (their install step downloads libtensorflow, which many machines cannot).
 */
import * as tf from '@tensorflow/tfjs-core';
import { fail } from '../errors.js';

export type BackendChoice = 'auto' | 'tensorflow' | 'wasm' | 'cpu';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'wasm', 'cpu'];

export interface BackendCandidate {
  name: 'tensorflow' | 'wasm' | 'cpu';
  /** the package that provides it */
  pkg: string;
  available: boolean;
  reason: string;
}

export interface BackendReport {
  candidates: BackendCandidate[];
  /** the backend `auto` picks (or the one explicitly requested, when available) */
  chosen: string;
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

/** Every candidate with whether it can be used here and why (for `moe inspect` / diagnostics). */
export async function describeBackends(choice: BackendChoice = 'auto'): Promise<BackendReport> {
  const candidates = [await probeTensorflow(), await probeWasm(), await probeCpu()];
  const usable = candidates.filter((c) => c.available);
  let chosen = 'none';
  if (choice === 'auto') chosen = usable[0]?.name ?? 'none';
  else chosen = candidates.find((c) => c.name === choice && c.available)?.name ?? 'none';
  return { candidates, chosen };
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
    const report = await describeBackends(choice);
    const order = choice === 'auto' ? report.candidates.filter((c) => c.available).map((c) => c.name) : [choice];
    const errors: string[] = [];
    for (const name of order) {
      const cand = report.candidates.find((c) => c.name === name)!;
      if (!cand.available) {
        errors.push(`${name}: ${cand.reason}`);
        continue;
      }
      try {
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

/** The backend initialised by initBackend, if any. */
export function activeBackend(): string | undefined {
  return active;
}

/** Commander option helper so every command that computes offers the same flag. */
export function parseBackendOption(v: string): BackendChoice {
  if (!(BACKEND_CHOICES as readonly string[]).includes(v)) fail('Usage', `--backend must be one of ${BACKEND_CHOICES.join(', ')} (got '${v}')`);
  return v as BackendChoice;
}
