"""Record HY-WU test vectors: a tiny parameter generator, the LoRA it generates for the edit condition, the image.

Like make_reference.py next to it, this script runs ONLY in the separate environment where the public reference
code (Tencent-Hunyuan/HY-WU, package ``wu``) is importable; it is not part of our package and is never collected
by pytest. Rerun it from the repository root with::

    HY3_REF_SRC=/tmp/hy3ref_src ~/.cache/hywu/hy3ref/bin/python tests/data/hunyuan3/make_hywu_reference.py

It imports make_reference.py (as ``base``) and reuses its CPU patches and recording taps, constants, inputs and
helpers. It loads the existing ``tiny_model/`` and reads ``reference.safetensors`` and ``reference_edit.png``
for checks only: none of make_reference's files is rewritten. The run takes under a minute on one CPU thread and
is deterministic (same reference commit and package versions give bitwise identical files).

What it writes next to itself:

- ``tiny_generator/``: a random tiny ``wu.generator.ParameterGenerator`` for tiny_model (config.json with
  model_type "parameter_generator", model.safetensors), saved with ``save_pretrained`` and loaded back with
  ``from_pretrained`` before anything else uses it;
- ``hywu_reference.safetensors`` + ``hywu_reference.json``: the tensors recorded while the reference runs the
  four steps of ``wu.pipeline.WUPipeline.generate`` (CoT given), and a manifest describing each of them;
- ``reference_hywu_edit.png``: the image the reference returns with the generated LoRA.

WUPipeline itself loads the generator in bfloat16 and runs it under CUDA autocast, so the script repeats its
steps in float32 on CPU instead: the model class comes from ``inject_pg`` exactly as WUPipeline builds it, the
condition and the image come from the reference's ``generate_image``. The only patches are make_reference's
(``base.patch_reference``); nothing in the reference checkout is edited.
"""

import contextlib
import functools
import hashlib
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_reference as base

GENERATOR_DIR = HERE / "tiny_generator"
PNG_NAME = "reference_hywu_edit.png"
IMAGES = [str(HERE / "input_a.png"), str(HERE / "input_b.png")]

GENERATOR_SEED = 2026
PROJ_OUT_SCALE = 0.15
GENERATOR_CONFIG = {
    "token_dim": 32,
    "rank": 4,
    "alpha": 8,
    "input_dim": 64,
    "dim_accumulation": 2,
    "d_model": 32,
    "head_dim": 16,
    "num_base_model_layers": 3,
    "output_dim": 32,
    "num_pg_layers": 2,
    "prefix": "model.layers.",
    "pg_mapping": {
        "self_attn.qkv_proj": {"lora_A_dim": 64, "lora_B_dim": 128},
        "self_attn.o_proj": {"lora_A_dim": 64, "lora_B_dim": 64},
        "mlp.shared_mlp.gate_and_up_proj": {"lora_A_dim": 64, "lora_B_dim": 64},
        "mlp.shared_mlp.down_proj": {"lora_A_dim": 32, "lora_B_dim": 64},
        "mlp.experts": {
            "type": "grouped",
            "num_experts": 4,
            "sub_weights": {
                "w1": {"lora_A_dim": 64, "lora_B_dim": 32},
                "w2": {"lora_A_dim": 32, "lora_B_dim": 64},
                "w3": {"lora_A_dim": 64, "lora_B_dim": 32},
            },
        },
    },
}
WEIGHT_INIT = (
    f"torch.Generator().manual_seed({GENERATOR_SEED}), generator parameters in sorted state_dict key order, the "
    "tiny_model rule (make_reference.init_value): 1-D '*weight' (norms) = 1 + 0.1*randn, other 1-D (biases) = "
    "0.05*randn, >=2-D = randn * clamp(1/sqrt(fan_in), 0.02, 0.2); then every model.proj_out_A.* and "
    f"model.proj_out_B.* value multiplied by {PROJ_OUT_SCALE} (so the LoRA changes the model's prediction by a "
    "few tens of percent); float32"
)

# The edit run as WUPipeline.generate makes it (steps 2 and 4), in float32.
EDIT_RUN = {
    "prompt": base.EDIT_PROMPT, "cot_text": base.EDIT_COT, "seed": base.SEED, "image_size": base.IMAGE_SIZE,
    "use_system_prompt": base.SYSTEM_PROMPT_NAME, "bot_task": "img_ratio", "infer_align_image_size": False,
    "verbose": 0,
}

MIN_LORA_EFFECT, MAX_LORA_EFFECT = 0.2, 1.0
MIN_EXPERT_EFFECT = 0.05
MIN_W1_W3_SWAP_EFFECT = 0.02
MIN_IMAGE_PIXEL_DIFF = 10.0

NOTES = {
    "steps": {
        "1 (CoT)": "skipped: cot_text is given (inputs.edit_cot_text), as WUPipeline does when it gets one",
        "2 (condition)": "generate_image(..., bot_task img_ratio, return_hidden_states=True) with no LoRA set: "
                         "hidden_states[0][-1] of the img_ratio prefill (last decoder layer, before ln_f)",
        "3 (LoRA)": "ParameterGenerator(condition=condition) in float32 without autocast (WUPipeline: bfloat16 "
                    "weights under CUDA autocast)",
        "4 (image)": "generate_image(..., pg_state_dict=LoRA): the pipeline's own sampling loop, recorded through "
                     "make_reference's taps as hywu.sample.* (named like sample.* in reference.json)",
    },
    "lora_application": (
        "Linear targets (qkv_proj, o_proj, shared_mlp.gate_and_up_proj, shared_mlp.down_proj): "
        "y = W x + scale * (x @ lora_A[0].T) @ lora_B[0].T with lora_A (1, rank, in), lora_B (1, out, rank), "
        "scale = alpha / rank; the LoRA's batch axis (1) broadcasts over the CFG batch. Experts: routing is "
        "unchanged; for expert e, gate_and_up = [up | gate] (base layout [w3, w1]) gets "
        "[scale * x A3[e].T B3[e].T | scale * x A1[e].T B1[e].T] added before SwiGLU (up * silu(gate)), and "
        "down_proj gets scale * h A2[e].T B2[e].T; the LoRA's batch axis is squeezed, so one LoRA serves both CFG "
        "rows. lora_B of qkv_proj follows the fused qkv output layout (per KV head: its query heads, then k, v)."
    ),
    "where_lora_is_active": (
        "generate_image sets the LoRA only after the img_ratio prefill and the gen_image prepare_model_inputs, "
        "for the sampling generate() call, and clears it afterwards: the prefill (ratio token, and the HY-WU "
        "condition) never sees it. In sampling it acts on every token of both CFG rows (text, conditioning "
        "images, generated image) at step 0, so the prefix K/V cache reused by later steps is computed with it. "
        "ViT, VAE, embeddings and the image heads have no LoRA."
    ),
    "attributes_set_by_generate": (
        "The direct model calls (hywu.step.*) run after the sampling runs, because the forward reads "
        "num_image_tokens / num_special_tokens / post_token_len that generate() sets for the current sequence."
    ),
    "cpu_patches": "make_reference.patch_reference (see reference.json notes.cpu_patches); nothing else",
}


def log(message):
    print(f"[make_hywu_reference] {message}", flush=True)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def relative(a, b):
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def import_wu():
    from wu.config import ParameterGeneratorConfig
    from wu.generator import ParameterGenerator
    from wu.mixin import inject_pg

    return {"Config": ParameterGeneratorConfig, "Generator": ParameterGenerator, "inject_pg": inject_pg}


# ---------------------------------------------------------------------------------------------------------------
# The tiny parameter generator
# ---------------------------------------------------------------------------------------------------------------


def init_generator(generator):
    gen = torch.Generator().manual_seed(GENERATOR_SEED)
    state = generator.state_dict()
    values = {}
    for name in sorted(state):
        value = base.init_value(name, tuple(state[name].shape), gen)
        if name.startswith(("model.proj_out_A.", "model.proj_out_B.")):
            value = value * PROJ_OUT_SCALE
        values[name] = value.float()
    generator.load_state_dict(values, strict=True)


def build_generator(wu):
    """Save the random generator with save_pretrained and return the copy from_pretrained loads back."""
    built = wu["Generator"](wu["Config"](**GENERATOR_CONFIG))
    init_generator(built)
    GENERATOR_DIR.mkdir(exist_ok=True)
    for old in GENERATOR_DIR.iterdir():
        old.unlink()
    built.save_pretrained(str(GENERATOR_DIR), safe_serialization=True)
    assert sorted(p.name for p in GENERATOR_DIR.iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((GENERATOR_DIR / "config.json").read_text())
    assert saved["model_type"] == "parameter_generator", saved
    for key, value in GENERATOR_CONFIG.items():
        assert saved[key] == value, (key, saved.get(key))

    loaded, info = wu["Generator"].from_pretrained(
        str(GENERATOR_DIR), torch_dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, problems
    expected, got = built.state_dict(), loaded.state_dict()
    assert sorted(expected) == sorted(got)
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], expected[k]) for k in expected)
    loaded.eval()
    return loaded


def load_model(ref, wu, generator_config):
    """tiny_model with PG injection, as WUPipeline loads it (in float32)."""
    model_cls = wu["inject_pg"](generator_config, ref["model"].HunyuanImage3ForCausalMM)
    model, info = model_cls.from_pretrained(
        str(base.MODEL_DIR), torch_dtype=torch.float32, attn_implementation="sdpa", moe_impl="eager",
        output_loading_info=True,
    )
    problems = {k: v for k, v in info.items() if v}
    assert not problems, problems
    model.load_tokenizer(str(base.MODEL_DIR))
    model.enable_pg()
    model.eval()
    return model


def check_mapping(model, config):
    """Every pg_mapping entry has the dims of the tiny model's module it targets."""
    assert config.num_base_model_layers == model.config.num_hidden_layers
    assert config.input_dim == model.config.hidden_size
    for i in range(config.num_base_model_layers):
        for name, dims in config.pg_mapping.items():
            module = model.get_submodule(f"{config.prefix}{i}.{name}")
            if dims.get("type") != "grouped":
                assert (dims["lora_B_dim"], dims["lora_A_dim"]) == tuple(module.weight.shape), (i, name)
                continue
            assert dims["num_experts"] == len(module)
            for expert in module:
                up_out, up_in = expert.gate_and_up_proj.weight.shape
                down_out, down_in = expert.down_proj.weight.shape
                sub = dims["sub_weights"]
                for w in ("w1", "w3"):
                    assert (sub[w]["lora_B_dim"], sub[w]["lora_A_dim"]) == (up_out // 2, up_in), (i, w)
                assert (sub["w2"]["lora_B_dim"], sub["w2"]["lora_A_dim"]) == (down_out, down_in), i


# ---------------------------------------------------------------------------------------------------------------
# Running the model with a LoRA
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def lora_in_generate_image(model, lora):
    """Every model.generate_image call passes pg_state_dict=lora, as WUPipeline step 4 does."""
    model.generate_image = functools.partial(type(model).generate_image, model, pg_state_dict=lora)
    try:
        yield
    finally:
        del model.generate_image


def step_prediction(model, ref, latent, lora=None):
    """base.manual_forward on the edit sequence at STEP_TIMESTEP, with the LoRA set around it when given."""
    mi = base.prepare(model, ref, IMAGES, base.EDIT_PROMPT, base.EDIT_COT)
    if lora is None:
        return base.manual_forward(model, mi, latent, base.STEP_TIMESTEP, first_step=True)
    model.set_pg_state_dict(lora)
    try:
        prediction = base.manual_forward(model, mi, latent, base.STEP_TIMESTEP, first_step=True)
        unused = [key for key, used in model._activated_map.items() if not used]
    finally:
        model.clear_pg_state_dict()
    assert not unused, unused
    return prediction


def without_expert_lora(lora):
    return {k: torch.zeros_like(v) if ".mlp.experts." in k else v for k, v in lora.items()}


def with_w1_w3_swapped(lora):
    other = {"w1": "w3", "w3": "w1"}
    out = {}
    for key, value in lora.items():
        m = re.fullmatch(r"(.*\.mlp\.experts\.)(w[13])(\.lora_[AB])", key)
        out[key] = lora[f"{m[1]}{other[m[2]]}{m[3]}"] if m else value
    return out


def lora_what(key):
    if key == "scale":
        return "LoRA scale alpha / rank (0-d)"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.lora_([AB])", key)
    layer, target, factor = m.groups()
    axes = "(1, rank, in)" if factor == "A" else "(1, out, rank)"
    if ".experts." in key:
        axes = axes.replace("(1, ", "(1, expert, ")
    return f"generated lora_{factor} for {target} of decoder layer {layer}, {axes}"


# ---------------------------------------------------------------------------------------------------------------


def main():
    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    ref = base.import_reference()
    wu = import_wu()
    rec = base.Recorder()
    base.patch_reference(ref, rec)
    from safetensors.torch import load_file, save_file

    existing = load_file(str(HERE / "reference.safetensors"))
    matches = {}
    measured = {}

    generator = build_generator(wu)
    model = load_model(ref, wu, generator.config)
    check_mapping(model, generator.config)
    log("tiny_generator saved and reloaded; tiny_model loaded with PG injection")

    # Step 2: the condition, from the img_ratio prefill without LoRA.
    with torch.no_grad():
        condition = model.generate_image(image=IMAGES, return_hidden_states=True, **EDIT_RUN)
    rec.put("hywu.condition", condition, "WUPipeline step 2: generate_image(..., return_hidden_states=True) = "
            "hidden_states[0][-1] of the img_ratio prefill (last decoder layer, before ln_f), no LoRA")
    matches["condition_vs_condition.hidden_states"] = torch.equal(condition, existing["condition.hidden_states"])
    assert matches["condition_vs_condition.hidden_states"]

    # Step 3: the LoRA.
    with torch.no_grad():
        lora = generator(condition=condition)
    assert all(torch.isfinite(v).all() for v in lora.values())
    b_means = {k: v.abs().mean().item() for k, v in lora.items() if k.endswith("lora_B")}
    measured["lora_B_min_abs_mean"] = min(b_means.values())
    measured["lora_A_min_abs_mean"] = min(v.abs().mean().item() for k, v in lora.items() if k.endswith("lora_A"))
    assert measured["lora_B_min_abs_mean"] > 1e-2, b_means
    for key, value in lora.items():
        rec.put(f"hywu.lora.{key}", value, lora_what(key))
    log(f"condition {tuple(condition.shape)} -> {len(lora) - 1} LoRA factors")

    # Step 4: the image with the LoRA, then the same run without it (must reproduce reference_edit.png).
    run_info = {"sampling": {}}
    with lora_in_generate_image(model, lora):
        taps = base.stage_sample(model, ref, rec, run_info, "hywu.sample", base.EDIT_PROMPT, IMAGES, base.EDIT_COT,
                                 PNG_NAME)
    prefill = [f for f in taps["forwards"] if f["mode"] == "gen_text"]
    matches["hywu_run_ratio_prefill_logits_vs_condition.last_logits"] = torch.equal(
        prefill[0]["last_logits"], existing["condition.last_logits"])
    matches["hywu_run_initial_noise_vs_sample.initial_noise"] = torch.equal(
        rec.tensors["hywu.sample.initial_noise"], existing["sample.initial_noise"])
    rec.active = {}
    with torch.no_grad():
        _, samples = model.generate_image(image=IMAGES, **EDIT_RUN)
    plain, rec.active = rec.active, None
    base_pixels = np.asarray(samples[0])
    matches["base_run_pixels_vs_reference_edit.png"] = np.array_equal(
        base_pixels, np.asarray(Image.open(HERE / "reference_edit.png").convert("RGB")))
    matches["base_run_final_latents_vs_sample.final_latents"] = torch.equal(
        plain["steps"][-1]["latents"], existing["sample.final_latents"])
    assert all(matches.values()), matches
    hywu_pixels = np.asarray(Image.open(HERE / PNG_NAME).convert("RGB"))
    measured["image_mean_abs_pixel_diff_vs_reference_edit"] = float(
        np.abs(hywu_pixels.astype(np.int64) - base_pixels.astype(np.int64)).mean())
    measured["final_latents_relative_diff_vs_base"] = relative(
        rec.tensors["hywu.sample.final_latents"], existing["sample.final_latents"])
    assert measured["image_mean_abs_pixel_diff_vs_reference_edit"] > MIN_IMAGE_PIXEL_DIFF, measured
    log("sampling with and without the LoRA")

    # One direct denoising step (after the sampling runs: see NOTES["attributes_set_by_generate"]).
    channels = model.config.vae["latent_channels"]
    latent = torch.randn((1, channels, 16, 16), generator=torch.Generator().manual_seed(7))
    full = step_prediction(model, ref, latent, lora)
    plain_step = step_prediction(model, ref, latent)
    no_expert = step_prediction(model, ref, latent, without_expert_lora(lora))
    swapped = step_prediction(model, ref, latent, with_w1_w3_swapped(lora))
    rec.put("hywu.step.latent", latent, "fixed latent (torch.Generator seed 7 randn), fed to both CFG rows; equals "
            "step.latent of reference.safetensors")
    rec.put("hywu.step.timestep", torch.tensor([base.STEP_TIMESTEP]), "model timestep t = 1000*sigma, both rows")
    rec.put("hywu.step.prediction", full, "diffusion_prediction with the LoRA set (set_pg_state_dict, then "
            "prepare_inputs_for_generation + forward, first_step=True): (2, C, 16, 16), rows [cond, uncond]")
    rec.put("hywu.step.prediction_base", plain_step, "the same call without LoRA (= step.prediction of "
            "reference.safetensors)")
    rec.put("hywu.step.prediction_no_expert_lora", no_expert, "the same call with every mlp.experts.* LoRA entry "
            "replaced by zeros (the non-expert LoRA entries kept)")
    matches["step_latent_vs_step.latent"] = torch.equal(latent, existing["step.latent"])
    diff = (plain_step - existing["step.prediction"]).abs().max().item()
    matches["step_prediction_base_vs_step.prediction"] = {
        "bitwise": torch.equal(plain_step, existing["step.prediction"]), "max_abs_diff": diff}
    assert matches["step_latent_vs_step.latent"] and diff <= 1e-6, matches
    measured["step_lora_vs_base"] = relative(full, plain_step)
    measured["step_lora_vs_base_per_row"] = [relative(full[r], plain_step[r]) for r in range(2)]
    measured["step_no_expert_lora_vs_full"] = relative(no_expert, full)
    measured["step_w1_w3_swapped_vs_full"] = relative(swapped, full)
    for key, value in measured.items():
        log(f"{key}: {value}")
    assert MIN_LORA_EFFECT <= measured["step_lora_vs_base"] <= MAX_LORA_EFFECT, measured
    assert measured["step_no_expert_lora_vs_full"] >= MIN_EXPERT_EFFECT, measured
    assert measured["step_w1_w3_swapped_vs_full"] >= MIN_W1_W3_SWAP_EFFECT, measured
    log("one denoising step with, without and with altered LoRA")

    out = HERE / "hywu_reference.safetensors"
    save_file(dict(sorted(rec.tensors.items())), str(out), metadata={"format": "pt"})
    files = sorted(GENERATOR_DIR.iterdir()) + [out, HERE / PNG_NAME]
    inputs_used = sorted(base.MODEL_DIR.iterdir()) + [Path(p) for p in IMAGES]
    inputs_used += [HERE / "reference.safetensors", HERE / "reference_edit.png"]
    manifest = {
        "about": ("HY-WU reference tensors, recorded by make_hywu_reference.py while the public reference "
                  "(Tencent-Hunyuan/HY-WU, package wu, transformers 4.57.1) ran the steps of WUPipeline.generate on "
                  "CPU in float32: the random tiny parameter generator tiny_generator/ generates a LoRA for the "
                  "random tiny checkpoint tiny_model/ from the edit condition, and the LoRA'd model samples the "
                  "edit image."),
        "inputs": {"images": [Path(p).name for p in IMAGES], "edit_prompt": base.EDIT_PROMPT,
                   "edit_cot_text": base.EDIT_COT, "seed": base.SEED, "image_size": base.IMAGE_SIZE,
                   "system_prompt": base.SYSTEM_PROMPT_NAME, "bot_task": "img_ratio",
                   "infer_align_image_size": False, "step_timestep": base.STEP_TIMESTEP,
                   "step_latent": "torch.Generator().manual_seed(7) randn (1, 8, 16, 16)",
                   "sha256": {p.relative_to(HERE).as_posix(): sha256(p) for p in inputs_used}},
        "generator": {"folder": "tiny_generator", "config": GENERATOR_CONFIG, "weight_init": WEIGHT_INIT,
                      "num_parameters": sum(p.numel() for p in generator.parameters()),
                      "lora_A_token_count": int(generator.lora_A_token_count),
                      "lora_B_token_count": int(generator.lora_B_token_count), "lora_scale": lora["scale"].item()},
        "sampling": run_info["sampling"],
        "measured": measured,
        "thresholds": {"step_lora_vs_base": [MIN_LORA_EFFECT, MAX_LORA_EFFECT],
                       "step_no_expert_lora_vs_full": MIN_EXPERT_EFFECT,
                       "step_w1_w3_swapped_vs_full": MIN_W1_W3_SWAP_EFFECT,
                       "image_mean_abs_pixel_diff_vs_reference_edit": MIN_IMAGE_PIXEL_DIFF},
        "measured_definition": "relative diff of a vs b = max|a - b| / max|b| (over all elements)",
        "matches_existing_reference": matches,
        "notes": NOTES,
        "tensors": dict(sorted(rec.entries.items())),
        "files_sha256": {p.relative_to(HERE).as_posix(): sha256(p) for p in files},
    }
    (HERE / "hywu_reference.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    log(f"wrote {out} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
