/**
 * One wording for a write the system refused. A full disk, a read-only mount or a revoked permission is the user's
 * to fix, so it is exit 4 with the file and the real cause, never a stack trace (exit 70).
 */
import { fail } from '../errors.js';

const CAUSES: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EROFS: 'read-only filesystem',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EFBIG: 'file too large for this filesystem',
  EIO: 'I/O error',
};

/** `CODE (what it means)`, or the error's message when it has no code. */
export function osCause(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (!code) return (e as Error).message;
  const why = CAUSES[code];
  return why ? `${code} (${why})` : code;
}

/** Fail as `cannot write <path>: ENOSPC (no space left on the device)` (exit 4). */
export function failWrite(path: string, e: unknown): never {
  fail('OutputError', `cannot write ${path}: ${osCause(e)}`);
}
