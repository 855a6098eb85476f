"""Dequantize every quantized tensor of a GGUF with gguf-py (gguf.quants.dequantize) and compare it bit for bit
with the float32 tensor '<name>.moe_deq' our decoder wrote beside it. Prints one line per tensor and a closing
'N passed, N failed' line; exits non-zero on any mismatch."""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

r = GGUFReader(sys.argv[1])
by_name = {t.name: t for t in r.tensors}
passed = failed = 0
for t in r.tensors:
    if t.name.endswith('.moe_deq'):
        continue
    ref = by_name.get(t.name + '.moe_deq')
    if ref is None:
        continue
    theirs = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    ours = np.asarray(ref.data, dtype=np.float32).reshape(-1)
    same = theirs.shape == ours.shape and np.array_equal(theirs.view(np.uint32), ours.view(np.uint32))
    if same:
        passed += 1
    else:
        failed += 1
        bad = np.nonzero(theirs.view(np.uint32) != ours.view(np.uint32))[0] if theirs.shape == ours.shape else []
        print(f'MISMATCH {t.name} ({t.tensor_type.name}): {len(bad)} values differ, first at {bad[:5]}: gguf-py {theirs[bad[:5]]} ours {ours[bad[:5]]}')
    print(f'{t.name} {t.tensor_type.name} {list(t.shape)}: {"bit-identical" if same else "DIFFERENT"}')
print(f'{passed} passed, {failed} failed')
sys.exit(1 if failed or not passed else 0)
