import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Checkpoint } from '../../src/io/checkpoint.js';
import { checkOutputTarget, discardActiveOutputs, OutputDir } from '../../src/io/output.js';
import { rmSync } from 'node:fs';
import { MIXTRAL_CONFIG, tempDir, validFile, writeCheckpointDir } from './helpers.js';

const tmp = tempDir('moe-out-');
afterAll(() => tmp.cleanup());

function inputModel(name: string): string {
  const dir = writeCheckpointDir(join(tmp.dir, name), validFile().bytes);
  writeFileSync(join(dir, 'tokenizer.json'), '{"model":{}}');
  writeFileSync(join(dir, 'tokenizer_config.json'), '{}');
  writeFileSync(join(dir, 'generation_config.json'), '{"eos_token_id": 2}');
  writeFileSync(join(dir, 'README.md'), 'not copied');
  return dir;
}

function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(dir)) out[f] = `${statSync(join(dir, f)).mtimeMs}:${readFileSync(join(dir, f)).toString('base64')}`;
  return out;
}

describe('OutputDir', () => {
  it('stages beside the target, copies tokenizer and generation files, publishes by rename, never touches the input', async () => {
    const input = inputModel('in');
    const before = snapshot(input);
    const ck = await Checkpoint.open(input);
    expect(ck.generationConfig).toEqual({ eos_token_id: 2 });
    expect([...ck.passthroughFiles].sort()).toEqual(['generation_config.json', 'tokenizer.json', 'tokenizer_config.json']);
    const target = join(tmp.dir, 'out');
    const out = await OutputDir.create(target, { inputDir: input });
    expect(out.staging).toBe(join(tmp.dir, '.moe-staging-out'));
    expect(existsSync(target)).toBe(false);
    const copied = await out.copyPassthrough(input);
    expect(copied.sort()).toEqual(['generation_config.json', 'tokenizer.json', 'tokenizer_config.json']);
    await out.writeConfig({ ...ck.config, num_local_experts: 1 });
    const w = await out.openWriter([{ name: 'a', dtype: 'F32', shape: [2, 3] }]);
    await w.write('a', await ck.readBytes('a'));
    await w.finalize();
    // nothing under the target name until publish
    expect(existsSync(target)).toBe(false);
    await out.publish();
    expect(existsSync(out.staging)).toBe(false);
    expect(readdirSync(target).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    const back = await Checkpoint.open(target);
    expect(back.config.num_local_experts).toBe(1);
    expect([...(await back.readF32('a'))]).toEqual([0, 1, 2, 3, 4, 5]);
    await back.close();
    await ck.close();
    expect(snapshot(input)).toEqual(before);
  });

  it('refuses to overwrite without --force and replaces with it (a previous moe output only)', async () => {
    const input = inputModel('in2');
    const target = join(tmp.dir, 'exists');
    mkdirSync(target);
    writeFileSync(join(target, 'old.txt'), 'x');
    await expect(OutputDir.create(target, { inputDir: input })).rejects.toMatchObject({ code: 'OutputExists', message: expect.stringContaining('--force') });
    // a file moe did not write: --force refuses too, and says how to remove it by hand
    await expect(OutputDir.create(target, { inputDir: input, force: true })).rejects.toMatchObject({
      code: 'OutputExists',
      message: expect.stringContaining('rm -r'),
    });
    rmSync(join(target, 'old.txt'));
    writeFileSync(join(target, 'config.json'), '{}');
    writeFileSync(join(target, 'moe-prune-report.json'), JSON.stringify({ tool: 'moe prune' }));
    const out = await OutputDir.create(target, { inputDir: input, force: true });
    await out.writeJson('config.json', MIXTRAL_CONFIG);
    // the old output stays whole until the new one is complete
    expect(readdirSync(target).sort()).toEqual(['config.json', 'moe-prune-report.json']);
    await out.publish();
    expect(readdirSync(target)).toEqual(['config.json']);
    expect(readdirSync(tmp.dir).filter((f) => f.startsWith('.moe-staging'))).toEqual([]);
  });

  it('never writes over or inside the input, even through a symlink or with --force', async () => {
    const input = inputModel('in3');
    const link = join(tmp.dir, 'in3-link');
    symlinkSync(input, link);
    for (const out of [input, link, join(input, 'pruned'), tmp.dir]) {
      await expect(checkOutputTarget(out, { inputDir: input, force: true })).rejects.toMatchObject({ code: 'OutputExists' });
    }
    // missing parents are created when the output is staged (like mkdir -p); an ancestor that is a file is refused
    await expect(checkOutputTarget(join(tmp.dir, 'no', 'such', 'parent', 'out'))).resolves.toBeUndefined();
    writeFileSync(join(tmp.dir, 'a-file'), 'x');
    await expect(checkOutputTarget(join(tmp.dir, 'a-file', 'sub', 'out'))).rejects.toMatchObject({ code: 'OutputError' });
    const deep = await OutputDir.create(join(tmp.dir, 'deep', 'er', 'out'));
    await deep.publish();
    expect(statSync(join(tmp.dir, 'deep', 'er', 'out')).isDirectory()).toBe(true);
    await expect(checkOutputTarget(join(tmp.dir, 'fresh'), { inputDir: input })).resolves.toBeUndefined();
    await expect(checkOutputTarget(join(input, '..in3-sibling-named-oddly'), { inputDir: input })).rejects.toMatchObject({ code: 'OutputExists' });
    await expect(checkOutputTarget(join(tmp.dir, '..in3'), { inputDir: input })).resolves.toBeUndefined();
  });

  it('discard removes the staging directory', async () => {
    const out = await OutputDir.create(join(tmp.dir, 'discarded'));
    await out.writeJson('config.json', {});
    await out.discard();
    expect(existsSync(out.staging)).toBe(false);
    expect(existsSync(join(tmp.dir, 'discarded'))).toBe(false);
  });

  it('an interrupt handler can remove every unpublished staging directory', async () => {
    const a = await OutputDir.create(join(tmp.dir, 'int-a'));
    const b = await OutputDir.create(join(tmp.dir, 'int-b'));
    const c = await OutputDir.create(join(tmp.dir, 'int-c'));
    await c.writeJson('config.json', {});
    await c.publish();
    await discardActiveOutputs();
    expect([existsSync(a.staging), existsSync(b.staging), existsSync(join(tmp.dir, 'int-c', 'config.json'))]).toEqual([false, false, true]);
  });

  it('write failures are OutputErrors, not crashes', async () => {
    const out = await OutputDir.create(join(tmp.dir, 'vanishing'));
    rmSync(out.staging, { recursive: true });
    await expect(out.writeJson('config.json', {})).rejects.toMatchObject({ code: 'OutputError' });
    await expect(out.openWriter([{ name: 'a', dtype: 'F32', shape: [1] }])).rejects.toMatchObject({ code: 'OutputError' });
    await expect(out.publish()).rejects.toMatchObject({ code: 'OutputError' });
  });
});
