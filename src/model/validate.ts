/**
 * Dtype and shape checks of the tensors every command uses, when the model is opened (before any work): an integer
 * tensor where float weights belong (an I16 norm, a U8 embedding) or an embedding, lm_head or norm of the wrong
 * shape would otherwise be read as numbers and give garbage, with exit 0. Exit 3, naming the tensor.
 *
 * Linear weights are not checked here: their storage legitimately varies (FP8 with block scales, MXFP4 blocks,
 * GPTQ's packed I32), and their loaders check each format's shapes when they read them.
 */
import { fail } from '../errors.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { isFloatDtype } from '../io/dtype.js';
import type { ModelView, NormRef } from './types.js';

function shown(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

function checkFloat(ckpt: Checkpoint, name: string, role: string): void {
  const dtype = ckpt.dtype(name);
  if (!isFloatDtype(dtype)) fail('InvalidShape', `${ckpt.dir}: ${role} '${name}' is ${dtype}; a float dtype (F32, F16, BF16, ...) is expected`);
}

function checkShape(ckpt: Checkpoint, name: string, role: string, expected: readonly number[], why: string): void {
  const shape = ckpt.shape(name);
  if (shape.length !== expected.length || shape.some((d, i) => d !== expected[i])) {
    fail('InvalidShape', `${ckpt.dir}: ${role} '${name}' has shape ${shown(shape)}; ${shown(expected)} is expected (${why})`);
  }
}

function checkNorm(ckpt: Checkpoint, norm: NormRef, role: string, hidden: number): void {
  for (const [name, what] of [
    [norm.weight, `${role} weight`],
    [norm.bias, `${role} bias`],
  ] as const) {
    if (!name || !ckpt.has(name)) continue;
    checkFloat(ckpt, name, what);
    checkShape(ckpt, name, what, [hidden], 'hidden_size');
  }
}

/** Check embeddings, lm_head, every norm and every router against the config's dimensions. */
export function checkModelTensors(ckpt: Checkpoint, view: ModelView): void {
  const { hidden, vocab } = view.dims;
  if (ckpt.has(view.embed)) {
    checkFloat(ckpt, view.embed, 'embedding');
    checkShape(ckpt, view.embed, 'embedding', [vocab, hidden], 'vocab_size x hidden_size');
  }
  if (view.lmHead && ckpt.has(view.lmHead)) {
    checkFloat(ckpt, view.lmHead, 'lm_head');
    checkShape(ckpt, view.lmHead, 'lm_head', [vocab, hidden], 'vocab_size x hidden_size');
  }
  checkNorm(ckpt, view.finalNorm, 'final norm', hidden);
  for (const layer of view.layers) {
    checkNorm(ckpt, layer.inputNorm, `layer ${layer.index} input norm`, hidden);
    checkNorm(ckpt, layer.postAttnNorm, `layer ${layer.index} post-attention norm`, hidden);
    if (layer.block.kind === 'moe') {
      const r = layer.block.router;
      for (const [name, what] of [
        [r.weight, 'router weight'],
        [r.bias, 'router bias'],
        [r.correctionBias, 'router correction bias'],
      ] as const) {
        if (name && ckpt.has(name)) checkFloat(ckpt, name, `layer ${layer.index} ${what}`);
      }
    }
  }
}
