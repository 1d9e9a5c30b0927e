"""How much memory HunyuanImage-3 needs, computed from a config (not measured, not guessed).

Parameter counts come from building the modules on the meta device from the config (no memory, no
weights), so they are exactly what the loader will hold; bytes follow per storage dtype. Activations at
sampling time are dominated by the attention keys / values of the whole sequence, which the prefix cache
keeps for every layer: 2 (K, V) x layers x kv_heads x head_dim per token and CFG row.

    python -m hywu_core.hunyuan3.memory [MODEL_DIR] [--tokens N] [--generator GENERATOR_DIR]

HY-WU adds the official generator (counted the same way from its config.json, or from the release's sizes,
generator_files.RELEASE_CONFIG) and the LoRA it writes; `configurations` sums what must be resident on the
GPU in each way of running it.

Without MODEL_DIR it uses RELEASE_SHAPES: the trunk shapes the official HY-WU generator's target map fixes
(hidden 4096, 32 layers, qkv 4096 -> 6144 = (32 + 2 x 8) heads x 128, 64 experts of 3072, a shared MLP of
3072), with the vocabulary of the reference configuration class's default; the VAE and the vision tower
are left out there (their sizes are in the folder's config.json, not in the generator's).
"""
from __future__ import annotations

import argparse

import torch

from hywu_core.generator import Generator
from hywu_core.generator_files import RELEASE_CONFIG, official_parts
from hywu_core.hunyuan3.decoder import head_dim
from hywu_core.hunyuan3.model import HunyuanImage3Transformer
from hywu_core.lora import factor_shapes

RELEASE_SHAPES = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                  "attention_head_dim": 128, "vocab_size": 290943, "num_experts": 64, "moe_topk": 8,
                  "moe_intermediate_size": 3072, "use_mixed_mlp_moe": True, "num_shared_expert": 1,
                  "intermediate_size": 3072, "use_qk_norm": True, "patch_size": 1, "patch_embed_hidden_dim": 1024,
                  "vae": {"latent_channels": 32}}
DTYPES = {"bf16": 2, "fp8_e4m3fn": 1}
GIB = 2 ** 30


def parameter_counts(config: dict) -> dict[str, int]:
    """Parameters of each part the loader builds: the transformer (its routed experts separately) and, when the
    config has them, the vision tower + aligner and the VAE."""
    with torch.device("meta"):
        transformer = HunyuanImage3Transformer(config)
        counts = {"transformer": sum(p.numel() for p in transformer.parameters()),
                  "of which routed experts": sum(p.numel() for n, p in transformer.named_parameters()
                                                 if ".mlp.experts." in n)}
        if "vit" in config and "vit_aligner" in config:
            from hywu_core.hunyuan3.vision import VisionEncoder

            counts["vision tower + aligner"] = sum(p.numel() for p in VisionEncoder(config).parameters())
        if "block_out_channels" in config.get("vae", {}):
            from hywu_core.hunyuan3.vae import HunyuanVAE

            counts["VAE"] = sum(p.numel() for p in HunyuanVAE.from_config(config["vae"]).parameters())
    return counts


def kv_bytes_per_token(config: dict, dtype_bytes: int = 2) -> int:
    """Bytes of the cached keys and values of one token of one CFG row, over all layers."""
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim(config) * dtype_bytes


def image_tokens(config: dict, height: int = 1024, width: int = 1024) -> int:
    """Tokens of one image block (generated, or an input image's VAE part) at height x width pixels."""
    factor = 16 * config.get("patch_size", 1)
    return (height // factor) * (width // factor)


def table(config: dict, tokens: int, rows: int = 2) -> list[tuple[str, str]]:
    counts = parameter_counts(config)
    lines = [(f"{name}", f"{n / 1e9:.2f} B params: " + ", ".join(f"{n * b / GIB:.1f} GiB {d}"
                                                                  for d, b in DTYPES.items()))
             for name, n in counts.items()]
    kv = kv_bytes_per_token(config) * tokens * rows
    lines.append((f"keys/values, {tokens} tokens x {rows} CFG rows (bf16)", f"{kv / GIB:.2f} GiB"))
    hidden = tokens * rows * config["hidden_size"] * 2
    lines.append(("one hidden-state tensor of that sequence (bf16)", f"{hidden / GIB:.3f} GiB"))
    return lines


def generator_counts(cfg: dict) -> dict[str, int]:
    """Parameters of the official generator of config.json `cfg` (built on the meta device) and elements of one
    LoRA it writes (A and B of every target, experts included)."""
    config, spec, layout, alpha = official_parts(cfg)
    with torch.device("meta"):
        generator = Generator(config, layout, alpha)
    lora = sum(torch.Size(shape).numel() for _, module in spec.items() for shape in factor_shapes(module, cfg["rank"]))
    return {"generator": sum(p.numel() for p in generator.parameters()), "lora": lora}


def configurations(config: dict, generator_cfg: dict, tokens: int, rows: int = 2) -> list[tuple[str, str]]:
    """GiB resident on the GPU while the generator runs and while sampling, per way of running HY-WU: weights
    (transformer; generator in bf16), the LoRA (bf16), and the sampling run's keys/values (bf16). Activations
    of one layer, the VAE and the vision tower come on top."""
    transformer = parameter_counts(config)["transformer"]
    gen = generator_counts(generator_cfg)
    kv = kv_bytes_per_token(config) * tokens * rows / GIB
    generator_bytes, lora = gen["generator"] * 2 / GIB, gen["lora"] * 2 / GIB
    lines = []
    for name, weights, released in (("bf16 backbone, generator kept", transformer * 2 / GIB, False),
                                    ("fp8 backbone, generator kept", transformer / GIB, False),
                                    ("fp8 backbone, generator released before sampling", transformer / GIB, True)):
        generating = weights + generator_bytes + lora
        sampling = weights + lora + kv + (0 if released else generator_bytes)
        lines.append((name, f"generating {generating:.1f} GiB, sampling {sampling:.1f} GiB"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a HunyuanImage-3 folder (default: RELEASE_SHAPES)")
    parser.add_argument("--generator", default=None,
                        help="an official HY-WU generator folder (default: the release's sizes)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="sequence length (default: a 1024x1024 edit of one 1024x1024 image plus 3000 tokens "
                             "of system prompt, instruction and CoT)")
    args = parser.parse_args(argv)
    if args.model:
        from hywu_core.hunyuan3.config import open_folder

        config = open_folder(args.model).config
    else:
        config = RELEASE_SHAPES
    tokens = args.tokens or 2 * image_tokens(config) + 3000
    for what, value in table(config, tokens):
        print(f"{what:55s} {value}")
    if args.generator:
        import json
        from pathlib import Path

        generator_cfg = json.loads((Path(args.generator) / "config.json").read_text())
    else:
        generator_cfg = RELEASE_CONFIG
    gen = generator_counts(generator_cfg)
    print(f"{'HY-WU generator':55s} {gen['generator'] / 1e9:.2f} B params: {gen['generator'] * 2 / GIB:.1f} GiB bf16")
    print(f"{'one generated LoRA':55s} {gen['lora'] / 1e6:.1f} M values: {gen['lora'] * 2 / GIB:.3f} GiB bf16")
    for what, value in configurations(config, generator_cfg, tokens):
        print(f"{what:55s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
