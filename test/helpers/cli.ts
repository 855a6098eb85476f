/** Run the real `moe` program in-process (main() from src/cli), capturing what it prints and its exit code. */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { vi } from 'vitest';
import { main } from '../../src/cli/main.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function runMoe(args: readonly string[]): Promise<CliResult> {
  let stderr = '';
  let stdout = '';
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
    stderr += String(s);
    return true;
  });
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
    stdout += String(s);
    return true;
  });
  try {
    const code = await main(['node', 'moe', ...args]);
    return { code, stdout, stderr };
  } finally {
    e.mockRestore();
    o.mockRestore();
  }
}

/** Run the CLI as its own process: for kills, signals and environment (fault injection) that in-process runs cannot take. */
export function spawnMoe(args: readonly string[], env: Record<string, string> = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 120_000,
  });
}
