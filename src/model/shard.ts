/**
 * Layer-parallel output: `--shard i/n` jobs each write the tensors of their own decoder layers (layer mod n;
 * embeddings, final norm and lm_head go to shard 0) plus a manifest of the whole plan, and `moe assemble` joins
 * the parts into the checkpoint one unsharded run would have written, byte for byte.
 *
 * The plan (which experts are kept, which bits, which ranks) must be the same in every job: it comes from the same
 * saved statistics (`moe calibrate --out`, summed over data-parallel runs) or the same seed. The manifest's digest
 * covers every planned tensor's name, dtype, shape and input source plus the output config, so parts of different
 * plans are refused instead of silently mixed.
 */
import { createHash } from 'node:crypto';
import { readFile, readdir, copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fail } from '../errors.js';
import { Checkpoint, type HFConfig } from '../io/checkpoint.js';
import { DTYPE_BYTES, type Dtype } from '../io/dtype.js';
import { failWrite } from '../io/oserror.js';
import { checkOutputTarget, OutputDir } from '../io/output.js';

export interface ShardSpec {
  index: number;
  count: number;
  /** the pipeline's decisions (kept experts, bit map, ...), digested with the tensor list: tensors written as new
   *  bytes carry no input source, so two plans can share every name and shape */
  plan?: unknown;
}

export const SHARD_MANIFEST = 'moe-shard.json';
const COPY_CHUNK_BYTES = 64 << 20;

export interface ShardManifest {
  format: 'moe-shard';
  version: 1;
  index: number;
  count: number;
  digest: string;
  config: HFConfig;
  /** the whole plan's tensors in output order */
  tensors: { name: string; dtype: Dtype; shape: readonly number[]; source?: string }[];
  plan?: unknown;
}

/** Which shard writes a tensor of decoder layer `layer` (-1 / Infinity for tensors outside the layers). */
export function shardOwner(layer: number, count: number): number {
  return Number.isFinite(layer) && layer >= 0 ? layer % count : 0;
}

export function planDigest(tensors: ShardManifest['tensors'], config: HFConfig, plan?: unknown): string {
  return createHash('sha256')
    .update(JSON.stringify({ tensors, config, plan: plan ?? null }))
    .digest('hex');
}

async function readManifest(dir: string): Promise<ShardManifest> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(join(dir, SHARD_MANIFEST), 'utf8'));
  } catch {
    fail('InvalidData', `${dir} is not a shard of a --shard run (no readable ${SHARD_MANIFEST})`);
  }
  const m = raw as Partial<ShardManifest>;
  if (
    m?.format !== 'moe-shard' ||
    m.version !== 1 ||
    !Array.isArray(m.tensors) ||
    typeof m.digest !== 'string' ||
    !Number.isInteger(m.index) ||
    !Number.isInteger(m.count)
  ) {
    fail('InvalidData', `${dir}/${SHARD_MANIFEST} is not a version-1 moe shard manifest`);
  }
  return m as ShardManifest;
}

export interface AssembleReport {
  out: string;
  parts: number;
  tensors: number;
  bytes: number;
}

/** Join the parts of a `--shard i/n` run into one checkpoint (staged, published atomically). */
export async function assembleShards(
  parts: readonly string[],
  out: string,
  opts: { force?: boolean; onProgress?(done: number, total: number): void } = {},
): Promise<AssembleReport> {
  if (parts.length === 0) fail('Usage', 'assemble needs the shard directories of one --shard run');
  await checkOutputTarget(out, { force: opts.force, inputs: parts });
  const manifests = await Promise.all(parts.map(readManifest));
  const first = manifests[0]!;
  const seen = new Map<number, string>();
  manifests.forEach((m, i) => {
    if (m.count !== first.count || m.digest !== first.digest) {
      fail(
        'InvalidData',
        `${parts[i]} is shard ${m.index}/${m.count} of a different plan than ${parts[0]} (shards must come from the same command and statistics)`,
      );
    }
    if (seen.has(m.index)) fail('InvalidData', `shard ${m.index}/${m.count} given twice (${seen.get(m.index)} and ${parts[i]})`);
    seen.set(m.index, parts[i]!);
  });
  const missing = Array.from({ length: first.count }, (_, i) => i).filter((i) => !seen.has(i));
  if (missing.length) fail('InvalidData', `missing shard${missing.length > 1 ? 's' : ''} ${missing.map((i) => `${i}/${first.count}`).join(', ')}`);
  if (planDigest(first.tensors, first.config, first.plan) !== first.digest) fail('InvalidData', `${parts[0]}/${SHARD_MANIFEST} does not match its own digest`);

  const ckpts = await Promise.all(parts.map((p) => Checkpoint.open(p)));
  // every part is an input: the output may not be one, contain one, or lie inside one (--force would delete it)
  const dir = await OutputDir.create(out, { force: opts.force, inputs: parts });
  let writer: Awaited<ReturnType<OutputDir['openWriter']>> | undefined;
  let bytes = 0;
  try {
    const owner = first.tensors.map((t) => {
      const holders = ckpts.filter((c) => c.has(t.name));
      if (holders.length !== 1) fail('InvalidData', `tensor '${t.name}' is in ${holders.length} shards, expected exactly one`);
      const c = holders[0]!;
      const info = c.info(t.name);
      if (info.dtype !== t.dtype || info.shape.join(',') !== t.shape.join(',')) fail('InvalidData', `tensor '${t.name}' in ${c.dir} does not match the plan`);
      return c;
    });
    writer = await dir.openWriter(first.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })));
    for (const [k, t] of first.tensors.entries()) {
      const c = owner[k]!;
      const width = DTYPE_BYTES[t.dtype];
      const elems = t.shape.reduce((a, b) => a * b, 1);
      if (!writer.isWritten(t.name)) {
        if (elems * width <= COPY_CHUNK_BYTES) await writer.write(t.name, await c.readBytes(t.name));
        else {
          const step = Math.max(1, Math.floor(COPY_CHUNK_BYTES / width));
          for (let e = 0; e < elems; e += step) await writer.writePart(t.name, e * width, await c.readBytes(t.name, e, Math.min(elems, e + step)));
        }
      }
      bytes += elems * width;
      opts.onProgress?.(k + 1, first.tensors.length);
    }
    await writer.finalize();
    // every part wrote the same config.json (an edit of the input's text): keep its bytes
    await dir.writeConfig(first.config, ckpts[0]!.configText);
    await dir.copyPassthrough(parts[0]!);
    // the per-shard reports travel along, named by shard
    for (const [i, p] of parts.entries()) {
      for (const f of await readdir(p)) {
        if (!/^moe-.*-report\.json$/.test(f)) continue;
        const to = dir.path(f.replace(/\.json$/, `.shard-${manifests[i]!.index}-of-${first.count}.json`));
        await copyFile(join(p, f), to).catch((e: unknown) => failWrite(to, e));
      }
    }
    await dir.publish();
  } catch (e) {
    await writer?.abort();
    await dir.discard();
    throw e;
  } finally {
    await Promise.all(ckpts.map((c) => c.close()));
  }
  return { out, parts: parts.length, tensors: first.tensors.length, bytes };
}
