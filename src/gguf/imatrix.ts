/**
 * The importance matrix in the GGUF format current llama-imatrix writes (tools/imatrix/imatrix.cpp save_imatrix,
 * read by common/imatrix-loader.cpp for llama-quantize --imatrix):
 *
 *   general.type = "imatrix", imatrix.datasets = [str], imatrix.chunk_count = u32, imatrix.chunk_size = u32
 *   per weight tensor W (names sorted): "<W>.in_sum2" F32 ne = [n_in, n_mat]: the sum over the tokens that reached
 *   the matrix of x_i^2 per input column, and "<W>.counts" F32 ne = [1, n_mat]: how many tokens, where n_mat is 1
 *   for a 2-D weight and the expert count for a 3-D expert tensor (each expert's own routed tokens).
 *
 * llama-quantize divides each sum by its count (a matrix with count 0 gets importance 1) and uses the result as
 * the per-column importance of that matrix's rows. Our collector is the same sum of squares over the same inputs:
 * the q/k/v input for attn_q/k/v, the o_proj input for attn_output, each expert's routed tokens (gate/up) and its
 * activations (down), the shared expert's inputs.
 */
import { fail } from '../errors.js';
import { GgufValueType, kv, type GgufValue } from './format.js';
import { readGguf, readGgufTensor } from './reader.js';
import { writeGguf, type GgufWriteTensor } from './writer.js';

export const IMATRIX_FILE = 'imatrix.gguf';

export interface ImatrixEntry {
  /** sums of squares [nMat, nIn], matrix after matrix */
  sums: Float64Array;
  /** tokens per matrix */
  counts: Float64Array;
  nIn: number;
}

export interface Imatrix {
  entries: Map<string, ImatrixEntry>;
  datasets: string[];
  chunkCount: number;
  chunkSize: number;
}

/**
 * Accumulates column sums of squares per input source (`3:attention.in` feeds attn_q, attn_k and attn_v alike,
 * `3:experts.in` the gate and up experts), named per weight tensor at the end.
 */
export class ImatrixCollector {
  readonly sources = new Map<string, ImatrixEntry>();

  entry(key: string, nIn: number, nMat = 1): ImatrixEntry {
    let e = this.sources.get(key);
    if (!e) this.sources.set(key, (e = { sums: new Float64Array(nIn * nMat), counts: new Float64Array(nMat), nIn }));
    else if (e.nIn !== nIn || e.counts.length !== nMat) fail('ComputeError', `imatrix ${key}: ${nIn} x ${nMat} after ${e.nIn} x ${e.counts.length}`);
    return e;
  }

  /** rows of x [rows, nIn] reached matrix `mat` of the tensors fed by `key` */
  add(key: string, x: Float32Array, rows: number, nIn: number, mat = 0, nMat = 1): void {
    const e = this.entry(key, nIn, nMat);
    const o = mat * nIn;
    for (let r = 0; r < rows; r++) {
      const b = r * nIn;
      for (let i = 0; i < nIn; i++) e.sums[o + i]! += x[b + i]! * x[b + i]!;
    }
    e.counts[mat]! += rows;
  }

  /** the file's entries: weight tensor name -> its source's sums (sources no tensor names are left out) */
  named(sourceOf: ReadonlyMap<string, string>): Map<string, ImatrixEntry> {
    const out = new Map<string, ImatrixEntry>();
    for (const [name, key] of sourceOf) {
      const e = this.sources.get(key);
      if (e) out.set(name, e);
    }
    return out;
  }
}

/** The mean square per column llama-quantize derives (sum / count; 1 where no token reached the matrix). */
export function importanceOf(e: ImatrixEntry): Float32Array {
  const nMat = e.counts.length;
  const out = new Float32Array(e.nIn * nMat);
  for (let m = 0; m < nMat; m++) {
    const c = e.counts[m]!;
    for (let i = 0; i < e.nIn; i++) out[m * e.nIn + i] = c > 0 ? e.sums[m * e.nIn + i]! / c : 1;
  }
  return out;
}

export async function writeImatrix(path: string, m: Imatrix): Promise<void> {
  const meta = new Map<string, GgufValue>([
    ['general.type', kv.str('imatrix')],
    ['imatrix.datasets', kv.arr(GgufValueType.STRING, m.datasets)],
    ['imatrix.chunk_count', kv.u32(m.chunkCount)],
    ['imatrix.chunk_size', kv.u32(m.chunkSize)],
  ]);
  const tensors: GgufWriteTensor[] = [];
  const f32 = (v: Float64Array) => {
    const a = Float32Array.from(v);
    return new Uint8Array(a.buffer);
  };
  // llama-imatrix sorts the names (std::sort of std::string: byte order)
  for (const name of [...m.entries.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
    const e = m.entries.get(name)!;
    const nMat = e.counts.length;
    tensors.push({ name: `${name}.in_sum2`, type: 'F32', ne: [e.nIn, nMat], produce: () => f32(e.sums) });
    tensors.push({ name: `${name}.counts`, type: 'F32', ne: [1, nMat], produce: () => f32(e.counts) });
  }
  await writeGguf(path, meta, tensors);
}

export async function readImatrix(path: string): Promise<Imatrix> {
  const f = await readGguf(path);
  const type = f.metadata.get('general.type');
  if (type?.value !== 'imatrix') fail('InvalidStats', `${path}: not an imatrix GGUF (general.type ${String(type?.value)})`);
  const num = (k: string) => {
    const v = f.metadata.get(k);
    if (!v || v.type === GgufValueType.ARRAY) fail('InvalidStats', `${path}: no ${k}`);
    return Number(v.value);
  };
  const ds = f.metadata.get('imatrix.datasets');
  const datasets = ds && ds.type === GgufValueType.ARRAY ? ds.value.map(String) : [];
  const entries = new Map<string, ImatrixEntry>();
  const byName = new Map(f.tensors.map((t) => [t.name, t]));
  for (const t of f.tensors) {
    if (!t.name.endsWith('.in_sum2')) continue;
    const name = t.name.slice(0, -'.in_sum2'.length);
    const c = byName.get(`${name}.counts`);
    if (!c) fail('InvalidStats', `${path}: ${name} has sums but no counts`);
    if (t.type !== 'F32' || c.type !== 'F32') fail('InvalidStats', `${path}: ${name}: sums and counts must be F32`);
    const [nIn, nMat = 1] = t.ne;
    if (c.ne[0] !== 1 || (c.ne[1] ?? 1) !== nMat) fail('InvalidStats', `${path}: ${name}: counts [${c.ne.join(', ')}] for ${nMat} matrices`);
    const sums = new Float32Array((await readGgufTensor(f, t.name)).slice().buffer);
    const counts = new Float32Array((await readGgufTensor(f, c.name)).slice().buffer);
    entries.set(name, { sums: Float64Array.from(sums), counts: Float64Array.from(counts), nIn: nIn! });
  }
  return { entries, datasets, chunkCount: num('imatrix.chunk_count'), chunkSize: num('imatrix.chunk_size') };
}
