/**
 * Files copied verbatim into outputs (tokenizer, templates, generation config) must be regular files resolving
 * inside the model directory: a link to a secret outside it is refused (exit 3) before anything is read, so it can
 * never be copied into an output that is then uploaded. A link inside the model directory is fine.
 */
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMoe } from '../helpers/cli.js';
import { oneLine, snapshot, stagingLeft, tinyModel } from './helpers.js';

let root: string;
let model: string;
const prune = (m: string, out: string) => ['prune', '--model', m, '--keep', '3', '--method', 'random', '--out', out, '--quiet'];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-pass-'));
  ({ model } = await tinyModel(join(root, 'model')));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('passthrough files', () => {
  it('a link to a file outside the model directory is refused (exit 3) and nothing is published', async () => {
    const m = join(root, 'leaky');
    cpSync(model, m, { recursive: true });
    const secret = join(root, 'id_rsa');
    writeFileSync(secret, 'PRIVATE KEY');
    symlinkSync(secret, join(m, 'chat_template.jinja'));
    const before = snapshot(m);
    for (const cmd of [prune(m, join(root, 'leak-out')), ['inspect', '--model', m]]) {
      const r = await runMoe(cmd);
      expect(r.code, r.stderr).toBe(3);
      oneLine(r.stderr, /chat_template\.jinja is a link to .*id_rsa, outside the model directory/);
    }
    expect(existsSync(join(root, 'leak-out'))).toBe(false);
    expect(stagingLeft(root)).toEqual([]);
    expect(snapshot(m)).toEqual(before);
    expect(readFileSync(secret, 'utf8')).toBe('PRIVATE KEY');
  });

  it('a link to a file inside the model directory is copied as a regular file', async () => {
    const m = join(root, 'linked');
    cpSync(model, m, { recursive: true });
    mkdirSync(join(m, 'templates'));
    writeFileSync(join(m, 'templates', 'chat.jinja'), '{{ messages }}');
    symlinkSync(join('templates', 'chat.jinja'), join(m, 'chat_template.jinja'));
    const out = join(root, 'linked-out');
    const r = await runMoe(prune(m, out));
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, 'chat_template.jinja'), 'utf8')).toBe('{{ messages }}');
  });

  it('a Hugging Face cache snapshot (links into ../../blobs) is read', async () => {
    const repo = join(root, 'hub', 'models--tiny');
    const snap = join(repo, 'snapshots', 'abc123');
    mkdirSync(join(repo, 'blobs'), { recursive: true });
    cpSync(model, snap, { recursive: true });
    renameSync(join(snap, 'tokenizer.json'), join(repo, 'blobs', 'f00d'));
    symlinkSync(join('..', '..', 'blobs', 'f00d'), join(snap, 'tokenizer.json'));
    const r = await runMoe(prune(snap, join(root, 'hub-out')));
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(root, 'hub-out', 'tokenizer.json'))).toEqual(readFileSync(join(repo, 'blobs', 'f00d')));
  });

  it('a directory where a passthrough file belongs is refused (exit 3)', async () => {
    const m = join(root, 'dir-template');
    cpSync(model, m, { recursive: true });
    mkdirSync(join(m, 'chat_template.json'));
    const r = await runMoe(prune(m, join(root, 'dir-out')));
    expect(r.code).toBe(3);
    oneLine(r.stderr, /chat_template\.json .*not a regular file/);
    expect(existsSync(join(root, 'dir-out'))).toBe(false);
  });
});
