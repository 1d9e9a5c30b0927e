"""Per-row LoRA at real backbone widths (paper §3.2, §3.7): what merge and dynamic cost where it matters.

At the demo's width (64, rank 8) a LoRA adds 2r/d = 25 % of a Linear's FLOPs and Python overhead
dominates; at a real DiT's width (3072 for Flux and Qwen-Image, 4096 for HunyuanImage-3) rank 16
adds about 1 %. So these benches run at real widths:

    linear  one d_in -> d_out Linear over R rows of T tokens: no LoRA, one LoRA merged into the
            weight, a distinct LoRA per row as dynamic mode adds it (PerRowLoRA's hook:
            out + per_row_lora(x, A, B, rows)), and the same added in place; against the FLOP
            limit 1 + r (d_in + d_out) / (d_in d_out)
    stack   a stack of real-width MMDiT joint blocks (ComfyUI's own MMDiT, built like the demo
            editor at width 64 * depth, random weights; on the CPU `./hywu bench` times it on one
            thread with subnormals flushed, see suite.flushing_subnormals) sampled through ComfyUI's KSampler path:
            base, merge (weight patches) and dynamic (a distinct LoRA per row), per sampling step
            (time at n steps minus time at 1 step, each run with its model already loaded, so
            text encoding drops out and patching is not timed; the rest is the fixed cost per run)

Every figure is a median of variants timed in turn in the same run (timing.interleaved).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from hywu_core.bench.timing import interleaved
from hywu_core.kernels import per_row_lora, per_row_lora_add_
from hywu_core.lora import LoRABundle, factor_shapes
from hywu_core.targets import TargetSpec, derive_targets


@dataclass(frozen=True)
class LinearCase:
    """R rows x T tokens through a d_in -> d_out Linear, rank-r LoRAs (row i: LoRA i)."""
    rows: int
    tokens: int
    d_in: int
    d_out: int
    rank: int

    def limit(self) -> float:
        """Dynamic over base if time followed FLOPs: 1 + r (d_in + d_out) / (d_in d_out)."""
        return 1 + self.rank * (self.d_in + self.d_out) / (self.d_in * self.d_out)


LINEAR_CASES = tuple(LinearCase(rows, 1024, 3072, 3072, 16) for rows in (2, 4, 8))
QUICK_LINEAR_CASES = (LinearCase(2, 64, 256, 256, 16),)


def linear_variants(case: LinearCase, dtype: torch.dtype, device, seed: int = 0) -> dict:
    """The timed callables of one case: none, merged, per_row (out + delta), per_row_add_ (in place)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*size, std=1.0):
        return (torch.randn(*size, generator=g) * std).to(device=device, dtype=dtype)

    x = randn(case.rows, case.tokens, case.d_in)
    weight, bias = randn(case.d_out, case.d_in, std=case.d_in ** -0.5), randn(case.d_out, std=0.02)
    A = randn(case.rows, case.rank, case.d_in, std=case.d_in ** -0.5)
    B = randn(case.rows, case.d_out, case.rank, std=0.02)
    rows = torch.arange(case.rows, device=device)
    merged = (weight.float() + B[0].float() @ A[0].float()).to(dtype)
    return {"none": lambda: F.linear(x, weight, bias),
            "merged": lambda: F.linear(x, merged, bias),
            "per_row": lambda: F.linear(x, weight, bias) + per_row_lora(x, A, B, rows, 1.0),
            "per_row_add_": lambda: per_row_lora_add_(F.linear(x, weight, bias), x, A, B, rows, 1.0)}


def bench_linear(cases=LINEAR_CASES, repeats: int = 5, dtype: torch.dtype = torch.float32, device="cpu") -> list[dict]:
    """Per case: median ms of each variant, each over `none`, and the FLOP limit beside them."""
    results = []
    with torch.no_grad():
        for case in cases:
            seconds = interleaved(linear_variants(case, dtype, device), repeats)
            results.append(asdict(case) | {
                "dtype": str(dtype).removeprefix("torch."),
                "ms": {k: v * 1000 for k, v in seconds.items()},
                "over_none": {k: v / seconds["none"] for k, v in seconds.items() if k != "none"},
                "limit": case.limit()})
    return results


@dataclass(frozen=True)
class StackCase:
    """`blocks` MMDiT joint blocks of width 64 * depth over a size x size image in patches of `patch`
    (tokens = (size / patch)^2 image tokens plus the prompt's), a batch of `batch` images with a
    distinct rank-`rank` LoRA each, sampled with CFG `cfg` (1: no uncond branch)."""
    depth: int = 48
    blocks: int = 2
    patch: int = 2
    size: int = 64
    batch: int = 2
    rank: int = 16
    cfg: float = 1.0
    steps: int = 3

    @property
    def width(self) -> int:
        return 64 * self.depth

    @property
    def image_tokens(self) -> int:
        return (self.size // self.patch) ** 2


STACK_CASE = StackCase(depth=24)     # width 1536 (SD3.5 Medium's); timed on one thread, subnormals flushed
QUICK_STACK_CASE = StackCase(depth=4, blocks=2, patch=2, size=32, batch=2, rank=8, steps=3)


def random_bundle(spec: TargetSpec, count: int, rank: int, seed: int = 0, b_std: float = 0.01) -> LoRABundle:
    """`count` distinct LoRAs over `spec` (A ~ N(0, 1/d_in), B ~ N(0, b_std^2)), alpha = rank."""
    g = torch.Generator().manual_seed(seed)
    A, B = {}, {}
    for path, module in spec.items():
        a_shape, b_shape = factor_shapes(module, rank)
        A[path] = torch.randn(count, *a_shape, generator=g) * a_shape[-1] ** -0.5
        B[path] = torch.randn(count, *b_shape, generator=g) * b_std
    return LoRABundle(spec, rank, float(rank), A, B)


def lora_flop_limit(spec: TargetSpec, rank: int) -> float:
    """1 + LoRA FLOPs / base FLOPs over the targeted Linears (per token, every target alike)."""
    base = sum(m.d_in * m.d_out * m.experts for _, m in spec.items())
    lora = sum(rank * (m.d_in + m.d_out) * m.experts for _, m in spec.items())
    return 1 + lora / base


def build_stack(case: StackCase, dtype: torch.dtype = torch.float32):
    """(MODEL, CLIP, VAE) of a random real-width stack: the demo editor's classes at case's sizes."""
    from hywu_core.tiny_editor.backbone import DemoBackboneConfig, assemble_demo_backbone, build_demo_backbone

    config = DemoBackboneConfig(patch_size=case.patch, depth=case.depth, num_blocks=case.blocks)
    state_dict, config = build_demo_backbone(seed=0, config=config)
    return assemble_demo_backbone(state_dict, config, dtype=dtype)


def per_step_costs(models: dict, run, low: int, high: int, repeats: int) -> dict:
    """Per sampling step and fixed per run of each model (base, merge, dynamic): run(model, steps)
    timed at `low` and `high` steps, interleaved, each call with its model already loaded (ComfyUI
    merges a clone's patches when it loads it; that is timed in bench.end_to_end), per step =
    (t_high - t_low) / (high - low); fixed = t_low - low * per step (text encoding, VAE)."""
    import comfy.model_management as mm

    names = [(name, steps) for name in models for steps in (low, high)]
    calls = {f"{name}@{steps}": (lambda m=models[name], steps=steps: run(m, steps)) for name, steps in names}
    loads = {f"{name}@{steps}": (lambda m=models[name]: mm.load_models_gpu([m])) for name, steps in names}
    seconds = interleaved(calls, repeats, setup=loads)
    per_step = {name: (seconds[f"{name}@{high}"] - seconds[f"{name}@{low}"]) / (high - low) for name in models}
    return {"ms_per_step": {k: v * 1000 for k, v in per_step.items()},
            "ms_fixed_per_run": {k: (seconds[f"{k}@{low}"] - low * v) * 1000 for k, v in per_step.items()},
            "merge_over_base": per_step["merge"] / per_step["base"],
            "dynamic_over_base": per_step["dynamic"] / per_step["base"]}


def bench_stack(case: StackCase = STACK_CASE, repeats: int = 3, dtype: torch.dtype = torch.float32) -> dict:
    """Per sampling step and fixed per run: base, merge (LoRA 0 for every row) and dynamic (LoRA i
    for row i), through comfy.sample like the stock KSampler."""
    from hywu_core.comfyui.lora_patch import apply_dynamic, apply_merge
    from hywu_core.tiny_editor.backbone import sample

    model, clip, vae = build_stack(case, dtype)
    spec = derive_targets(model.model.diffusion_model)
    bundle = random_bundle(spec, case.batch, case.rank)
    models = {"base": model, "merge": apply_merge(model, bundle.item(0)), "dynamic": apply_dynamic(model, bundle)}
    images = torch.rand(case.batch, case.size, case.size, 3, generator=torch.Generator().manual_seed(0))
    costs = per_step_costs(models, lambda m, steps: sample(m, clip, vae, images, "edit", seed=0, steps=steps,
                                                           cfg=case.cfg), 1, case.steps, repeats)
    del models, model
    return asdict(case) | costs | {
        "width": case.width, "image_tokens": case.image_tokens, "dtype": str(dtype).removeprefix("torch."),
        "targeted_weights": sum(m.d_in * m.d_out * m.experts for _, m in spec.items()),
        "limit": lora_flop_limit(spec, case.rank)}


def print_linear(rows: list[dict]) -> None:
    for row in rows:
        ms, over = row["ms"], row["over_none"]
        print(f"  R={row['rows']} T={row['tokens']} {row['d_in']}->{row['d_out']} r={row['rank']} {row['dtype']}: "
              f"none {ms['none']:.1f} ms; merged {over['merged']:.3f}x, per row {over['per_row']:.3f}x, "
              f"per row in place {over['per_row_add_']:.3f}x (limit {row['limit']:.4f}x)")


def print_stack(row: dict) -> None:
    ms, fixed = row["ms_per_step"], row["ms_fixed_per_run"]
    print(f"  {row['blocks']} blocks of width {row['width']}, {row['image_tokens']} image tokens, batch {row['batch']} "
          f"(a distinct rank-{row['rank']} LoRA per row), CFG {row['cfg']}, {row['dtype']}: per step base "
          f"{ms['base']:.0f} ms, merge {row['merge_over_base']:.3f}x, dynamic {row['dynamic_over_base']:.3f}x "
          f"(limit {row['limit']:.4f}x); fixed per run base {fixed['base']:.0f} ms, merge {fixed['merge']:.0f} ms, "
          f"dynamic {fixed['dynamic']:.0f} ms")
