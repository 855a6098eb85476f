/**
 * `moe dequantize`: a GPTQ checkpoint back to a dense BF16/F16 checkpoint of the same family, for tools that
 * cannot read GPTQ. Every `<module>.qweight/qzeros/scales/g_idx` quadruple becomes `<module>.weight`; all other
 * tensors are copied byte for byte; quantization_config is removed.
 */
import { fail } from '../errors.js';
import { fromF32 } from '../io/dtype.js';
import { openModel } from '../model/open.js';
import { rewriteCheckpoint, type TensorFate } from '../model/rewrite.js';
import { dequantize as dequantizeLinear } from '../../kernels/quant/rtn.js';
import { GPTQ_SUFFIXES, readGptq, registerGptqFormat } from './format.js';
import type { Progress } from '../cli/progress.js';

export interface DequantizeRequest {
  model: string;
  out?: string;
  dtype?: 'BF16' | 'F16';
  force?: boolean;
  dryRun?: boolean;
  progress?: Progress;
}

export interface DequantizeReport {
  tool: 'moe dequantize';
  model: string;
  out?: string;
  dtype: 'BF16' | 'F16';
  modules: number;
  beforeBytes: number;
  afterBytes: number;
  dryRun: boolean;
}

export async function dequantizeCheckpoint(req: DequantizeRequest): Promise<DequantizeReport> {
  if (!req.dryRun && !req.out) fail('Usage', 'give --out DIR (or --dry-run)');
  registerGptqFormat();
  const model = await openModel(req.model);
  try {
    const { ckpt } = model;
    const dtype = req.dtype ?? (ckpt.config['torch_dtype'] === 'float16' ? 'F16' : 'BF16');
    const modules = ckpt.tensorNames.filter((n) => n.endsWith('.qweight')).map((n) => n.slice(0, -'.qweight'.length));
    if (modules.length === 0) fail('InvalidData', `${req.model} has no GPTQ tensors (*.qweight): nothing to dequantize`);
    const fates = new Map<string, TensorFate>();
    for (const m of modules) {
      for (const s of GPTQ_SUFFIXES) if (!ckpt.has(`${m}.${s}`)) fail('InvalidData', `${req.model}: GPTQ module '${m}' has no ${s}`);
      const out = ckpt.shape(`${m}.qweight`)[1]!;
      const inF = ckpt.shape(`${m}.g_idx`)[0]!;
      fates.set(`${m}.qweight`, {
        kind: 'replace',
        tensors: [
          {
            spec: { name: `${m}.weight`, dtype, shape: [out, inF] },
            produce: async () => fromF32(dequantizeLinear(await readGptq(ckpt, m, out, inF)), dtype),
          },
        ],
      });
      for (const s of ['qzeros', 'scales', 'g_idx']) fates.set(`${m}.${s}`, { kind: 'drop' });
    }
    const ph = req.dryRun ? undefined : req.progress?.phase(`writing ${req.out}`);
    const res = await rewriteCheckpoint(model, { fates, config: { quantization_config: null } }, req.out ?? '(dry run)', {
      dryRun: !!req.dryRun,
      force: !!req.force,
      onProgress: (d, t) => ph?.tick(d, t, 'tensors'),
    });
    ph?.succeed(`wrote ${req.out}`);
    const beforeBytes = ckpt.tensorNames.reduce((a, n) => {
      const i = ckpt.info(n);
      return a + (i.end - i.begin);
    }, 0);
    return {
      tool: 'moe dequantize',
      model: req.model,
      ...(req.out ? { out: req.out } : {}),
      dtype,
      modules: modules.length,
      beforeBytes,
      afterBytes: res.totalBytes,
      dryRun: !!req.dryRun,
    };
  } finally {
    await model.ckpt.close();
  }
}
