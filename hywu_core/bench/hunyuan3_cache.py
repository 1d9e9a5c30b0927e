"""HunyuanImage-3's prefix cache: a denoising step after the first recomputes only the generated image's tokens.

A random transformer of the tiny test checkpoint's shape (hidden 64, 3 layers, 4 experts top-2) over the
sequence length of an edit with a system prompt and two input images (about 2100 prefix tokens, a 16x16
image block): the first step of a run (whole sequence, cache filled) against a later step of the same run
(cache reused), timed in turn, with the later step checked against a full recompute.

    python -m hywu_core.bench.hunyuan3_cache [--repeats N] [--prefix N] [--grid N]
"""
from __future__ import annotations

import argparse

import torch

from hywu_core.bench.timing import interleaved
from hywu_core.hunyuan3.inputs import StepInputs
from hywu_core.hunyuan3.model import HunyuanImage3Transformer
from hywu_core.hunyuan3.rope import rope_positions

CONFIG = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
          "attention_head_dim": 16, "vocab_size": 1348, "num_experts": 4, "moe_topk": 2, "moe_intermediate_size": 32,
          "use_mixed_mlp_moe": True, "num_shared_expert": 1, "intermediate_size": 32, "use_qk_norm": True,
          "patch_size": 1, "patch_embed_hidden_dim": 32, "vae": {"latent_channels": 8}}


def random_inputs(prefix: int, grid: int, generator: torch.Generator) -> StepInputs:
    """One row: `prefix` text tokens, `<timestep>`, a grid x grid image block, `<eoi>`."""
    length = prefix + 1 + grid * grid + 1
    start = prefix + 1
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    mask[start:start + grid * grid, start:start + grid * grid] = True
    return StepInputs(
        input_ids=torch.randint(0, CONFIG["vocab_size"], (1, length), generator=generator),
        attention_mask=mask[None, None], positions=rope_positions(length, [(start, grid, grid)])[None],
        cond_latents=(), cond_image_slots=torch.zeros(1, 0, dtype=torch.long),
        cond_timestep_slots=torch.zeros(1, 0, dtype=torch.long), vit_embeds=torch.zeros(1, 0, CONFIG["hidden_size"]),
        vit_slots=torch.zeros(1, 0, dtype=torch.long), image_slots=torch.arange(start, start + grid * grid)[None],
        timestep_slot=torch.tensor([[prefix]]), image_grid=(grid, grid), keys=("bench",))


def bench_prefix_cache(repeats: int = 5, prefix: int = 2100, grid: int = 16) -> dict:
    generator = torch.Generator().manual_seed(0)
    model = HunyuanImage3Transformer(CONFIG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    inputs = random_inputs(prefix, grid, generator)
    x = torch.randn(1, 8, grid, grid, generator=generator)
    t = torch.tensor([500.0])
    run = {"current": None}

    def first_step():
        run["current"] = object()
        model.denoise(x, t, inputs, run=run["current"])

    def later_step():
        model.denoise(x, t, inputs, run=run["current"])

    with torch.no_grad():
        first_step()
        cached = model.denoise(x, t, inputs, run=run["current"])
        full = model.denoise(x, t, inputs)
        times = interleaved({"first step": first_step, "later step": later_step}, repeats)
    return {"tokens": inputs.input_ids.shape[1], "image_tokens": grid * grid, "ms": {k: v * 1e3 for k, v in times.items()},
            "later_over_first": times["later step"] / times["first step"],
            "max_abs_diff_vs_full": float((cached - full).abs().max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prefix", type=int, default=2100)
    parser.add_argument("--grid", type=int, default=16)
    args = parser.parse_args(argv)
    row = bench_prefix_cache(args.repeats, args.prefix, args.grid)
    print(f"HunyuanImage-3 step, {row['tokens']} tokens ({row['image_tokens']} image): first step "
          f"{row['ms']['first step']:.1f} ms, later step {row['ms']['later step']:.1f} ms "
          f"({row['later_over_first']:.3f}x); later step vs full recompute max |diff| {row['max_abs_diff_vs_full']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
