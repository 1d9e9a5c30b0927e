"""HY-WU's end-to-end cost on the demo, part by part (paper §3.7: 6.7 % over the base model).

One edit as `./hywu demo` runs it (the shipped demo family, a bundled held-out input, merge mode,
20 steps, CFG 1), split into the calls ComfyUI makes for it:

    encode    the condition encoder on image + instruction (HYWU Encode Condition)
    generate  the generator writing the LoRA (HYWU Generate LoRA); with the cache on, a repeated
              condition is a lookup in the GenerationCache
    apply     the patched clone (HYWU Apply LoRA: key map, weight patches; no weight is touched)
    patch     loading the clone, which merges the LoRA into the weights (comfy.model_management)
    sample    the sampling run with the weights merged (to compare with the base run)
    restore   loading the base model again, which puts the base weights back

and the base model's sampling run alone. The overhead is (sum of the parts) / base - 1, with the
generated-LoRA cache off and on. Each part is timed in turn, repeated, medians reported.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hywu_core.bench.timing import timed
from hywu_core.comfyui.lora_patch import apply_merge
from hywu_core.condition import encode_condition
from hywu_core.encoders import load_condition_encoder
from hywu_core.generated_lora import GenerationCache, generate_lora
from hywu_core.generator_files import load_generator
from hywu_core.tiny_editor.backbone import load_demo_checkpoint, sample

PAPER_OVERHEAD = 0.067
PARTS = ("encode", "generate", "apply", "patch", "sample", "restore")
REPO = Path(__file__).resolve().parents[2]
DEMO_MODELS = REPO / "demo_models"
DEMO_INPUT = REPO / "hywu_core" / "demo" / "inputs"
INSTRUCTION = "make it brighter"


def load_input(folder: Path = DEMO_INPUT) -> torch.Tensor:
    """The first bundled demo input as an IMAGE (1, H, W, 3)."""
    path = sorted(folder.glob("*.png"))[0]
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255)[None]


def one_edit(family: dict, image: torch.Tensor, steps: int, cache: GenerationCache | None) -> dict[str, float]:
    """Seconds of each part of one HY-WU edit in merge mode (see the module docstring)."""
    import comfy.model_management as mm

    base, clip, vae = family["model"], family["clip"], family["vae"]
    seconds, out = {}, {}
    seconds["encode"] = timed(lambda: out.setdefault("condition", encode_condition(family["encoder"], image,
                                                                                    INSTRUCTION)))
    seconds["generate"] = timed(lambda: out.setdefault("lora", generate_lora(family["generator"], out["condition"],
                                                                             cache)))
    seconds["apply"] = timed(lambda: out.setdefault("model", apply_merge(base, out["lora"].bundle)))
    seconds["patch"] = timed(lambda: mm.load_models_gpu([out["model"]]))
    seconds["sample"] = timed(lambda: sample(out["model"], clip, vae, image, INSTRUCTION, seed=0, steps=steps,
                                             cfg=1.0))
    seconds["restore"] = timed(lambda: mm.load_models_gpu([base]))
    return seconds


def bench_end_to_end(repeats: int = 5, steps: int = 20, models: Path = DEMO_MODELS) -> dict:
    """Median seconds per part with the cache off and on, the base run, and the overheads."""
    model, clip, vae = load_demo_checkpoint(models / "checkpoints" / "hywu_demo.safetensors")
    family = {"model": model, "clip": clip, "vae": vae,
              "encoder": load_condition_encoder(models / "hywu_encoders" / "hywu_demo"),
              "generator": load_generator(models / "hywu" / "hywu_demo.safetensors")}
    image = load_input()
    warm_cache = GenerationCache()
    runs = {"base": [], "cache_off": [], "cache_on": []}

    def base_run():
        return timed(lambda: sample(model, clip, vae, image, INSTRUCTION, seed=0, steps=steps, cfg=1.0))

    for round_ in range(repeats + 1):          # round 0 warms up (and fills the cache)
        times = {"base": base_run(), "cache_off": one_edit(family, image, steps, None),
                 "cache_on": one_edit(family, image, steps, warm_cache)}
        if round_:
            for name, value in times.items():
                runs[name].append(value)
    base = statistics.median(runs["base"])
    result = {"steps": steps, "instruction": INSTRUCTION, "base_ms": base * 1000, "paper_overhead": PAPER_OVERHEAD}
    for name in ("cache_off", "cache_on"):
        parts = {p: statistics.median(run[p] for run in runs[name]) for p in PARTS}
        total = sum(parts.values())
        result[name] = {"ms": {p: v * 1000 for p, v in parts.items()}, "total_ms": total * 1000,
                        "overhead": total / base - 1,
                        "fixed_overhead": (total - parts["sample"]) / base}
    return result


def print_end_to_end(row: dict) -> None:
    print(f"  base sampling {row['base_ms']:.1f} ms ({row['steps']} steps)")
    for name in ("cache_off", "cache_on"):
        v = row[name]
        parts = ", ".join(f"{p} {v['ms'][p]:.1f}" for p in PARTS)
        print(f"  HY-WU, cache {name.removeprefix('cache_')}: {parts} ms; total {v['total_ms']:.1f} ms: "
              f"overhead {v['overhead'] * 100:+.1f}% (paper: {row['paper_overhead'] * 100:.1f}%)")
