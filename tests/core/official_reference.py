"""A tiny official-layout HY-WU generator folder, and a literal re-derivation of the release's forward.

Written from reading the public release (Tencent-Hunyuan/HY-WU, wu/model.py, wu/generator.py,
wu/tokenizer.py), in a deliberately different, loop-based style (float64, complex-number RoPE,
explicit softmax), so that it checks hywu_core's NNT / layout / loader instead of repeating them.
"""
import json
import math

import torch
from safetensors.torch import save_file

TINY_CONFIG = {
    "model_type": "parameter_generator",
    "token_dim": 8, "rank": 4, "alpha": 8, "input_dim": 12, "dim_accumulation": 2, "d_model": 32,
    "head_dim": 8, "num_base_model_layers": 3, "output_dim": 8, "num_pg_layers": 2,
    "prefix": "model.layers.",
    "pg_mapping": {
        "self_attn.qkv_proj": {"lora_A_dim": 16, "lora_B_dim": 24},
        "self_attn.o_proj": {"lora_A_dim": 10, "lora_B_dim": 16},
        "mlp.experts": {"type": "grouped", "num_experts": 2,
                        "sub_weights": {"w1": {"lora_A_dim": 16, "lora_B_dim": 12},
                                        "w3": {"lora_A_dim": 12, "lora_B_dim": 6}}},
    },
}


def lora_shapes(config):
    """[(module, lora_A shape, lora_B shape)] in pg_mapping order, grouped experts expanded."""
    r, out = config["rank"], []
    for name, dims in config["pg_mapping"].items():
        if dims.get("type") == "grouped":
            for sub, sd in dims["sub_weights"].items():
                e = dims["num_experts"]
                out.append((f"{name}.{sub}", (e, r, sd["lora_A_dim"]), (e, sd["lora_B_dim"], r)))
        else:
            out.append((name, (r, dims["lora_A_dim"]), (dims["lora_B_dim"], r)))
    return out


def token_counts(config):
    area = config["rank"] * config["token_dim"]
    shapes = lora_shapes(config)
    n_a = sum(math.ceil(math.prod(a) / area) for _, a, _ in shapes)
    n_b = sum(math.ceil(math.prod(b) / area) for _, _, b in shapes)
    return n_a, n_b


def official_weights(config, seed=0):
    """Random weights under the release's state-dict names and shapes."""
    g = torch.Generator().manual_seed(seed)
    d, a, l = config["d_model"], config["dim_accumulation"], config["num_base_model_layers"]
    s = sum(token_counts(config))
    shapes = {
        "hidden_in.weight": (d, config["input_dim"]), "hidden_in.bias": (d,),
        "model.norm_input.weight": (d,), "model.norm_tokens.weight": (d,), "model.norm_final.weight": (d,),
        "model.hw_pos.weight": (s * config["rank"], d // a), "model.layer_pos.weight": (l, d // a),
        "model.proj_out_A.weight": (config["output_dim"], d // a), "model.proj_out_A.bias": (config["output_dim"],),
        "model.proj_out_B.weight": (config["output_dim"], d // a), "model.proj_out_B.bias": (config["output_dim"],),
    }
    for i in range(config["num_pg_layers"]):
        p = f"model.blocks.{i}."
        for attn in ("self_attn_n", "self_attn_hw", "self_attn_cross"):
            for w in ("W_q", "W_k", "W_v", "W_o"):
                shapes[f"{p}{attn}.{w}.weight"], shapes[f"{p}{attn}.{w}.bias"] = (d, d), (d,)
        for n in ("norm1", "norm2", "norm3", "norm4"):
            shapes[f"{p}{n}.weight"] = (d,)
        shapes[f"{p}feed_forward.fc1.weight"], shapes[f"{p}feed_forward.fc1.bias"] = (4 * d, d), (4 * d,)
        shapes[f"{p}feed_forward.fc2.weight"], shapes[f"{p}feed_forward.fc2.bias"] = (d, 4 * d), (d,)
    weights = {}
    for name, shape in shapes.items():
        if "norm" in name:
            weights[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            weights[name] = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
    return weights


def write_official_folder(folder, config=TINY_CONFIG, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    weights = official_weights(config, seed)
    save_file(weights, str(folder / "model.safetensors"))
    return weights


def rotate(x, positions, axis_dims, theta=10000.0):
    """RoPE on neighbour pairs as complex multiplication; positions: list of per-axis index tuples."""
    freqs = torch.cat([theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim) for dim in axis_dims])
    axis_of_pair = torch.cat([torch.full((dim // 2,), i) for i, dim in enumerate(axis_dims)])
    pos = torch.tensor(positions, dtype=torch.float64)[:, axis_of_pair]          # (T, hd/2)
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(pos), pos * freqs)
    return torch.stack([z.real, z.imag], dim=-1).flatten(-2)


def attend(w, name, q_in, kv_in, q_pos, k_pos, q_axes, k_axes, heads):
    lin = lambda x, n: x @ w[f"{name}.{n}.weight"].T + w[f"{name}.{n}.bias"]
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(0, 1)               # (H, T, hd)
    q, k, v = split(lin(q_in, "W_q")), split(lin(kv_in, "W_k")), split(lin(kv_in, "W_v"))
    q, k = rotate(q, q_pos, q_axes), rotate(k, k_pos, k_axes)
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
    return lin((weights @ v).transpose(0, 1).flatten(1), "W_o")


def reference_forward(weights, config, condition):
    """The release's ParameterGenerator.forward for one condition (L, input_dim) -> {key: tensor}."""
    w = {k: v.double() for k, v in weights.items()}
    lin = lambda x, n: x @ w[f"{n}.weight"].T + w[f"{n}.bias"]
    rms = lambda x, n: x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) * w[f"{n}.weight"]
    d, a, hd, r = config["d_model"], config["dim_accumulation"], config["head_dim"], config["rank"]
    heads, l, wr = d // hd, config["num_base_model_layers"], config["rank"] // config["dim_accumulation"]
    n_a, n_b = token_counts(config)
    s = n_a + n_b
    seq = s * wr                                                                  # latent vectors per layer

    u = rms(lin(condition.double(), "hidden_in"), "model.norm_input")
    x = torch.zeros(l, seq, d, dtype=torch.float64)
    for n in range(l):
        for t in range(seq):
            parts = [w["model.layer_pos.weight"][n] + w["model.hw_pos.weight"][t * a + g] for g in range(a)]
            x[n, t] = torch.cat(parts)
    x = rms(x, "model.norm_tokens")

    within = [(t // wr, t % wr) for t in range(seq)]
    q_cross = [(n, t) for n in range(l) for t in range(seq)]
    k_cross = [(i + max(s, wr), i + max(s, wr)) for i in range(u.shape[0])]
    for b in range(config["num_pg_layers"]):
        p = f"model.blocks.{b}"
        h = rms(x, f"{p}.norm1")
        x = x + torch.stack([attend(w, f"{p}.self_attn_n", h[:, t], h[:, t], [(n,) for n in range(l)],
                                    [(n,) for n in range(l)], [hd], [hd], heads) for t in range(seq)], dim=1)
        h = rms(x, f"{p}.norm2")
        x = x + torch.stack([attend(w, f"{p}.self_attn_hw", h[n], h[n], within, within, [hd // 2, hd // 2],
                                    [hd // 2, hd // 2], heads) for n in range(l)])
        h = rms(x, f"{p}.norm3").reshape(l * seq, d)
        x = x + attend(w, f"{p}.self_attn_cross", h, u, q_cross, k_cross, [hd // 2] * 2, [hd // 2] * 2,
                       heads).reshape(l, seq, d)
        h = rms(x, f"{p}.norm4")
        x = x + lin(torch.nn.functional.silu(lin(h, f"{p}.feed_forward.fc1")), f"{p}.feed_forward.fc2")
    x = rms(x, "model.norm_final")

    tokens = torch.zeros(l, s, r, config["output_dim"], dtype=torch.float64)
    for n in range(l):
        for t in range(seq):
            tok, wi = within[t]
            for g in range(a):
                head = "model.proj_out_A" if tok < n_a else "model.proj_out_B"
                tokens[n, tok, wi * a + g] = lin(x[n, t, g * (d // a):(g + 1) * (d // a)], head)

    out = {}
    order = [(m, "lora_A", sa) for m, sa, _ in lora_shapes(config)] + [(m, "lora_B", sb) for m, _, sb in lora_shapes(config)]
    area = r * config["token_dim"]
    for n in range(l):
        flat, start = tokens[n].reshape(-1), 0
        for module, which, shape in order:
            count = math.prod(shape)
            out[f"{config['prefix']}{n}.{module}.{which}"] = flat[start:start + count].reshape(shape)
            start += math.ceil(count / area) * area
    out["scale"] = torch.tensor(config["alpha"] / r, dtype=torch.float64)
    return out
