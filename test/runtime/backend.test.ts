import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import {
  activeBackend,
  chooseBackend,
  describeBackends,
  initBackend,
  parseBackendOption,
  probeDawnAdapter,
  webgpuSyncReadback,
  type BackendCandidate,
} from '../../src/runtime/backend.js';
import { runMoe } from '../helpers/cli.js';

const dawnInstalled = await import('webgpu' as string).then(
  () => true,
  () => false,
);

describe('backend ladder', () => {
  it('lists tensorflow, webgpu, wasm, cpu with reasons; auto picks the first available', async () => {
    const r = await describeBackends();
    expect(r.candidates.map((c) => c.name)).toEqual(['tensorflow', 'webgpu', 'wasm', 'cpu']);
    for (const c of r.candidates) expect(c.reason.length).toBeGreaterThan(0);
    const firstAvailable = r.candidates.find((c) => c.available)!.name;
    expect(r.chosen).toBe(firstAvailable);
    // this machine has no libtensorflow binding installed
    const tfc = r.candidates[0]!;
    if (!tfc.available) expect(tfc.reason).toMatch(/tfjs-node/);
  });

  it('initialises an explicit choice, refuses an unavailable one with a usage error, rejects unknown names', async () => {
    expect(await initBackend('cpu')).toBe('cpu');
    expect(tf.getBackend()).toBe('cpu');
    expect(await initBackend('wasm')).toBe('wasm');
    expect(activeBackend()).toBe('wasm');
    const r = await describeBackends('tensorflow');
    if (!r.candidates[0]!.available) {
      await expect(initBackend('tensorflow')).rejects.toThrow(/backend 'tensorflow' is not available/);
      expect(r.chosen).toBe('none');
    }
    expect(() => parseBackendOption('gpu')).toThrow(/--backend must be one of auto, tensorflow, webgpu, wasm, cpu/);
  });

  it('the ladder order: tensorflow, then webgpu with an adapter, then wasm, then cpu; an explicit choice only itself', () => {
    const c = (name: BackendCandidate['name'], available: boolean): BackendCandidate => ({ name, pkg: name, available, reason: 'r' });
    expect(chooseBackend([c('tensorflow', true), c('webgpu', true), c('wasm', true), c('cpu', true)], 'auto')).toBe('tensorflow');
    expect(chooseBackend([c('tensorflow', false), c('webgpu', true), c('wasm', true), c('cpu', true)], 'auto')).toBe('webgpu');
    expect(chooseBackend([c('tensorflow', false), c('webgpu', false), c('wasm', true), c('cpu', true)], 'auto')).toBe('wasm');
    expect(chooseBackend([c('tensorflow', false), c('webgpu', false), c('wasm', false), c('cpu', true)], 'auto')).toBe('cpu');
    expect(chooseBackend([c('tensorflow', true), c('webgpu', false), c('wasm', true), c('cpu', true)], 'webgpu')).toBe('none');
    expect(chooseBackend([c('tensorflow', true), c('webgpu', true), c('wasm', true), c('cpu', true)], 'wasm')).toBe('wasm');
  });

  it('webgpu on this machine (no GPU): skipped by auto with the reason, refused when asked for', async () => {
    const saved = process.env['MOE_WEBGPU_FLAGS'];
    delete process.env['MOE_WEBGPU_FLAGS'];
    try {
      const r = await describeBackends();
      const w = r.candidates.find((x) => x.name === 'webgpu')!;
      expect(w.available).toBe(false);
      // the webgpu packages are optional dependencies: a checkout installed before they were added lacks them
      expect(w.reason).toMatch(dawnInstalled ? /no GPU adapter|Dawn found no GPU adapter|OffscreenCanvas/ : /^webgpu: not installed$/);
      expect(r.chosen).not.toBe('webgpu');
      await expect(initBackend('webgpu')).rejects.toThrow(/backend 'webgpu' is not available here \(webgpu: /);
      const cli = await runMoe(['inspect', '--model', 'test/fixtures/tiny-mixtral', '--backend', 'webgpu', '--json']);
      const rep = JSON.parse(cli.stdout).backend;
      expect(rep.chosen).toBe('none');
      expect(rep.reason).toBe(`webgpu requested, not usable: ${w.reason}`);
    } finally {
      if (saved !== undefined) process.env['MOE_WEBGPU_FLAGS'] = saved;
    }
  });

  it("with an adapter (Dawn's null backend) webgpu is refused at the next step: Node has no synchronous read-back", async () => {
    const a = await probeDawnAdapter(['backend=null']);
    if (!dawnInstalled) {
      // without the optional package there is no adapter to find; the probe says why (run npm install for the rest)
      expect(a).toEqual({ ok: false, reason: expect.stringMatching(/^Dawn failed: /) });
      return;
    }
    expect(a.ok).toBe(true);
    expect(webgpuSyncReadback()).toMatchObject({ ok: false, reason: expect.stringMatching(/OffscreenCanvas, which Node does not provide/) });
    process.env['MOE_WEBGPU_FLAGS'] = 'backend=null';
    try {
      const r = await describeBackends();
      const w = r.candidates.find((x) => x.name === 'webgpu')!;
      expect(w.available).toBe(false);
      expect(w.reason).toMatch(/^adapter .*\(MOE_WEBGPU_FLAGS=backend=null\) found, but tfjs-backend-webgpu reads tensors back synchronously/);
      // were read-back possible (a browser-like global), the same adapter would put webgpu first after tensorflow
      (globalThis as { OffscreenCanvas?: unknown }).OffscreenCanvas = class {};
      const g = await describeBackends();
      expect(g.candidates.find((x) => x.name === 'webgpu')!.available).toBe(true);
      expect(g.chosen).toBe(g.candidates[0]!.available ? 'tensorflow' : 'webgpu');
    } finally {
      delete process.env['MOE_WEBGPU_FLAGS'];
      delete (globalThis as { OffscreenCanvas?: unknown }).OffscreenCanvas;
    }
  });
});
