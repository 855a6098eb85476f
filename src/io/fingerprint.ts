/**
 * The identity of a run: what determines the bytes of its output. A resumable run records it in its staging
 * directory, and a later run finds the staging directory reusable only when its own identity is the same; otherwise
 * what is there came from another model, other data or other options, and mixing the two would publish a checkpoint
 * that neither run would have written (exit 0, silently wrong).
 *
 * The identity hashes the command, every option as given, and for each input file (each file under an input
 * directory) its path, size, modification time and first bytes (which hold a safetensors header, or the start of a
 * data file). It costs a stat and a 64 KiB read per file, not a pass over the data.
 */
import { createHash } from 'node:crypto';
import { open, readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';

const HEAD_BYTES = 64 * 1024;
/** An input directory with more files than this is hashed by its first ones (real checkpoints have a few hundred). */
const MAX_FILES = 20_000;

async function head(path: string, size: number): Promise<Buffer> {
  const n = Math.min(size, HEAD_BYTES);
  const buf = Buffer.alloc(n);
  if (n === 0) return buf;
  const fh = await open(path, 'r');
  try {
    await fh.read(buf, 0, n, 0);
  } finally {
    await fh.close();
  }
  return buf;
}

async function addPath(h: ReturnType<typeof createHash>, path: string, budget: { files: number }): Promise<void> {
  const st = await stat(path).catch(() => undefined);
  if (!st) {
    h.update(`missing ${path}\n`);
    return;
  }
  if (st.isDirectory()) {
    h.update(`dir ${path}\n`);
    let entries: string[];
    try {
      entries = (await readdir(path)).sort();
    } catch {
      h.update('unlistable\n');
      return;
    }
    // a run's own bookkeeping (staging, locks, journals) is not an input
    for (const e of entries) if (!e.startsWith('.moe-') && budget.files-- > 0) await addPath(h, join(path, e), budget);
    return;
  }
  // only regular files are read (a FIFO would block); everything else counts by its kind
  if (!st.isFile()) {
    h.update(`special ${path}\n`);
    return;
  }
  h.update(`file ${path} ${st.size} ${st.mtimeMs}\n`);
  h.update(await head(path, st.size).catch(() => Buffer.from('unreadable')));
}

/** sha256 hex of the command, its options (keys sorted) and the identity of every input path. */
export async function runFingerprint(command: string, options: Record<string, unknown>, inputs: readonly string[]): Promise<string> {
  const h = createHash('sha256');
  const sorted = Object.fromEntries(
    Object.keys(options)
      .sort()
      .map((k) => [k, options[k]]),
  );
  h.update(JSON.stringify({ command, options: sorted }));
  h.update('\n');
  const budget = { files: MAX_FILES };
  for (const p of [...new Set(inputs.map((i) => resolve(i)))].sort()) await addPath(h, p, budget);
  return h.digest('hex');
}

/**
 * sha256 hex of the identity of some input paths alone (in the order given): what `moe run` keys a finished stage's
 * reuse on, so that a model or data file changed under the same path reruns the stages that read it.
 */
export async function inputsFingerprint(inputs: readonly string[]): Promise<string> {
  const h = createHash('sha256');
  const budget = { files: MAX_FILES };
  for (const p of inputs) await addPath(h, resolve(p), budget);
  return h.digest('hex');
}
