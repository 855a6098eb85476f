import { z } from 'zod';
import { assembleShards } from '../../model/shard.js';
import { command } from '../../pipeline/descriptor.js';
import { common, field } from '../../pipeline/fields.js';
import { prepare } from '../../pipeline/validate.js';

const ASSEMBLE_OPTIONS = z.object({
  out: field(z.string().min(1), { help: 'output checkpoint directory', arg: 'dir', recipe: false }),
  force: common.force(),
});

export const ASSEMBLE_COMMAND = command({
  name: 'assemble',
  summary: 'join the outputs of a layer-parallel run (--shard i/n jobs) into one checkpoint',
  args: [{ name: 'parts', help: 'the shard output directories, in any order', variadic: true }],
  options: ASSEMBLE_OPTIONS,
  examples: [
    'moe calibrate --model M --data calib.txt --out stats            # or --shard i/n per job, then --merge',
    'moe prune --model M --stats stats --keep 6 --out part-$I --shard $I/4   # job I = 0..3 of a CI matrix',
    'moe assemble part-0 part-1 part-2 part-3 --out M-pruned',
  ],
  async run(raw, { args, progress }) {
    // assembleShards checks the target itself (and that no part is inside it)
    const o = await prepare({ options: ASSEMBLE_OPTIONS }, raw, { output: false });
    const ph = progress?.phase(`assembling ${args.length} shards into ${o.out}`);
    const r = await assembleShards(args, o.out, { force: o.force, onProgress: (d, t) => ph?.tick(d, t, 'tensors') });
    ph?.succeed(`assembled ${r.tensors} tensors (${(r.bytes / 2 ** 20).toFixed(2)} MiB) from ${r.parts} shards into ${o.out}`);
    return r;
  },
});
