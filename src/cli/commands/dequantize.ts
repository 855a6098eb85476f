import { z } from 'zod';
import { command } from '../../pipeline/descriptor.js';
import { common, field } from '../../pipeline/fields.js';
import { prepare } from '../../pipeline/validate.js';

const DEQUANTIZE_OPTIONS = z.object({
  model: common.model('GPTQ or compressed-tensors checkpoint directory'),
  out: common.out(),
  dtype: field(z.enum(['bf16', 'f16', 'f32']).optional(), {
    help: 'output dtype of the dequantized weights (f32: the exact dequantized values)',
    arg: 't',
    defaultText: "the input's torch_dtype",
  }),
  dryRun: common.dryRun('print what would be written'),
  force: common.force(),
});

const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;

export const DEQUANTIZE_COMMAND = command({
  name: 'dequantize',
  summary: 'write a dense BF16/F16/F32 checkpoint of the same family from a GPTQ or compressed-tensors checkpoint, for tools that cannot read them',
  options: DEQUANTIZE_OPTIONS,
  examples: ['moe dequantize --model ./mixtral-2.5bit --out ./mixtral-2.5bit-bf16'],
  async run(raw, { progress }) {
    const o = await prepare({ options: DEQUANTIZE_OPTIONS }, raw);
    const { dequantizeCheckpoint } = await import('../../quantize/dequantize.js');
    return dequantizeCheckpoint({
      model: o.model,
      ...(o.out !== undefined ? { out: o.out } : {}),
      force: o.force,
      dryRun: o.dryRun,
      ...(progress ? { progress } : {}),
      ...(o.dtype ? { dtype: o.dtype === 'f16' ? 'F16' : o.dtype === 'f32' ? 'F32' : 'BF16' } : {}),
    });
  },
  print: (r, o) =>
    !o.quiet || o.dryRun
      ? `${r.dryRun ? 'plan' : 'dequantized'}: ${r.modules} quantized modules -> ${r.dtype}; ${mib(r.beforeBytes)} -> ${mib(r.afterBytes)}`
      : undefined,
});
