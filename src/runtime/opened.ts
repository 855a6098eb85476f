/**
 * Models opened by worker tasks (window shares, shard.ts; head ranges, head.ts): a worker lives as long as the
 * process, so it keeps what it opened for the next task instead of re-reading every header. It keeps it only while
 * the directory's files are the ones it opened: a process that rewrites a checkpoint at a path it already scored
 * (a bench, a recipe, a test writing to one output directory twice) would otherwise have its workers compute on the
 * old files while the main thread reads the new ones, and print a wrong perplexity with exit 0.
 *
 * The stamp is each regular file's name, size, inode and change/modification times: a rewrite through the
 * checkpoint writer renames new files into place (a new inode) and any in-place write moves the times, so either
 * is seen; it costs one readdir and a stat per file per task, not a read.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openModel, type Model } from '../model/open.js';

interface Entry {
  stamp: string;
  model: Promise<Model>;
}

const cache = new Map<string, Entry>();

async function stampOf(dir: string): Promise<string> {
  const names = (await readdir(dir).catch(() => [] as string[])).sort();
  const parts: string[] = [];
  for (const n of names) {
    const st = await stat(join(dir, n)).catch(() => undefined);
    if (st?.isFile()) parts.push(`${n}:${st.size}:${st.ino}:${st.mtimeMs}:${st.ctimeMs}`);
  }
  return parts.join('\n');
}

/** The model in `dir`, opened once per worker for as long as the directory's files stay the same. */
export async function openCached(dir: string): Promise<Model> {
  const stamp = await stampOf(dir);
  const had = cache.get(dir);
  if (had && had.stamp === stamp) return had.model;
  if (had) {
    cache.delete(dir);
    // a worker runs one task at a time (pool-worker.ts), so nothing else reads the replaced model's files
    had.model.then((m) => m.ckpt.close()).catch(() => {});
  }
  const model = openModel(dir);
  const entry = { stamp, model };
  // a failed open is not kept: the error reaches the caller, and a later task may open again
  model.catch(() => {
    if (cache.get(dir) === entry) cache.delete(dir);
  });
  cache.set(dir, entry);
  return model;
}
