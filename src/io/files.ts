/**
 * Checks on input files before they are opened. Opening a FIFO blocks until a writer appears, and reading a
 * character device (/dev/zero) never ends, so every input is stat'ed first (following links, as a read would) and
 * must be a regular file of plausible size; files copied verbatim into an output must also resolve inside the model
 * directory, so that a model directory cannot smuggle a link to a secret into an output that is then uploaded.
 */
import { lstat, realpath, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, sep } from 'node:path';
import { type ErrorCode, fail } from '../errors.js';

/** Tokenizers, configs and templates: the largest real tokenizer.json files are tens of MB. */
export const MAX_SIDE_FILE_BYTES = 64 * 2 ** 20;

function kindName(st: Awaited<ReturnType<typeof stat>>): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * The file's size, after checking that `path` (links followed) is a regular file of at most maxBytes; exit 3
 * otherwise. A missing file is `MissingFile`, so callers that treat absence as "not given" can catch that alone.
 */
export async function checkRegularFile(path: string, what: string, opts: { maxBytes?: number; code?: ErrorCode } = {}): Promise<number> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    fail('MissingFile', `cannot open ${path}: ${code ?? (e as Error).message}`);
  }
  // a directory where a file belongs is a missing file; a FIFO or device is refused as unsafe to open (both exit 3)
  if (!st.isFile()) fail(st.isDirectory() ? 'MissingFile' : 'UnsafePath', `${what} ${path} is ${kindName(st)}, not a regular file; refusing to read it`);
  if (opts.maxBytes !== undefined && st.size > opts.maxBytes) {
    fail(opts.code ?? 'InvalidData', `${what} ${path} is ${st.size} bytes, larger than any real ${what} (${opts.maxBytes} max)`);
  }
  return st.size;
}

function within(child: string, parent: string): boolean {
  const r = relative(parent, child);
  return r === '' || (r !== '..' && !r.startsWith('..' + sep) && !isAbsolute(r));
}

/**
 * Where a file of the model directory may resolve to: inside the directory itself, or (for a Hugging Face hub cache
 * snapshot, `<repo>/snapshots/<rev>/`, whose files are links to `<repo>/blobs/<hash>`) inside that repo's blobs.
 */
async function allowedRoots(modelDir: string): Promise<string[]> {
  const real = await realpath(modelDir);
  const roots = [real];
  if (basename(dirname(real)) === 'snapshots') roots.push(join(dirname(dirname(real)), 'blobs'));
  return roots;
}

/**
 * A file copied verbatim from the model directory into an output: a regular file (a link is fine) that resolves
 * inside the model directory, of plausible size. Anything else is refused with exit 3 before any work.
 */
export async function checkPassthroughFile(modelDir: string, name: string): Promise<void> {
  const p = join(modelDir, name);
  const l = await lstat(p).catch(() => undefined);
  if (!l) return;
  await checkRegularFile(p, name, { maxBytes: MAX_SIDE_FILE_BYTES, code: 'UnsafePath' });
  if (l.isSymbolicLink()) {
    const real = await realpath(p);
    const roots = await allowedRoots(modelDir);
    if (!roots.some((r) => within(real, r))) {
      fail('UnsafePath', `${p} is a link to ${real}, outside the model directory; moe copies only files of the model directory into outputs`);
    }
  }
}
