/**
 * Planned, streaming checkpoint writer.
 *
 * Every pipeline knows the name, dtype and shape of each output tensor before it computes any of them (the plan),
 * so the shard layout and every header are fixed up front and each tensor is written at its final offset as soon
 * as it exists. Nothing is buffered beyond one tensor and no shard is copied twice, unlike writers that grow a
 * shard in memory (mergekit) or append data and prepend a header afterwards.
 */
import { open, readFile, readdir, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fail, isMoeError } from '../errors.js';
import { DTYPE_BYTES, type Dtype } from './dtype.js';
import { checkFiniteOutput } from './finite.js';
import { failWrite } from './oserror.js';
import { encodeHeader, IO_CHUNK_BYTES, quote, type PendingTensor } from './safetensors.js';

export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;

/**
 * Parse a --max-shard-size value: "5GB", "500MB", "2GiB", "1e9" or plain bytes. Decimal units mean powers of
 * ten, as in transformers' save_pretrained(max_shard_size=...).
 */
export function parseByteSize(s: string, flag = '--max-shard-size'): number {
  const m = /^(\d+(?:\.\d+)?(?:e\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$/i.exec(String(s).trim());
  const mult: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KIB: 1024, MIB: 1024 ** 2, GIB: 1024 ** 3, TIB: 1024 ** 4 };
  const v = m ? Math.round(Number(m[1]) * mult[(m[2] ?? 'B').toUpperCase()]!) : NaN;
  if (!Number.isSafeInteger(v) || v <= 0) fail('Usage', `${flag} must be a positive size like 5GB, 500MB or 2GiB (got ${JSON.stringify(s)})`);
  return v;
}

export interface TensorSpec {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
}

export interface WriterOptions {
  maxShardBytes?: number;
  /** refuse NaN/Inf in any float tensor written (exit 5): every output a command writes (OutputDir.openWriter) */
  finiteOnly?: boolean;
  metadata?: Record<string, string>;
}

interface Slot {
  dtype: Dtype;
  shard: number;
  offset: number;
  byteLength: number;
  /** bytes written so far (a tensor may arrive in parts, e.g. one expert of a fused tensor at a time) */
  filled: number;
}

export function byteLengthOf(t: TensorSpec): number {
  return t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
}

function checkSpec(t: TensorSpec): void {
  if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || !Number.isSafeInteger(byteLengthOf(t))) {
    fail('OutputError', `internal plan error: tensor ${quote(t.name)} has an invalid shape ${quote(t.shape)}`);
  }
}

/** Assign tensors, in order, to shards of at most maxShardBytes (a larger single tensor gets a shard of its own). */
export function planShards(tensors: readonly TensorSpec[], maxShardBytes: number): TensorSpec[][] {
  const shards: TensorSpec[][] = [];
  let cur: TensorSpec[] = [];
  let curBytes = 0;
  for (const t of tensors) {
    const b = byteLengthOf(t);
    if (cur.length > 0 && curBytes + b > maxShardBytes) {
      shards.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push(t);
    curBytes += b;
  }
  if (cur.length > 0 || shards.length === 0) shards.push(cur);
  return shards;
}

export function shardFileName(i: number, n: number): string {
  if (n === 1) return 'model.safetensors';
  const pad = (k: number) => String(k).padStart(5, '0');
  return `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
}

export class CheckpointWriter {
  private slots = new Map<string, Slot>();
  private closed = false;
  private constructor(
    readonly dir: string,
    private readonly shards: TensorSpec[][],
    private readonly handles: FileHandle[],
    /** file names of the shards, for the error of a write that fails */
    private readonly names: string[],
  ) {}

  /**
   * Create the shard files in `dir` (a staging directory) with their headers written and data unset.
   *
   * Resume: a shard file already in `dir` whose header bytes equal the new plan's is kept, and the tensors the
   * journal lists for it count as written, so a run killed mid-write and restarted with the same command only
   * writes what is missing. A different plan (other arguments, other shards) shares no header bytes and starts
   * over. Files of the staging directory that the plan does not name are removed so they cannot be published.
   */
  static async create(dir: string, tensors: readonly TensorSpec[], opts: WriterOptions = {}): Promise<CheckpointWriter> {
    const seen = new Set<string>();
    for (const t of tensors) {
      if (seen.has(t.name)) fail('OutputError', `internal plan error: tensor ${quote(t.name)} planned twice`);
      seen.add(t.name);
      checkSpec(t);
    }
    const maxShard = opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
    if (!(maxShard > 0)) fail('Usage', `--max-shard-size must be positive (got ${maxShard})`);
    const shards = planShards(tensors, maxShard);
    const journaled = await readJournal(dir);
    const names = shards.map((_, i) => shardFileName(i, shards.length));
    await removeStaleShards(dir, new Set(names));
    const handles: FileHandle[] = [];
    const dataStarts: number[] = [];
    const reused: boolean[] = [];
    for (let i = 0; i < shards.length; i++) {
      const pending: PendingTensor[] = shards[i]!.map((t) => ({ ...t, byteLength: byteLengthOf(t) }));
      const header = encodeHeader(pending, opts.metadata ?? { format: 'pt' });
      const total = pending.reduce((a, t) => a + t.byteLength, 0);
      const path = join(dir, names[i]!);
      let fh: FileHandle;
      try {
        const keep = journaled.size > 0 && (await sameHeader(path, header, header.byteLength + total));
        fh = await open(path, keep ? 'r+' : 'w');
        reused.push(keep);
        if (!keep) {
          await writeFully(fh, header, 0, path);
          // the file gets its final size now (sparse until written), so a tensor can land at its offset in any order
          await fh.truncate(header.byteLength + total);
        }
      } catch (e) {
        await Promise.allSettled(handles.map((h) => h.close()));
        if (isMoeError(e)) throw e;
        failWrite(path, e);
      }
      handles.push(fh);
      dataStarts.push(header.byteLength);
    }
    const w = new CheckpointWriter(dir, shards, handles, names);
    w.finiteOnly = !!opts.finiteOnly;
    shards.forEach((shard, i) => {
      let off = 0;
      for (const t of shard) {
        const n = byteLengthOf(t);
        const done = reused[i] && journaled.has(t.name);
        w.slots.set(t.name, { dtype: t.dtype, shard: i, offset: dataStarts[i]! + off, byteLength: n, filled: done ? n : 0 });
        off += n;
      }
    });
    w.resumed = [...w.slots.values()].filter((s) => s.filled === s.byteLength).length;
    // the journal from here on lists exactly what this plan has written
    const keepLines = [...w.slots]
      .filter(([, s]) => s.filled === s.byteLength)
      .map(([n]) => n + '\n')
      .join('');
    try {
      await writeFile(join(dir, JOURNAL_FILE), keepLines);
      w.journal = await open(join(dir, JOURNAL_FILE), 'a');
    } catch (e) {
      await w.abort();
      failWrite(join(dir, JOURNAL_FILE), e);
    }
    return w;
  }

  private finiteOnly = false;

  /** Tensors found already written (resumed) when the writer was created. */
  resumed = 0;
  private journal?: FileHandle;
  private writes = 0;

  /** Whether a planned tensor is complete (written by this run or found written by a killed earlier run). */
  isWritten(name: string): boolean {
    const s = this.slots.get(name);
    return !!s && s.filled === s.byteLength;
  }

  get pendingNames(): string[] {
    return [...this.slots].filter(([, s]) => s.filled < s.byteLength).map(([n]) => n);
  }

  /** The planned shard file of a tensor (for reports). */
  shardOf(name: string): string {
    const s = this.slots.get(name);
    if (!s) fail('OutputError', `internal plan error: tensor ${quote(name)} was not planned`);
    return shardFileName(s.shard, this.shards.length);
  }

  /** Write one planned tensor's raw bytes. */
  async write(name: string, bytes: Uint8Array): Promise<void> {
    const s = this.slot(name);
    if (bytes.byteLength !== s.byteLength) {
      fail('OutputError', `internal plan error: tensor ${quote(name)} is ${bytes.byteLength} bytes, planned ${s.byteLength}`);
    }
    // every byte of an output passes here (copied, produced or assembled): NaN/Inf never reaches a checkpoint
    if (this.finiteOnly) checkFiniteOutput(name, bytes, s.dtype);
    await writeFully(this.handles[s.shard]!, bytes, s.offset, this.shardPath(s.shard));
    s.filled = s.byteLength;
    await this.journalDone(name);
  }

  /**
   * Write part of a planned tensor at a byte offset inside it, so a tensor larger than memory (or a fused [E, ...]
   * tensor produced one expert at a time) streams out. The tensor counts as written once parts covering its
   * size have arrived; parts must not overlap.
   */
  async writePart(name: string, byteOffset: number, bytes: Uint8Array): Promise<void> {
    const s = this.slot(name);
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset + bytes.byteLength > s.byteLength) {
      fail('OutputError', `internal plan error: part [${byteOffset}, +${bytes.byteLength}) outside tensor ${quote(name)} of ${s.byteLength} bytes`);
    }
    if (this.finiteOnly) checkFiniteOutput(name, bytes, s.dtype, Math.floor(byteOffset / DTYPE_BYTES[s.dtype]));
    await writeFully(this.handles[s.shard]!, bytes, s.offset + byteOffset, this.shardPath(s.shard));
    s.filled += bytes.byteLength;
    if (s.filled === s.byteLength) await this.journalDone(name);
  }

  /**
   * Record a finished tensor. The data was handed to the kernel before this line, so a killed process loses
   * nothing journaled (a power loss may: resume is for interrupted runs, not crashed machines).
   */
  private async journalDone(name: string): Promise<void> {
    try {
      await this.journal?.write(name + '\n');
    } catch (e) {
      // the journal is in the staging directory too: a disk that fills between a tensor and its line ends here
      failWrite(join(this.dir, JOURNAL_FILE), e);
    }
    this.writes++;
    // fault injection for the kill-and-restart tests: die like `kill -9` after N tensors
    const killAfter = Number(process.env.MOE_TEST_KILL_AFTER_WRITES);
    if (killAfter > 0 && this.writes >= killAfter) process.kill(process.pid, 'SIGKILL');
  }

  private shardPath(i: number): string {
    return join(this.dir, this.names[i]!);
  }

  private slot(name: string): Slot {
    const s = this.slots.get(name);
    if (!s) fail('OutputError', `internal plan error: tensor ${quote(name)} was not planned`);
    if (this.closed) fail('OutputError', `internal plan error: tensor ${quote(name)} written after finalize/abort`);
    return s;
  }

  /** Close the shards and write the index (sharded output only). Every planned tensor must have been written. */
  async finalize(): Promise<string[]> {
    const missing = this.pendingNames;
    if (missing.length) fail('OutputError', `internal plan error: ${missing.length} planned tensors never written (first: ${quote(missing[0])})`);
    this.closed = true;
    try {
      await this.journal?.close();
      await rm(join(this.dir, JOURNAL_FILE), { force: true });
      for (const fh of this.handles) {
        await fh.sync();
        await fh.close();
      }
    } catch (e) {
      failWrite(this.dir, e);
    }
    const n = this.shards.length;
    const files = this.shards.map((_, i) => shardFileName(i, n));
    if (n > 1) {
      const weightMap: Record<string, string> = {};
      let total = 0;
      this.shards.forEach((shard, i) => {
        for (const t of shard) {
          weightMap[t.name] = files[i]!;
          total += byteLengthOf(t);
        }
      });
      try {
        await writeFile(
          join(this.dir, 'model.safetensors.index.json'),
          JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n',
        );
      } catch (e) {
        failWrite(join(this.dir, 'model.safetensors.index.json'), e);
      }
    }
    return files;
  }

  /** Close the shard files without writing the index (the caller discards the staging directory). */
  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.handles, ...(this.journal ? [this.journal] : [])].map((h) => h.close()));
  }
}

async function writeFully(fh: FileHandle, bytes: Uint8Array, position: number, path: string): Promise<void> {
  let done = 0;
  try {
    while (done < bytes.byteLength) {
      const want = Math.min(bytes.byteLength - done, IO_CHUNK_BYTES);
      const { bytesWritten } = await fh.write(bytes, done, want, position + done);
      done += bytesWritten;
    }
  } catch (e) {
    // a full disk or a revoked permission is the user's to fix, not a crash
    failWrite(path, e);
  }
}

/** Finished tensors of an interrupted run, one name per line; a line cut by the kill is ignored. */
export const JOURNAL_FILE = '.moe-journal';

async function readJournal(dir: string): Promise<Set<string>> {
  let text: string;
  try {
    text = await readFile(join(dir, JOURNAL_FILE), 'utf8');
  } catch {
    return new Set();
  }
  const lines = text.split('\n');
  lines.pop(); // unterminated tail
  return new Set(lines.filter((l) => l.length > 0));
}

async function sameHeader(path: string, header: Uint8Array, size: number): Promise<boolean> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, 'r');
    if ((await fh.stat()).size !== size) return false;
    const buf = Buffer.alloc(header.byteLength);
    const { bytesRead } = await fh.read(buf, 0, buf.byteLength, 0);
    return bytesRead === header.byteLength && buf.equals(header);
  } catch {
    return false;
  } finally {
    await fh?.close();
  }
}

async function removeStaleShards(dir: string, planned: ReadonlySet<string>): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return;
  }
  for (const f of entries) {
    if ((f.endsWith('.safetensors') && !planned.has(f)) || f === 'model.safetensors.index.json') {
      await rm(join(dir, f), { force: true });
    }
  }
}
