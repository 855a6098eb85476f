# configs as transformers 5 saves them, for the config round-trip test (one per family, features on)
import json, sys, os, transformers
out = sys.argv[1]  # writes OUT/<family>/config.json; the test copies them to test/fixtures/transformers5-configs/<family>.json
fams = {
 'mixtral': dict(router_jitter_noise=0.0, sliding_window=64),
 'qwen2_moe': dict(shared_expert_intermediate_size=24, mlp_only_layers=[0]),
 'qwen3_moe': dict(),
 'olmoe': dict(clip_qkv=8.0),
 'deepseek_v2': dict(n_group=2, topk_group=1, topk_method='group_limited_greedy', q_lora_rank=None),
 'deepseek_v3': dict(n_group=2, topk_group=1, rope_parameters={'rope_type':'yarn','factor':4.0,'original_max_position_embeddings':64,'beta_fast':32.0,'beta_slow':1.0,'mscale':1.0,'mscale_all_dim':1.0,'rope_theta':10000.0}),
 'granitemoe': dict(),
 'gpt_oss': dict(),
 'phimoe': dict(),
 'glm4_moe': dict(n_group=2, topk_group=1, use_qk_norm=True),
 'minimax_m2': dict(),
 'ernie4_5_moe': dict(),
}
for f, kw in fams.items():
    c = transformers.CONFIG_MAPPING[f](**kw)
    d = os.path.join(out, f); os.makedirs(d, exist_ok=True)
    c.save_pretrained(d)
