/**
 * Real filesystems for the safety tests: a small tmpfs (full disk: ENOSPC mid-write) and a read-only mount (EROFS).
 * Mounting needs root (this project's machines and CI run as root). Where it is impossible the tests that need it
 * skip, and say so loudly on stderr: a skip here is a hole in the coverage, never silent.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function tryMount(): boolean {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return false;
  const dir = mkdtempSync(join(tmpdir(), 'moe-mount-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir], { stdio: 'ignore' });
    execFileSync('umount', [dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Whether this process can mount a tmpfs; when not, the reason is printed once, loudly. */
export const canMount: boolean = (() => {
  const ok = tryMount();
  if (!ok) {
    process.stderr.write(
      '\n*** SKIPPING the real-mount safety tests (ENOSPC on a full tmpfs, EROFS on a read-only mount): this process ' +
        'cannot mount a tmpfs (needs Linux and root). Only the MOE_FAULT injection tests cover these cases here. ***\n\n',
    );
  }
  return ok;
})();

/** Mount a tmpfs of `size` (e.g. '1m') at dir (created); `ro` mounts it read-only. */
export function mountTmpfs(dir: string, size: string, ro = false): void {
  mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}${ro ? ',ro' : ''}`, 'tmpfs', dir], { stdio: 'ignore' });
}

/** Remount dir read-only (what it holds stays, nothing can be written). */
export function remountReadOnly(dir: string): void {
  execFileSync('mount', ['-o', 'remount,ro', dir], { stdio: 'ignore' });
}

export function unmount(dir: string): void {
  try {
    execFileSync('umount', [dir], { stdio: 'ignore' });
  } catch {
    // not mounted (the test failed before mounting): nothing to undo
  }
}

/** Change a mounted tmpfs's size (what it holds stays): below its use, nothing more fits; above, there is room again. */
export function resizeTmpfs(dir: string, size: string): void {
  execFileSync('mount', ['-o', `remount,size=${size}`, dir], { stdio: 'ignore' });
}
