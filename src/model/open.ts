/** Open a checkpoint directory as a model: its tensors (lazily) and its canonical view. */
import { checkModelTensors } from './validate.js';
import { Checkpoint } from '../io/checkpoint.js';
import type { ModelView } from './types.js';
import { buildView, checkTensorsPresent } from './view.js';

export interface Model {
  dir: string;
  ckpt: Checkpoint;
  view: ModelView;
}

export async function openModel(dir: string): Promise<Model> {
  const ckpt = await Checkpoint.open(dir);
  try {
    const view = buildView(ckpt);
    checkTensorsPresent(ckpt, view);
    // dtypes and shapes of what every command uses, before any work (exit 3)
    checkModelTensors(ckpt, view);
    // and every tensor read for compute is checked for NaN/Inf as it is decoded
    ckpt.finiteOnly = true;
    return { dir, ckpt, view };
  } catch (e) {
    await ckpt.close();
    throw e;
  }
}
