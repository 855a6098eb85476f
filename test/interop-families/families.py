"""
transformers 5.18 side of the new-family conformance (run.ts, `npm run test:families-py`).

  families.py make FAMILY DIR     build a tiny FAMILY checkpoint with transformers itself (random weights, scaled so
                                  the logits are far from uniform; random norm weights and correction biases) and
                                  save_pretrained it to DIR (per expert; FAMILY@fused: in transformers 5's fused layout)
  families.py ppl SPEC.json       for each {"dir", "windows"}: load DIR with AutoModelForCausalLM (float32, eager),
                                  refuse missing weights, and print the perplexity of the windows (every position
                                  but the first predicts the next token)
"""
import json
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    MODEL_FOR_PRETRAINING_MAPPING_NAMES,
)

TINY = {
    "glm4_moe_lite": dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, routed_scaling_factor=1.8,
        kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=16, n_group=2, topk_group=1,
        num_experts_per_tok=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1,
    ),
    # DeepSeek-V3 MoE (sigmoid group routing, shared expert, first_k_dense_replace) under Qwen3 attention (per-head
    # q/k norm, GQA, half RoPE); norm_topk_prob set as dots.llm1 ships it (the class default is False)
    "dots1": dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, n_shared_experts=1, n_routed_experts=8, routed_scaling_factor=2.5,
        n_group=2, topk_group=1, num_experts_per_tok=2, first_k_dense_replace=1, norm_topk_prob=True,
        max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1,
    ),
    # Mistral-Small-4's shape: DeepSeek-V3 MLA with q-LoRA and YaRN (mscale^2 in the softmax scale), softmax routing
    # with top-2-sum groups, and the Llama-4 query scaling; original_max_position_embeddings 16 so the 64-token
    # windows cross three of its steps
    "mistral4": dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, routed_scaling_factor=1.5,
        kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=16, n_group=2, topk_group=1,
        num_experts_per_tok=2, first_k_dense_replace=1, norm_topk_prob=True, max_position_embeddings=64,
        rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1,
            "max_position_embeddings": 64,
        },
        rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1, pad_token_id=0,
    ),
    # DeepSeek-V3.2: glm4_moe_lite's MLA and routing plus the DSA indexer; index_topk 64 covers the 64-token windows, so
    # the indexer keeps every causal key and the attention is exactly dense (longer windows are refused)
    "deepseek_v32": dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, routed_scaling_factor=2.5,
        kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=16, n_group=2, topk_group=1,
        num_experts_per_tok=2, first_k_dense_replace=1, index_topk=64, index_head_dim=16, index_n_heads=2,
        max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1,
    ),
    # GLM-5: deepseek_v32's MLA, routing and indexer, the indexer only on "full" layers (layer 1 reuses layer 0's
    # top-k and stores none); index_topk 64 covers the windows, so attention is exactly dense
    "glm_moe_dsa": dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, routed_scaling_factor=2.5,
        kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=16, n_group=2, topk_group=1,
        num_experts_per_tok=2, first_k_dense_replace=1, index_topk=64, index_head_dim=16, index_n_heads=2,
        indexer_types=["full", "shared", "full"], max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=0,
        eos_token_id=1,
    ),
    # Hunyuan-A13B's shape: every layer MoE, a shared MLP at intermediate_size, q/k norm after RoPE, and the
    # DynamicNTKAlpha RoPE base (rope_type dynamic with alpha)
    "hunyuan_v1_moe": dict(
        vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=8, moe_topk=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 1.0, "alpha": 1000.0},
        bos_token_id=0, eos_token_id=1, pad_token_id=0,
    ),
    # Qwen3-Next's shape: Gated DeltaNet linear attention (grouped in_proj_qkvz / in_proj_ba, conv kernel 4, two value
    # heads per key head) in layers 0 and 2, gated full attention with partial RoPE (0.25) in 1 and 3, zero-centred
    # norms; MoE with a sigmoid-gated shared expert except the dense layer 1 (mlp_only_layers)
    "qwen3_next": dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=8, linear_conv_kernel_dim=4,
        full_attention_interval=2, num_experts=8, num_experts_per_tok=2, mlp_only_layers=[1], norm_topk_prob=True,
        max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1,
    ),
    # Qwen3.5-MoE's language model as its text-only class saves it: Gated DeltaNet with separate in_proj_qkv / z / b /
    # a, every layer MoE with a shared expert, top-k always renormalized; multimodal RoPE reduces to plain partial RoPE
    # on text (the three position ids are equal)
    "qwen3_5_moe_text": dict(
        vocab_size=128, hidden_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=8, linear_conv_kernel_dim=4,
        full_attention_interval=2, num_experts=8, num_experts_per_tok=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1,
    ),
    # Llama 4 text: fused in-major experts with the router's sigmoid weight on the expert input, a shared expert, MoE
    # on every second layer (dense layers at intermediate_size_mlp), NoPE on layer 3 with temperature tuning
    # (floor_scale 8: the scale changes every 8 positions of the 64-token windows), chunked attention (16) with the
    # L2 q/k norm on the RoPE layers, llama3 RoPE scaling
    "llama4_text": dict(
        vocab_size=128, hidden_size=64, intermediate_size=32, intermediate_size_mlp=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=8, num_experts_per_tok=2,
        interleave_moe_layer_step=2, no_rope_layer_interval=4, attention_chunk_size=16, use_qk_norm=True,
        attn_temperature_tuning=True, floor_scale=8, attn_scale=0.1, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
        },
        bos_token_id=0, eos_token_id=1, pad_token_id=0,
    ),
}

# multimodal containers (moe edits the language model inside, src/model/containers.json): the text family's tiny
# config under text_config, and a small vision tower
CONTAINERS = {
    "llama4": dict(
        text="llama4_text",
        vision_config=dict(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14,
            vision_output_dim=32, projector_input_dim=32, projector_output_dim=64, pixel_shuffle_ratio=0.5,
        ),
    ),
    # Qwen3.5-MoE as shipped: Qwen3_5MoeForConditionalGeneration around qwen3_5_moe_text, a one-block vision tower
    "qwen3_5_moe": dict(
        text="qwen3_5_moe_text",
        vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
        ),
    ),
}


def lm_class(model_type):
    """AutoModelForCausalLM, or the family's own causal-LM class where transformers 5.18 leaves it out of that
    mapping (mistral4 is listed under pretraining and image-text-to-text only); a container's own class"""
    if model_type in CONTAINERS:
        return getattr(transformers, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type])
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    return getattr(transformers, MODEL_FOR_PRETRAINING_MAPPING_NAMES[model_type])


def make(family, out):
    # FAMILY@fused: saved in transformers 5's fused expert layout (gate_up_proj [E, 2I, H], down_proj [E, H, I])
    family, _, layout = family.partition("@")
    torch.manual_seed(0)
    if family in CONTAINERS:
        c = CONTAINERS[family]
        cfg = AutoConfig.for_model(family, text_config=TINY[c["text"]], vision_config=c["vision_config"])
        cfg.text_config.initializer_range = 0.15
    else:
        cfg = AutoConfig.for_model(family, **TINY[family])
    cfg.initializer_range = 0.15
    cls = lm_class(family)
    model = cls.from_config(cfg, dtype=torch.float32) if cls is AutoModelForCausalLM else cls._from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.3 * (torch.rand_like(p) - 0.5))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    model.save_pretrained(out, save_original_format=layout != "fused")


def ppl(spec):
    out = {}
    for item in spec:
        model_type = json.load(open(f"{item['dir']}/config.json"))["model_type"]
        model, info = lm_class(model_type).from_pretrained(
            item["dir"], dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        )
        if info["missing_keys"]:
            raise SystemExit(f"{item['dir']}: missing weights {sorted(info['missing_keys'])[:5]}")
        model.eval()
        ids = torch.tensor(item["windows"], dtype=torch.long)
        with torch.no_grad():
            logits = model(input_ids=ids).logits.double()
        lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])
        out[item["dir"]] = {"ppl": float(torch.exp(-lp.mean())), "unexpected": sorted(info["unexpected_keys"])[:5]}
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        ppl(json.load(open(sys.argv[2])))
