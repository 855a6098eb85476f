/**
 * Progress on odd terminals and usage errors, through the real CLI.
 *
 * Under `script` (a real pseudo-terminal) whose size is set to 0 columns, as some CI runners report it, a command
 * must finish and write plain lines: the spinner's line wrapping divided by the width and looped writing cursor
 * codes forever. The control run at 80 columns shows that the terminal path is really taken there.
 * Usage errors of the option parser are one `moe:` line with exit 2 (commander printed several `error:` lines), and
 * an internal invariant failing is a bug: exit 70 with its stack, whatever code it was raised with (it was 4 or 5).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { fail } from '../../src/errors.js';
import { CheckpointWriter } from '../../src/io/writer.js';
import { runMoe } from '../helpers/cli.js';
import { oneLine, tinyModel } from './helpers.js';

let root: string;
let model: string;
let calib: string;
const hasScript = process.platform === 'linux' && spawnSync('script', ['--version']).status === 0;
if (!hasScript) process.stderr.write('\n*** SKIPPING the 0-column terminal test: `script` (util-linux) is not installed. ***\n\n');

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-safety-tty-'));
  ({ model, calib } = await tinyModel(join(root, 'model')));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Run prune (not --quiet, so progress is drawn) inside a pseudo-terminal of `cols` columns; what it wrote. */
function pruneInTerminal(cols: number, out: string): { status: number | null; output: string } {
  const cmd = `stty cols ${cols} rows 24; exec ${process.execPath} --import tsx src/cli/entry.ts prune --keep 3 --method frequency --calib ${calib} --seq-len 8 --model ${model} --out ${out}`;
  const env: Record<string, string | undefined> = { ...process.env, TERM: 'xterm' };
  delete env.CI; // CI=true turns the terminal path off by itself
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { encoding: 'utf8', timeout: 120_000, env, maxBuffer: 64 * 2 ** 20 });
  return { status: r.status, output: r.stdout + r.stderr };
}

describe.runIf(hasScript)('a terminal that reports 0 columns is treated as no terminal', () => {
  it('the command finishes, with plain progress lines and no cursor codes', () => {
    const out = join(root, 'cols0');
    const r = pruneInTerminal(0, out);
    expect(r.status, r.output.slice(0, 2000)).toBe(0);
    expect(existsSync(join(out, 'model.safetensors'))).toBe(true);
    expect(r.output).not.toMatch(/\x1b\[/);
    expect(r.output).toMatch(/^✔ .+\(\d+\.\ds\)\r?$/m);
    // a few plain lines, not megabytes of redraws
    expect(r.output.length).toBeLessThan(16 * 1024);
    expect(JSON.parse(readFileSync(join(out, 'moe-prune-report.json'), 'utf8')).tool).toBe('moe prune');
  }, 150_000);

  it('the control: at 80 columns the same run draws a spinner (the terminal path is taken under script)', () => {
    const r = pruneInTerminal(80, join(root, 'cols80'));
    expect(r.status, r.output.slice(0, 2000)).toBe(0);
    expect(r.output).toMatch(/\x1b\[/);
  }, 150_000);
});

describe('usage errors of the option parser: one moe: line, exit 2', () => {
  it.each([
    [['prune', '--bogus-flag'], /^moe: unknown option '--bogus-flag'/],
    [['prune', '--keep'], /^moe: .*--keep/],
    [['no-such-command'], /^moe: unknown command 'no-such-command'/],
    [['quantize', '--model', 'M', '--out', 'O', '--bits', '4', 'extra-arg'], /^moe: /],
  ])('%j', async (args, message) => {
    const r = await runMoe(args);
    expect(r.code, r.stderr).toBe(2);
    oneLine(r.stderr, message);
    expect(r.stderr).not.toMatch(/^error:/m);
  });
});

describe('an internal invariant failing is a bug: exit 70 with the stack', () => {
  it('raised with an output code (4) inside a real prune, it still exits 70; nothing is published', async () => {
    // the fault: the writer's own invariant check fails at finalize, as a planning bug would make it
    const spy = vi
      .spyOn(CheckpointWriter.prototype, 'finalize')
      .mockImplementation(() => fail('OutputError', 'internal plan error: 1 planned tensors never written'));
    try {
      const out = join(root, 'bug');
      const r = await runMoe(['prune', '--keep', '3', '--method', 'random', '--model', model, '--out', out, '--quiet']);
      expect(r.code, r.stderr).toBe(70);
      expect(r.stderr).toMatch(/^moe: internal error \(a bug\): .*internal plan error/);
      expect(r.stderr).toMatch(/\n\s+at /); // the stack
      expect(existsSync(out)).toBe(false);
    } finally {
      spy.mockRestore();
    }
  });
});
