"""
transformers 5.18 reference for moe's MTP handling (run by run.ts, `npm run test:families-py`).

For each checkpoint given: load it with DeepseekV3ForCausalLM and its MTP layer with MtpModel.from_pretrained
(modeling_layers.py; it raises when an MTP weight is missing), run the windows through the main model and the MTP
layer, and count per MoE layer how many routed slots each expert gets (the `frequency` score moe prune reports),
hooking the routers (DeepseekV3TopkRouter returns the top-k indices). The MTP layer is fed as transformers does:
input_ids shifted by one (token t+1), positions 1..S-1, and the main model's last hidden state before the final
norm at positions 0..S-2. Prints one JSON object.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_layers import MtpModel


def run(path, windows):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    L = model.config.num_hidden_layers
    # DeepSeek-V3's pattern names its layer 61; a tiny model's MTP layer is layer L
    model._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{L}\..*"]
    mtp = MtpModel.from_pretrained(model)
    mtp.eval()
    E = model.config.n_routed_experts
    counts = {}

    def hook(name):
        def f(_m, _inp, out):
            idx = out[2].reshape(-1)
            c = counts.setdefault(name, [0] * E)
            for e in idx.tolist():
                c[e] += 1

        return f

    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.register_forward_hook(hook(str(i)))
    for k, layer in enumerate(mtp.layers):
        layer.mtp_block.mlp.gate.register_forward_hook(hook(str(L + k)))
    pre_norm = {}
    model.model.norm.register_forward_hook(lambda _m, inp, _o: pre_norm.__setitem__("h", inp[0]))
    ids = torch.tensor(windows, dtype=torch.long)
    S = ids.shape[1]
    with torch.no_grad():
        model(input_ids=ids)
        h = pre_norm["h"]
        pos = torch.arange(1, S).unsqueeze(0).expand(ids.shape[0], -1)
        mtp(input_ids=ids[:, 1:], last_hidden_states=h[:, :-1], attention_mask=None, position_ids=pos, mtp_cache=None)
    return {
        "counts": counts,
        "mtp_layers": len(mtp.layers),
        "mtp_router_rows": [list(l.mtp_block.mlp.gate.weight.shape) for l in mtp.layers],
        "mtp_correction_bias": [l.mtp_block.mlp.gate.e_score_correction_bias.tolist() for l in mtp.layers],
    }


if __name__ == "__main__":
    spec = json.load(open(sys.argv[1]))
    print(json.dumps({p: run(p, spec["windows"]) for p in spec["models"]}))
