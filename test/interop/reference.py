"""
Reference side of the interop suite (test/interop/run.ts): transformers 5 itself builds tiny random models of every
family moe supports, saves them in both expert layouts, and loads what moe writes.

    python reference.py serve      JSON requests on stdin, one per line; one JSON answer per line on stdout

Requests:
  {"op": "build", "family": F, "out": DIR, "fused": bool, "seed": N}
      a tiny model with the family's features switched on, weights scaled so routing and logits are far from
      uniform, saved with save_original_format = not fused; a word-level tokenizer; returns the routing statistics
  {"op": "text", "out": FILE, "vocab": V, "lines": N, "seed": N}
      evaluation text for that tokenizer (words t0..t{V-1}, Zipf-like so some tokens dominate)
  {"op": "ppl", "model": DIR, "data": FILE, "seq_len": L}
      AutoModelForCausalLM.from_pretrained(DIR): loading info (missing / unexpected / mismatched keys), every
      warning transformers logged while loading, config counts, and the perplexity over moe's windows
      (runtime.md: lines tokenized one by one, concatenated, cut into windows of L; no BOS: L-1 scored per window)
"""
import io, json, logging, math, os, sys, warnings

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

torch.set_num_threads(max(1, int(os.environ.get('MOE_INTEROP_THREADS', '1'))))

H, HEADS, KV, HD, V, L = 32, 4, 2, 8, 96, 3
E, K = 8, 2


def family_config(family):
    """Tiny config of `family` with its special features on (shared experts, dense layers, windows, sinks, MLA,
    group routing, YaRN, qk-norm)."""
    base = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, num_key_value_heads=KV,
                head_dim=HD, max_position_embeddings=128, tie_word_embeddings=False, num_experts_per_tok=K,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)
    yarn = {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 32, 'beta_fast': 32.0, 'beta_slow': 1.0,
            'rope_theta': 10000.0}
    if family == 'mixtral':
        return dict(base, num_local_experts=E, intermediate_size=16, sliding_window=24, router_jitter_noise=0.0)
    if family == 'qwen2_moe':
        return dict(base, num_experts=E, moe_intermediate_size=16, intermediate_size=48, shared_expert_intermediate_size=24,
                    mlp_only_layers=[0], decoder_sparse_step=1, norm_topk_prob=False)
    if family == 'qwen3_moe':
        return dict(base, num_experts=E, moe_intermediate_size=16, intermediate_size=48, mlp_only_layers=[0], norm_topk_prob=True)
    if family == 'olmoe':
        return dict(base, num_experts=E, intermediate_size=16, clip_qkv=4.0, norm_topk_prob=False)
    if family in ('deepseek_v2', 'deepseek_v3'):
        c = dict(base, n_routed_experts=E, n_shared_experts=1, moe_intermediate_size=16, intermediate_size=48, first_k_dense_replace=1,
                 moe_layer_freq=1, n_group=2, topk_group=1, routed_scaling_factor=1.5, kv_lora_rank=16, q_lora_rank=24,
                 qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, head_dim=4, num_key_value_heads=HEADS,
                 rope_parameters=dict(yarn, mscale=1.0, mscale_all_dim=1.0))
        if family == 'deepseek_v2':
            c.update(topk_method='group_limited_greedy', q_lora_rank=None)
        else:
            c.update(norm_topk_prob=True)
        return c
    if family == 'granitemoe':
        return dict(base, num_local_experts=E, intermediate_size=16, embedding_multiplier=2.0, residual_multiplier=0.5,
                    attention_multiplier=0.2, logits_scaling=2.0)
    if family == 'gpt_oss':
        return dict(base, num_local_experts=E, intermediate_size=32, sliding_window=24,
                    layer_types=['sliding_attention', 'full_attention', 'sliding_attention'], rope_parameters=yarn)
    if family == 'phimoe':
        return dict(base, num_local_experts=E, intermediate_size=16, router_jitter_noise=0.01, input_jitter_noise=0.0, lm_head_bias=True,
                    sliding_window=None)
    if family == 'glm4_moe':
        return dict(base, n_routed_experts=E, n_shared_experts=1, moe_intermediate_size=16, intermediate_size=48, first_k_dense_replace=1,
                    n_group=2, topk_group=1, routed_scaling_factor=1.5, use_qk_norm=True, attention_bias=True, norm_topk_prob=True,
                    rope_parameters={'rope_type': 'default', 'rope_theta': 10000.0, 'partial_rotary_factor': 0.5})
    if family == 'minimax_m2':
        return dict(base, num_local_experts=E, intermediate_size=16, rotary_dim=4, use_qk_norm=True)
    if family == 'ernie4_5_moe':
        return dict(base, moe_num_experts=E, moe_k=K, moe_intermediate_size=16, intermediate_size=48, moe_num_shared_experts=1,
                    moe_layer_start_index=1, moe_layer_interval=1, use_bias=False)
    raise SystemExit(f'unknown family {family}')


def scale_weights(model, seed):
    """Weights far from an initializer's near-zero ones, so routing and logits are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if 'norm' in name and p.dim() == 1 and not name.endswith('bias'):
                p.copy_(1 + 0.2 * torch.randn(shape, generator=g))
            elif name.endswith('bias') or 'bias' in name.split('.')[-1] or p.dim() == 1:
                p.copy_(0.2 * torch.randn(shape, generator=g))
            elif 'embed' in name:
                p.copy_(torch.randn(shape, generator=g))
            else:
                fan_in = shape[-1] if p.dim() == 2 else (shape[-1] if 'down' in name or 'output_linear' in name else shape[-1])
                # fused experts are [E, out, in] (or [E, in, out] for gpt_oss): fan-in is the axis the input meets
                if p.dim() == 3 and model.config.model_type == 'gpt_oss':
                    fan_in = shape[1]
                std = 1.0 / math.sqrt(fan_in)
                is_router = any(t in name for t in ('.gate.weight', 'router', 'gate.wg')) and 'gate_proj' not in name and 'gate_up' not in name
                p.copy_((3.0 if is_router else 1.0) * std * torch.randn(shape, generator=g))


def word_tokenizer(out):
    vocab = {f't{i}': i for i in range(V)}
    tok = {'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': [], 'normalizer': None,
           'pre_tokenizer': {'type': 'WhitespaceSplit'}, 'post_processor': None, 'decoder': None,
           'model': {'type': 'WordLevel', 'vocab': vocab, 'unk_token': 't0'}}
    with open(os.path.join(out, 'tokenizer.json'), 'w') as f:
        json.dump(tok, f)
    with open(os.path.join(out, 'tokenizer_config.json'), 'w') as f:
        json.dump({'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': None, 'eos_token': None, 'unk_token': 't0'}, f)


def windows(data, seq_len):
    ids = []
    with open(data) as f:
        for line in f.read().split('\n'):
            line = line.rstrip('\r')
            if line.strip():
                ids += [int(w[1:]) for w in line.split()]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def routing_stats(model, x):
    """Per MoE layer: how often each expert is chosen (share of the layer's slots) and whether its choice varies."""
    chosen = []

    def hook(mod, args, kwargs):
        for a in list(args) + list(kwargs.values()):
            if torch.is_tensor(a) and a.dtype in (torch.int64, torch.int32) and a.dim() == 2:
                chosen.append(a.detach().clone())
                return
    hs = [m.register_forward_pre_hook(hook, with_kwargs=True) for n, m in model.named_modules() if type(m).__name__.endswith('Experts')]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    out = []
    for idx in chosen:
        counts = torch.bincount(idx.flatten(), minlength=E).float()
        share = (counts / counts.sum()).tolist()
        # an expert's choice "differs between tokens": picked for some tokens and not for others
        picked = torch.stack([(idx == e).any(-1) for e in range(E)])
        varies = sum(1 for e in range(E) if 0 < picked[e].sum() < picked.shape[1])
        out.append({'maxShare': max(share), 'varies': varies})
    return out


def build(req):
    family, out, fused, seed = req['family'], req['out'], req['fused'], req.get('seed', 1)
    torch.manual_seed(seed)
    cfg = transformers.CONFIG_MAPPING[family](**family_config(family))
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    if family in ('deepseek_v3', 'glm4_moe'):
        pass  # e_score_correction_bias is a buffer: set below
    scale_weights(model, seed)
    with torch.no_grad():
        for n, b in model.named_buffers():
            if n.endswith('e_score_correction_bias'):
                b.copy_(0.1 * torch.randn(b.shape, generator=torch.Generator().manual_seed(seed + 7)))
    model.eval()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, save_original_format=not fused)
    word_tokenizer(out)
    stats = routing_stats(model, windows(req['data'], req.get('seq_len', 64))) if req.get('data') else []
    return {'ok': True, 'stats': stats}


def text(req):
    g = torch.Generator().manual_seed(req.get('seed', 3))
    v = req.get('vocab', V)
    w = torch.tensor([1.0 / (i + 1) ** 0.8 for i in range(v)])
    lines = []
    for _ in range(req['lines']):
        ids = torch.multinomial(w, 16, replacement=True, generator=g)
        lines.append(' '.join(f't{i}' for i in ids.tolist()))
    with open(req['out'], 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return {'ok': True}


def ppl(req):
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    tlog = transformers.utils.logging.get_logger('transformers')
    tlog.addHandler(handler)
    transformers.utils.logging.set_verbosity_warning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            model, info = AutoModelForCausalLM.from_pretrained(req['model'], output_loading_info=True, dtype=torch.float32)
        except Exception as e:  # a refusal is an answer (the row says why), not a crash of the suite
            tlog.removeHandler(handler)
            return {'ok': False, 'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300]}', 'log': buf.getvalue()[-2000:]}
    tlog.removeHandler(handler)
    model.eval()
    x = windows(req['data'], req['seq_len'])
    nll, n = 0.0, 0
    with torch.no_grad():
        for row in x:
            logits = model(row[None]).logits[0].double()
            lp = torch.log_softmax(logits[:-1], -1)
            nll -= lp.gather(-1, row[1:, None]).sum().item()
            n += row.numel() - 1
    c = model.config
    counts = {k: getattr(c, k, None) for k in ('num_local_experts', 'num_experts', 'n_routed_experts', 'moe_num_experts', 'num_experts_per_tok', 'n_group', 'topk_group')}
    return {
        'ok': True,
        'ppl': math.exp(nll / n),
        'tokens': n,
        'missing': sorted(info.get('missing_keys', [])),
        'unexpected': sorted(info.get('unexpected_keys', [])),
        'mismatched': [str(m) for m in info.get('mismatched_keys', [])],
        'errors': [str(m) for m in info.get('error_msgs', [])],
        'warnings': [l for l in buf.getvalue().splitlines() if l.strip()] + [str(w.message)[:300] for w in caught],
        'counts': counts,
        'model_type': c.model_type,
    }


def config(req):
    """Whether transformers' AutoConfig accepts the checkpoint (a low-rank output must be refused)."""
    try:
        c = transformers.AutoConfig.from_pretrained(req['model'])
    except Exception as e:
        return {'ok': True, 'accepted': False, 'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'}
    return {'ok': True, 'accepted': True, 'model_type': c.model_type}


OPS = {'build': build, 'text': text, 'ppl': ppl, 'config': config}

if __name__ == '__main__':
    if sys.argv[1:] != ['serve']:
        raise SystemExit(__doc__)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            res = OPS[req['op']](req)
        except Exception as e:
            res = {'ok': False, 'error': f'{type(e).__name__}: {e}'[:2000]}
        sys.stdout.write(json.dumps(res) + '\n')
        sys.stdout.flush()
