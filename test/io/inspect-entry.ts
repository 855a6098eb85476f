/**
 * `moe inspect` alone, wired exactly as src/cli/main.ts wires every command (exitOverride, MoeError -> one line +
 * exit code). Bundled by the hostile-input tests so they exercise the real command on hostile checkpoints without
 * depending on every other command compiling.
 */
import { Command, CommanderError } from 'commander';
import { ExitCode, isMoeError } from '../../src/errors.js';
import { registerInspect } from '../../src/cli/commands/inspect.js';

async function main(argv: string[]): Promise<number> {
  const program = new Command('moe').exitOverride();
  registerInspect(program);
  try {
    await program.parseAsync(argv);
    return ExitCode.ok;
  } catch (e) {
    if (e instanceof CommanderError) return ExitCode.usage;
    if (isMoeError(e)) {
      process.stderr.write(`moe: ${e.message}\n`);
      return e.exitCode;
    }
    throw e;
  }
}

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(`moe: internal error: ${err?.stack ? err.stack : err}`);
    process.exitCode = 70;
  },
);
