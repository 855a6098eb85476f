"""
Reference for moe's `mtp.*` MTP convention (qwen3_next; run by run.ts, `npm run test:families-py`). transformers 5.18
has no MTP module for Qwen3-Next (its classes ignore `mtp.*` on load), so the block is run here as vLLM's
qwen3_next_mtp.py defines it, out of transformers' own Qwen3Next modules:

  x = mtp.fc([pre_fc_norm_embedding(embed(token t+1)); pre_fc_norm_hidden(h_t)]);  mtp.layers.0 (a full-attention
  Qwen3NextDecoderLayer with the MoE block) on x, causal, positions 0..S-2

with h the main model's last hidden state before the final norm (the state moe feeds an MTP layer in both
conventions).

  mtp_qwen_check.py add DIR           add a random MTP block (per-expert names) to the tiny checkpoint in DIR and set
                                      mtp_num_hidden_layers 1
  mtp_qwen_check.py counts SPEC.json  for each {"dir", "windows"}: per MoE layer (the MTP layer as L), how many routed
                                      slots each expert gets (the `frequency` score moe prune reports), and the MTP
                                      router's shape. Prints one JSON object.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextDecoderLayer, Qwen3NextRMSNorm


def mtp_layer_index(c):
    """a full-attention MoE layer index, so Qwen3NextDecoderLayer builds the MTP layer's kind of layer"""
    return next(i for i, t in enumerate(c.layer_types) if t == "full_attention" and i not in c.mlp_only_layers)


def add(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    c = model.config
    torch.manual_seed(1)
    layer = Qwen3NextDecoderLayer(c, mtp_layer_index(c))
    H = c.hidden_size
    I = c.moe_intermediate_size
    out = {}
    with torch.no_grad():
        for n, p in layer.named_parameters():
            p.copy_(0.3 * (torch.rand_like(p) - 0.5) if "norm" in n else 0.15 * torch.randn_like(p))
        for n, t in layer.state_dict().items():
            if n == "mlp.experts.gate_up_proj":
                for e in range(t.shape[0]):
                    out[f"mtp.layers.0.mlp.experts.{e}.gate_proj.weight"] = t[e, :I].clone()
                    out[f"mtp.layers.0.mlp.experts.{e}.up_proj.weight"] = t[e, I:].clone()
            elif n == "mlp.experts.down_proj":
                for e in range(t.shape[0]):
                    out[f"mtp.layers.0.mlp.experts.{e}.down_proj.weight"] = t[e].clone()
            else:
                out[f"mtp.layers.0.{n}"] = t.clone()
        out["mtp.fc.weight"] = torch.randn(H, 2 * H) * (1 / (2 * H) ** 0.5)
        for n in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
            out[f"mtp.{n}.weight"] = 0.3 * (torch.rand(H) - 0.5)
    tensors = load_file(f"{path}/model.safetensors")
    tensors.update(out)
    save_file(tensors, f"{path}/model.safetensors", metadata={"format": "pt"})
    cfg = json.load(open(f"{path}/config.json"))
    cfg["mtp_num_hidden_layers"] = 1
    json.dump(cfg, open(f"{path}/config.json", "w"), indent=2)


def counts(path, windows):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
    model.eval()
    c = model.config
    L = c.num_hidden_layers
    E = c.num_experts
    st = load_file(f"{path}/model.safetensors")
    layer = Qwen3NextDecoderLayer(c, mtp_layer_index(c))
    sd = {n[len("mtp.layers.0."):]: t for n, t in st.items() if n.startswith("mtp.layers.0.") and ".mlp.experts." not in n}
    experts = range(E)
    sd["mlp.experts.gate_up_proj"] = torch.stack(
        [torch.cat([st[f"mtp.layers.0.mlp.experts.{e}.gate_proj.weight"], st[f"mtp.layers.0.mlp.experts.{e}.up_proj.weight"]]) for e in experts]
    )
    sd["mlp.experts.down_proj"] = torch.stack([st[f"mtp.layers.0.mlp.experts.{e}.down_proj.weight"] for e in experts])
    layer.load_state_dict(sd, strict=True)
    layer.eval()
    norms = {}
    for n in ("pre_fc_norm_embedding", "pre_fc_norm_hidden"):
        norms[n] = Qwen3NextRMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        norms[n].weight.data.copy_(st[f"mtp.{n}.weight"])
    fc = st["mtp.fc.weight"]
    result = {}

    def hook(name):
        def f(_m, _inp, out):
            cnt = result.setdefault(name, [0] * E)
            for e in out[2].reshape(-1).tolist():
                cnt[e] += 1

        return f

    for i, dl in enumerate(model.model.layers):
        if hasattr(dl.mlp, "gate"):
            dl.mlp.gate.register_forward_hook(hook(str(i)))
    layer.mlp.gate.register_forward_hook(hook(str(L)))
    pre_norm = {}
    model.model.norm.register_forward_hook(lambda _m, inp, _o: pre_norm.__setitem__("h", inp[0]))
    ids = torch.tensor(windows, dtype=torch.long)
    B, S = ids.shape
    with torch.no_grad():
        model(input_ids=ids)
        h = pre_norm["h"][:, :-1]
        e = model.model.embed_tokens(ids[:, 1:])
        x = torch.cat([norms["pre_fc_norm_embedding"](e), norms["pre_fc_norm_hidden"](h)], dim=-1) @ fc.T
        pos = torch.arange(S - 1).unsqueeze(0).expand(B, -1)
        cos_sin = model.model.rotary_emb(x, pos)
        mask = torch.full((S - 1, S - 1), float("-inf")).triu(1)[None, None].expand(B, 1, -1, -1)
        layer(x, position_embeddings=cos_sin, attention_mask=mask, position_ids=pos)
    return {"counts": result, "mtp_router_rows": list(st["mtp.layers.0.mlp.gate.weight"].shape)}


if __name__ == "__main__":
    if sys.argv[1] == "add":
        add(sys.argv[2])
    else:
        print(json.dumps({item["dir"]: counts(item["dir"], item["windows"]) for item in json.load(open(sys.argv[2]))}))
