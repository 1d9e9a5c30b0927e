"""The feed-forward blocks of the HunyuanImage-3 trunk: a SwiGLU MLP and the mixture of experts built from it.

- `MLP`: gate_and_up_proj -> halves (x1, x2) -> down_proj(x1 * silu(x2)). The first half is the multiplied one
  and the second goes through SiLU, as the release lays it out (HY-WU's expert LoRA follows this: w3 patches the
  first half, w1 the second).
- `MoE`: a float32 router (`gate.wg`) scores every token, softmax over the experts, keeps the top k and
  renormalises those k weights to sum to one; each token's output is the weighted sum of its k experts
  (`experts.{e}`) plus, with `use_mixed_mlp_moe`, the shared MLP (`shared_mlp`) that every token goes through.
  Every routed token is computed (no capacity limit, no dropping), one expert at a time.
- `EXPERT_LORA_SLOTS`: where HY-WU's official expert LoRA goes (targets.bind_expert_groups): sub weight w3 writes
  the first half of each expert's gate_and_up_proj outputs, w1 the second half, w2 its down_proj. While an expert
  runs, `token_rows.current()` gives the batch item of each of its tokens, so a per-item LoRA can follow them.
- `feed_forward`: which of the two a layer holds, and its sizes, from config.json as the release reads it: MoE
  when num_experts > 1 and the layer index is at least `moe_layer_num_skipped`, else a dense MLP of
  `intermediate_size`. `num_experts`, `moe_topk`, `moe_intermediate_size` and `num_shared_expert` may be
  per-layer lists.
"""
import torch
import torch.nn.functional as F
from torch import nn

from hywu_core.token_rows import gathered_from

EXPERT_LORA_SLOTS = {"w3": ("gate_and_up_proj", 0, 2), "w1": ("gate_and_up_proj", 1, 2), "w2": ("down_proj", 0, 1)}


def per_layer(value, layer_idx):
    """A config value that is either one number for all layers or a list with one per layer."""
    return value[layer_idx] if isinstance(value, (list, tuple)) else value


class MLP(nn.Module):
    def __init__(self, hidden_size, intermediate_size, bias=False, ops=nn, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.gate_and_up_proj = ops.Linear(hidden_size, 2 * intermediate_size, bias=bias, **factory)
        self.down_proj = ops.Linear(intermediate_size, hidden_size, bias=bias, **factory)

    def forward(self, x):
        x1, x2 = self.gate_and_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(x1 * F.silu(x2))


class Router(nn.Module):
    """Top-k routing weights. `wg` is created float32 and always fed float32 tokens, as the release keeps its
    router: keep it float32 when casting the model."""

    def __init__(self, hidden_size, num_experts, top_k, ops=nn, device=None):
        super().__init__()
        self.top_k = top_k
        self.wg = ops.Linear(hidden_size, num_experts, bias=False, device=device, dtype=torch.float32)

    def forward(self, tokens):
        """(N, hidden) -> weights (N, k) float32 summing to one per token, expert indices (N, k)."""
        probs = self.wg(tokens.float()).softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-8), experts


class MoE(nn.Module):
    def __init__(self, hidden_size, num_experts, top_k, expert_size, shared_size=None, bias=False, ops=nn,
                 device=None, dtype=None):
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f"moe_topk must be between 1 and num_experts ({num_experts}), got {top_k}")
        factory = {"bias": bias, "ops": ops, "device": device, "dtype": dtype}
        self.shared_mlp = MLP(hidden_size, shared_size, **factory) if shared_size else None
        self.gate = Router(hidden_size, num_experts, top_k, ops=ops, device=device)
        self.experts = nn.ModuleList(MLP(hidden_size, expert_size, **factory) for _ in range(num_experts))

    def routed(self, x):
        """The experts' weighted sum alone, (..., hidden) -> (..., hidden).

        The router and each expert see flattened tokens; each call announces the tokens' batch items (token_rows).
        Token-expert pairs are grouped by expert (stable order), each expert runs once on its group (an expert no
        token chose does not run), and the weighted results are added back per token, experts in ascending order."""
        tokens = x.reshape(-1, x.shape[-1])
        batch = x.shape[0] if x.dim() > 2 else tokens.shape[0]
        item_of = torch.arange(tokens.shape[0], device=tokens.device) // (tokens.shape[0] // batch)
        with gathered_from(item_of, batch):
            weights, experts = self.gate(tokens)
        top_k = experts.shape[-1]
        order = experts.flatten().argsort(stable=True)
        counts = torch.bincount(experts.flatten(), minlength=len(self.experts)).tolist()
        token_of = order // top_k
        inputs = tokens[token_of].split(counts)
        items = item_of[token_of].split(counts)
        outputs = []
        for expert, part, part_items in zip(self.experts, inputs, items):
            if len(part):
                with gathered_from(part_items, batch):
                    part = expert(part)
            outputs.append(part)
        outputs = torch.cat(outputs)
        outputs = outputs * weights.flatten()[order].to(tokens.dtype).unsqueeze(-1)
        return torch.zeros_like(tokens).index_add_(0, token_of, outputs).view_as(x)

    def forward(self, x):
        out = self.routed(x)
        return out if self.shared_mlp is None else self.shared_mlp(x) + out


def feed_forward(config, layer_idx, ops=nn, device=None, dtype=None):
    """The `mlp` module of decoder layer `layer_idx`: an MoE or a dense MLP, per config.json."""
    hidden_act = config.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise ValueError(f"hidden_act {hidden_act!r} is not supported; HunyuanImage-3 uses 'silu'")
    hidden = config["hidden_size"]
    factory = {"bias": config.get("mlp_bias", False), "ops": ops, "device": device, "dtype": dtype}
    num_experts = config.get("num_experts", 1)
    most_experts = max(num_experts) if isinstance(num_experts, (list, tuple)) else num_experts
    if most_experts <= 1 or layer_idx < config.get("moe_layer_num_skipped", 0):
        return MLP(hidden, config["intermediate_size"], **factory)
    expert_size = per_layer(config.get("moe_intermediate_size") or config["intermediate_size"], layer_idx)
    shared = expert_size * per_layer(config.get("num_shared_expert", 1), layer_idx)
    return MoE(hidden, per_layer(num_experts, layer_idx), per_layer(config.get("moe_topk", 1), layer_idx),
               expert_size, shared if config.get("use_mixed_mlp_moe", False) else None, **factory)
