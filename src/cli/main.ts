/**
 * The `moe` command line. Each subcommand lives in src/cli/commands/<name>.ts and registers itself on the
 * program; this file only wires them and turns errors into one line and an exit code.
 */
import { Command, CommanderError } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ExitCode, isMoeError } from '../errors.js';
import { COMMANDS } from './commands/index.js';

/** The package version, found by walking up from this file: the same code runs from src/ (tests) and dist/src/. */
function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const p = join(dir, 'package.json');
    if (existsSync(p)) {
      const pkg = JSON.parse(readFileSync(p, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'moe' && pkg.version) return pkg.version;
    }
    dir = dirname(dir);
  }
  return '0.0.0';
}

export function buildProgram(): Command {
  const program = new Command('moe')
    .description(
      'Make Mixture-of-Experts language models smaller: prune, merge, quantize and decompose experts in Hugging Face safetensors checkpoints, streamed layer by layer.',
    )
    .version(packageVersion(), '-V, --version')
    .exitOverride()
    // commander prints usage errors as several lines ("error: ..." plus a hint); main() prints them as one moe: line
    .configureOutput({ outputError: () => {} });
  for (const register of COMMANDS) register(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.ok;
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version are "errors" to commander; real usage errors were already printed by it
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return ExitCode.ok;
      const cmd = e.code !== 'commander.unknownCommand' && argv[2] && !argv[2].startsWith('-') ? ` ${argv[2]}` : '';
      const what = e.message
        .replace(/^error:\s*/i, '')
        .replace(/\s*\n\s*/g, ' ')
        .trim();
      process.stderr.write(`moe: ${what} (see moe${cmd} --help)\n`);
      return ExitCode.usage;
    }
    if (isMoeError(e)) {
      // an internal invariant failing is a bug, whatever code it was raised with: exit 70 with the stack (README)
      if (/^internal\b/.test(e.message) || /\binternal plan error\b/.test(e.message)) {
        process.stderr.write(`moe: internal error (a bug): ${e.stack ?? e.message}\n`);
        return ExitCode.internal;
      }
      process.stderr.write(`moe: ${e.message}\n`);
      return e.exitCode;
    }
    throw e;
  }
}
