"""Generation cost of HY-WU on HunyuanImage-3: what the condition, the generator and the per-edit LoRA add to an edit.

`bench_hywu` runs the committed tiny checkpoint and tiny official-layout generator (tests/data/hunyuan3) on the
reference edit request (two input images, 256x256, the reference's prompt and CoT), on the CPU, and times in one
run, interleaved (medians of timing.interleaved):

    condition     the img_ratio prefill's last layer before ln_f (transformer.prefill_states), HY-WU's condition
    generator     generate_lora on that condition (no cache)
    first step    a sampling run's first step of the CFG batch [cond, uncond] (whole sequence, prefix K/V cached)
    step          a later step of that run (the generated image's tokens only)
    ..., dynamic  the same with the generated LoRA injected per row at each step (PerRowLoRA, dynamic mode)
    ..., merged   the same on a copy of the transformer with scale * B @ A added into the adapted weights
    patch         adding the LoRA into the weights and restoring them (what merge mode does once per run)
    runs          whole sampling runs at the folder's step count (diff_infer_steps, Euler, CFG): the base run,
                  and HY-WU's (condition + generator + the run with the LoRA, dynamic, or merged: patched
                  before the run and restored after)

End to end is the HY-WU run over the base run, measured at the folder's step count and projected at that count
and at the release's 50 steps from the parts: (condition + generator [+ patch] + first step + (n - 1) steps, dynamic
or merged) / (first step + (n - 1) steps). The CoT (text decoding before the image) and the request's preparation
(tokenizer, VAE, vision tower) are the same with and without HY-WU and left out of both.

`bench_real_width` is the GPU check's part (bench.gpu): the official generator's shape against one real-width
decoder layer, scaled to the model's depth.

    python -m hywu_core.bench.hunyuan3_hywu [--repeats N]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import platform
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from PIL import Image

from hywu_core.bench.hunyuan3_cache import random_inputs
from hywu_core.bench.timing import interleaved
from hywu_core.condition import Condition
from hywu_core.generated_lora import generate_lora
from hywu_core.generator_files import load_generator
from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.decoder import DecoderTrunk, KVCache, gather_tokens
from hywu_core.hunyuan3.inputs import StepInputs
from hywu_core.hunyuan3.memory import RELEASE_SHAPES
from hywu_core.hunyuan3.model import DIFFUSION_PREFIXES, HunyuanImage3Transformer
from hywu_core.hunyuan3.moe import EXPERT_LORA_SLOTS
from hywu_core.hunyuan3.request import RequestBuilder
from hywu_core.lora import LoRABundle
from hywu_core.lora_inject import PerRowLoRA
from hywu_core.targets import TargetSpec

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "hunyuan3"
RELEASE_STEPS = 50
STEP_TIMESTEP = 600.0
# One real-width decoder layer (the release's trunk shapes) and its tiny twin for the GPU check's dry run, which
# the dry generator (bench.gpu.DRY_GENERATOR) targets: qkv 32 -> (4 + 2 x 1) x 8, two experts of 16.
REAL_WIDTH_LAYER = dict(RELEASE_SHAPES, num_hidden_layers=1, vocab_size=16)
DRY_LAYER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 1,
             "attention_head_dim": 8, "vocab_size": 16, "num_experts": 2, "moe_topk": 2, "moe_intermediate_size": 16,
             "use_mixed_mlp_moe": True, "num_shared_expert": 1, "intermediate_size": 16, "use_qk_norm": True}


def lora_deltas(model: torch.nn.Module, bundle: LoRABundle):
    """(weight rows, scale * B @ A) of every Linear that the first LoRA of a bound bundle adapts."""
    for module, path, expert, out_slice in PerRowLoRA(bundle).targets(model):
        a, b = bundle.A[path][0], bundle.B[path][0]
        if expert is not None:
            a, b = a[expert], b[expert]
        weight = module.weight if out_slice is None else module.weight[out_slice[0]:out_slice[1]]
        yield weight, (bundle.scale * (b @ a)).to(weight.dtype)


def merged_copy(model: torch.nn.Module, bundle: LoRABundle) -> torch.nn.Module:
    """A copy of `model` whose adapted weights hold W + scale * B @ A of the bundle's first LoRA."""
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for weight, delta in lora_deltas(merged, bundle):
            weight.add_(delta)
    return merged


@contextmanager
def merged_into(model: torch.nn.Module, bundle: LoRABundle):
    """Inside the block `model`'s adapted weights hold the bundle's first LoRA; the base weights come back after."""
    saved = []
    try:
        with torch.no_grad():
            for weight, delta in lora_deltas(model, bundle):
                saved.append((weight, weight.clone()))
                weight.add_(delta)
        yield model
    finally:
        with torch.no_grad():
            for weight, backup in saved:
                weight.copy_(backup)


class Stepper:
    """Denoising steps of one CFG batch on one model (LoRA 0 injected in every row when `lora` is given). `first`
    starts a sampling run (the prefix K/V cache filled under this stepper's weights), `step` continues it: give
    each stepper a model of its own, as a run on the same model drops the others' caches."""

    def __init__(self, model, inputs: StepInputs, x: torch.Tensor, lora: PerRowLoRA | None = None):
        self.model, self.inputs, self.x, self.lora = model, inputs, x, lora
        self.t = torch.full((x.shape[0],), STEP_TIMESTEP)
        self.run = None

    def _injected(self):
        if self.lora is None:
            return nullcontext()
        return self.lora.inject(self.model, torch.zeros(self.x.shape[0], dtype=torch.long))

    def first(self) -> torch.Tensor:
        self.run = object()
        return self.step()

    def step(self) -> torch.Tensor:
        with self._injected():
            return self.model.denoise(self.x, self.t, self.inputs, run=self.run)

    def sample(self, noise: torch.Tensor, steps: int, guidance: float, shift: float) -> torch.Tensor:
        """A sampling run: Euler on the flow-matching velocity over `steps` shifted sigmas, CFG on [cond, uncond]."""
        sigmas = torch.linspace(1, 0, steps + 1)
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        x, self.run = noise, object()
        with self._injected():
            for sigma, following in itertools.pairwise(sigmas):
                cond, uncond = self.model.denoise(torch.cat([x, x]), torch.full((2,), 1000 * float(sigma)),
                                                  self.inputs, run=self.run).chunk(2)
                x = x + (following - sigma) * (uncond + guidance * (cond - uncond))
        return x


def prepare_edit(folder):
    """The reference edit request of hywu_reference.json ("inputs") prepared on the tiny checkpoint's folder."""
    request = json.loads((DATA / "hywu_reference.json").read_text())["inputs"]
    images = [Image.open(DATA / name) for name in request["images"]]
    return RequestBuilder.from_folder(folder).prepare(
        request["edit_prompt"], images, cot_text=request["edit_cot_text"], system_prompt=request["system_prompt"],
        image_size=request["image_size"], seed=request["seed"])


def projected(ms: dict, steps: int, modes=("dynamic", "merged")) -> dict:
    """HY-WU over the base end to end at `steps`, per mode, from the parts (module docstring)."""
    base = ms["first step"] + (steps - 1) * ms["step"]
    return {mode: (ms["condition"] + ms["generator"] + (ms["patch"] if mode == "merged" else 0.0)
                   + ms[f"first step, {mode}"] + (steps - 1) * ms[f"step, {mode}"]) / base for mode in modes}


def bench_hywu(repeats: int = 5) -> dict:
    """The tiny bench (module docstring): medians in ms, ratios, end to end, and the check that the dynamic LoRA's
    step equals the merged weights' step. Timed as the suite's sampling rows are (suite.flushing_subnormals): one
    thread, subnormal floats flushed; on this shared 2-core machine, two threads made a step 30x slower whenever
    another process held a core (torch's worker threads wait on each other), one thread did not."""
    from hywu_core.bench.suite import flushing_subnormals  # the suite imports this module

    folder = open_folder(str(DATA / "tiny_model"))
    model = HunyuanImage3Transformer(folder.config)
    model.load_weights(folder.state_dict(DIFFUSION_PREFIXES, strip=False))
    model.eval()
    generator = load_generator(DATA / "tiny_generator")
    prepared = prepare_edit(folder)
    steps, guidance = int(folder.generation["diff_infer_steps"]), float(folder.generation["diff_guidance_scale"])
    shift = float(folder.generation["flow_shift"])
    batch = StepInputs.cat([prepared.cond, prepared.uncond])
    noise = prepared.initial_noise()
    x = noise.expand(2, -1, -1, -1)
    with flushing_subnormals() as flushing, torch.no_grad():
        threads = torch.get_num_threads()
        condition = Condition.from_tensors(model.prefill_states(prepared.ratio, torch.float32))
        lora = generate_lora(generator, condition).bundle.bound(EXPERT_LORA_SLOTS)
        base, runs = Stepper(copy.deepcopy(model), batch, x), Stepper(model, batch, x)
        dynamic = Stepper(copy.deepcopy(model), batch, x, PerRowLoRA(lora))
        merged = Stepper(merged_copy(model, lora), batch, x)

        def hywu_run(mode: str):
            states = model.prefill_states(prepared.ratio, torch.float32)
            generated = generate_lora(generator, Condition.from_tensors(states)).bundle.bound(EXPERT_LORA_SLOTS)
            if mode == "dynamic":
                return Stepper(model, batch, x, PerRowLoRA(generated)).sample(noise, steps, guidance, shift)
            with merged_into(model, generated):
                return runs.sample(noise, steps, guidance, shift)

        def patch():
            with merged_into(model, lora):
                pass

        variants = {
            "condition": lambda: model.prefill_states(prepared.ratio, torch.float32),
            "generator": lambda: generate_lora(generator, condition),
            "first step": base.first, "step": base.step,
            "first step, dynamic": dynamic.first, "step, dynamic": dynamic.step,
            "patch": patch, "first step, merged": merged.first, "step, merged": merged.step,
            "base run": lambda: runs.sample(noise, steps, guidance, shift),
            "HY-WU run, dynamic": lambda: hywu_run("dynamic"), "HY-WU run, merged": lambda: hywu_run("merged")}
        seconds = interleaved(variants, repeats)         # each step follows its stepper's first step
        predictions = {name: stepper.step() for name, stepper in
                       (("base", base), ("dynamic", dynamic), ("merged", merged))}
    ms = {name: value * 1e3 for name, value in seconds.items()}
    scale = predictions["merged"].abs().max()
    return {
        "device": f"CPU {platform.processor() or platform.machine()}", "threads": threads,
        "subnormals_flushed": flushing,
        "model": "tests/data/hunyuan3/tiny_model + tiny_generator", "condition_tokens": condition.tokens.shape[1],
        "sequence_tokens": batch.input_ids.shape[1], "image_tokens": math.prod(batch.image_grid),
        "batch": batch.batch_size, "steps": steps, "ms": ms,
        "ratios": {"condition_over_step": ms["condition"] / ms["step"],
                   "condition_over_first_step": ms["condition"] / ms["first step"],
                   "generator_over_step": ms["generator"] / ms["step"],
                   "step_dynamic_over_base": ms["step, dynamic"] / ms["step"],
                   "step_merged_over_base": ms["step, merged"] / ms["step"],
                   "first_step_dynamic_over_base": ms["first step, dynamic"] / ms["first step"],
                   "first_step_merged_over_base": ms["first step, merged"] / ms["first step"]},
        "end_to_end": {"measured": {"steps": steps, "dynamic": ms["HY-WU run, dynamic"] / ms["base run"],
                                    "merged": ms["HY-WU run, merged"] / ms["base run"]},
                       "projected": {str(n): projected(ms, n) for n in (steps, RELEASE_STEPS)}},
        "check": {"dynamic_vs_merged": float((predictions["dynamic"] - predictions["merged"]).abs().max() / scale),
                  "lora_change": float((predictions["dynamic"] - predictions["base"]).abs().max() / scale)}}


def first_layer(bundle: LoRABundle) -> LoRABundle:
    """The part of `bundle` that adapts its first block."""
    spec = TargetSpec(bundle.spec.blocks[:1])
    paths = spec.module_paths()
    return LoRABundle(spec, bundle.rank, bundle.alpha, {p: bundle.A[p] for p in paths}, {p: bundle.B[p] for p in paths})


def bench_real_width(generator, layers: int, layer_config: dict, condition_tokens: int, grid: int, repeats: int,
                     device, dtype: torch.dtype) -> dict:
    """The official generator's time against one decoder layer of `layer_config` (random weights), scaled to the
    model's `layers`: the condition prefill (`condition_tokens`, one row), the first and a later step of a CFG batch
    of two over that prefix and a grid x grid image, base and with layer 0 of the generated LoRA injected per row.
    The generator reads the layer's prefill output (the model's last layer has that shape). On CUDA also the peak
    memory the generator run adds to what was held before it."""
    trunk = DecoderTrunk(layer_config, device=device, dtype=dtype).eval()
    root = torch.nn.ModuleDict({"model": trunk})           # so that the LoRA's paths model.layers.0.* resolve
    layout = random_inputs(condition_tokens, grid, torch.Generator().manual_seed(0))
    mask = layout.attention_mask.to(device).expand(2, -1, -1, -1)
    cos, sin = trunk.rope(layout.positions.to(device).expand(2, -1, -1))
    indices = torch.cat([layout.timestep_slot, layout.image_slots], dim=1).to(device).repeat(2, 1)
    step_mask, step_cos, step_sin = (gather_tokens(t, indices, d) for t, d in ((mask, 2), (cos, 1), (sin, 1)))
    h = torch.randn(2, mask.shape[-1], layer_config["hidden_size"], device=device, dtype=dtype)
    h_step = gather_tokens(h, indices, 1)
    n = condition_tokens
    on_cuda = torch.device(device).type == "cuda"
    with torch.no_grad():
        states = trunk(h[:1, :n], mask[:1, :, :n, :n], cos[:1, :n], sin[:1, :n]).last_layer
        condition = Condition.from_tensors(states)
        if on_cuda:
            torch.cuda.synchronize(device)
            held = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        bundle = generator(condition)
        peak = (torch.cuda.max_memory_allocated(device) - held) / 2**30 if on_cuda else None
        lora = PerRowLoRA(first_layer(bundle).bound(EXPERT_LORA_SLOTS))
        rows = torch.zeros(2, dtype=torch.long, device=device)

        def first(cache=None):
            return trunk(h, mask, cos, sin, kv_cache=cache or KVCache())

        def step(cache):
            return trunk(h_step, step_mask, step_cos, step_sin, kv_cache=cache, indices=indices)

        def dynamic(fn):
            def call():
                with lora.inject(root, rows):
                    return fn()
            return call

        caches = {"base": KVCache(), "dynamic": KVCache()}
        first(caches["base"])
        dynamic(lambda: first(caches["dynamic"]))()
        seconds = interleaved({
            "generator": lambda: generator(condition),
            "condition": lambda: trunk(h[:1, :n], mask[:1, :, :n, :n], cos[:1, :n], sin[:1, :n]),
            "first step": first, "step": lambda: step(caches["base"]),
            "first step, dynamic": dynamic(first), "step, dynamic": dynamic(lambda: step(caches["dynamic"]))}, repeats)
    ms = {name: value * 1e3 * (1 if name == "generator" else layers) for name, value in seconds.items()}
    weights = sum(p.numel() * p.element_size() for p in generator.parameters()) / 2**30
    return {"layers": layers, "hidden": layer_config["hidden_size"], "experts": layer_config["num_experts"],
            "condition_tokens": n, "image_tokens": grid * grid, "batch": 2, "dtype": str(dtype).removeprefix("torch."),
            "ms_per_model": ms, "generator_over_step": ms["generator"] / ms["step"],
            "condition_over_step": ms["condition"] / ms["step"],
            "step_dynamic_over_base": ms["step, dynamic"] / ms["step"],
            "end_to_end_at_50": projected(ms, RELEASE_STEPS, ("dynamic",))["dynamic"],
            "generator_weights_gib": weights, "generator_peak_gib": peak,
            "lora_finite": all(bool(torch.isfinite(t).all()) for t in (*bundle.A.values(), *bundle.B.values()))}


def print_hywu(row: dict) -> None:
    """The tiny bench's table: medians, ratios, end to end."""
    ms, r, e2e = row["ms"], row["ratios"], row["end_to_end"]
    notes = {"condition": f"{r['condition_over_step']:.2f}x a step, {r['condition_over_first_step']:.2f}x the first",
             "generator": f"{r['generator_over_step']:.2f}x a step",
             "step, dynamic": f"{r['step_dynamic_over_base']:.3f}x the base step",
             "step, merged": f"{r['step_merged_over_base']:.3f}x the base step",
             "first step, dynamic": f"{r['first_step_dynamic_over_base']:.3f}x the base's",
             "first step, merged": f"{r['first_step_merged_over_base']:.3f}x the base's",
             "HY-WU run, dynamic": f"{e2e['measured']['dynamic']:.2f}x the base run",
             "HY-WU run, merged": f"{e2e['measured']['merged']:.2f}x the base run"}
    print(f"HY-WU on HunyuanImage-3 ({row['model']}), {row['device']}, threads {row['threads']}, subnormals "
          f"{'flushed' if row['subnormals_flushed'] else 'kept'}: condition {row['condition_tokens']} tokens, "
          f"CFG batch {row['batch']} of {row['sequence_tokens']} tokens ({row['image_tokens']} image tokens), "
          f"{row['steps']} steps")
    print(f"  {'part':<20} {'median ms':>10}  ratio")
    for name, value in ms.items():
        print(f"  {name:<20} {value:>10.1f}  {notes.get(name, '')}".rstrip())
    at = e2e["projected"]
    print("  end to end, HY-WU over base, projected from the parts: " + "; ".join(
        f"{steps} steps dynamic {v['dynamic']:.2f}x, merged {v['merged']:.2f}x" for steps, v in at.items())
          + " (CoT and request preparation left out: the same without HY-WU)")
    print(f"  dynamic step vs merged step: max |diff| {row['check']['dynamic_vs_merged']:.1e} of the prediction's "
          f"largest value; the LoRA moves it by {row['check']['lora_change']:.2f} of that")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; medians of {args.repeats} interleaved runs")
    print_hywu(bench_hywu(args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
