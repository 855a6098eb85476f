/** Hand-built safetensors files and checkpoint directories for io tests (hostile ones included). */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededRandom as rng } from '../../kernels/random.js';
export { rng };

export function tempDir(prefix = 'moe-io-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Raw safetensors bytes from a header (any JSON text or object) and a data area. */
export function rawSafetensors(header: unknown, data: Uint8Array | number = 0, lengthOverride?: bigint): Uint8Array {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const hb = Buffer.from(text, 'utf8');
  const d = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + hb.byteLength + d.byteLength);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(hb.byteLength), true);
  out.set(hb, 8);
  out.set(d, 8 + hb.byteLength);
  return out;
}

/** A valid two-tensor file: a F32 [2,3] (values 0..5) and b BF16 [4]. */
export function validFile(): { header: Record<string, unknown>; bytes: Uint8Array } {
  const a = new Float32Array([0, 1, 2, 3, 4, 5]);
  const b = new Uint16Array([0x3f80, 0x4000, 0x4040, 0x4080]);
  const data = new Uint8Array(24 + 8);
  data.set(new Uint8Array(a.buffer), 0);
  data.set(new Uint8Array(b.buffer), 24);
  const header = {
    __metadata__: { format: 'pt' },
    a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
    b: { dtype: 'BF16', shape: [4], data_offsets: [24, 32] },
  };
  return { header, bytes: rawSafetensors(header, data) };
}

export const MIXTRAL_CONFIG = {
  model_type: 'mixtral',
  architectures: ['MixtralForCausalLM'],
  hidden_size: 8,
  num_hidden_layers: 1,
  num_local_experts: 2,
  num_experts_per_tok: 1,
  intermediate_size: 4,
  vocab_size: 16,
};

/** A checkpoint directory whose model.safetensors is `file`. */
export function writeCheckpointDir(dir: string, file: Uint8Array, config: unknown = MIXTRAL_CONFIG): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), typeof config === 'string' ? config : JSON.stringify(config));
  writeFileSync(join(dir, 'model.safetensors'), file);
  return dir;
}
