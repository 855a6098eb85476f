/**
 * A tiny DeepSeek-V3 checkpoint with one multi-token-prediction layer in the DeepSeek/GLM convention: the
 * generator's 3-layer model re-declared as 2 decoder layers (num_hidden_layers 2, num_nextn_predict_layers 1), its
 * last (MoE) layer becoming the MTP layer with eh_proj [H, 2H], enorm, hnorm and shared_head.norm added.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fromF32 } from '../../src/io/dtype.js';
import { openModel } from '../../src/model/open.js';
import { rewriteCheckpoint } from '../../src/model/rewrite.js';
import { seededRandom } from '../../kernels/random.js';
import { makeTinyCheckpoint } from './families.js';

export async function makeTinyMtpCheckpoint(dir: string, opts: { experts?: number; config?: Record<string, unknown> } = {}): Promise<void> {
  const base = `${dir}.base`;
  // num_key_value_heads = heads, as DeepSeek-V3 ships it (transformers' MLA repeats k by heads / num_key_value_heads)
  await makeTinyCheckpoint('deepseek_v3', base, { experts: opts.experts ?? 8, layers: 3, config: { bos_token_id: 0, num_key_value_heads: 4, ...opts.config } });
  const m = await openModel(base);
  const H = m.view.dims.hidden;
  const rand = seededRandom(7);
  const tensor = (name: string, shape: number[], values: () => number) => ({
    layer: 2,
    tensor: {
      spec: { name, dtype: 'F32' as const, shape },
      produce: async () => fromF32(Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, values), 'F32'),
    },
  });
  const p = 'model.layers.2.';
  const norm = () => 1 + 0.2 * (rand() - 0.5);
  await rewriteCheckpoint(
    m,
    {
      added: [
        tensor(`${p}enorm.weight`, [H], norm),
        tensor(`${p}hnorm.weight`, [H], norm),
        tensor(`${p}eh_proj.weight`, [H, 2 * H], () => (rand() - 0.5) * (2 / Math.sqrt(2 * H))),
        tensor(`${p}shared_head.norm.weight`, [H], norm),
      ],
    },
    dir,
  );
  await m.ckpt.close();
  await rm(base, { recursive: true, force: true });
  const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
  await writeFile(join(dir, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 2, num_nextn_predict_layers: 1 }, null, 2));
}
