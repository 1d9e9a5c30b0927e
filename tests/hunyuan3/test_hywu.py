"""HY-WU on HunyuanImage-3.0-Instruct against the official pipeline, run by make_hywu_reference.py on the tiny
checkpoint with a tiny official-layout generator (tiny_generator/, B projections non-zero).

Each stage is compared with what the reference computed: the condition (the img_ratio prefill's last layer before
ln_f), the generator's LoRA, one denoising step with that LoRA (dynamic and merged), and the whole sampling run
through ComfyUI's sampler (final latents and image) in both modes. The expert LoRA is checked to matter: without
it, or with w1 and w3 swapped, the step no longer matches. A CFG batch of two edits with their own LoRAs gives each
edit its solo result.
"""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hywu_core.condition import Condition
from hywu_core.generated_lora import generate_lora
from hywu_core.generator_files import load_generator
from hywu_core.hunyuan3.inputs import StepInputs
from hywu_core.hunyuan3.request import RequestBuilder
from hywu_core.lora import LoRABundle
from hywu_core.lora_inject import PerRowLoRA
from tests.hunyuan3.helpers import DATA, reference_step_inputs

MANIFEST = json.loads((DATA / "hywu_reference.json").read_text())
TOLERANCE = 1e-5        # of the largest magnitude: float32 with other summation orders


@pytest.fixture(scope="module")
def hywu_ref():
    return load_file(str(DATA / "hywu_reference.safetensors"))


@pytest.fixture(scope="module")
def generator():
    return load_generator(DATA / "tiny_generator")


@pytest.fixture(scope="module")
def builder(tiny_model):
    return RequestBuilder.from_folder(tiny_model)


@pytest.fixture(scope="module")
def generated(generator, hywu_ref):
    return generate_lora(generator, Condition.from_tensors(hywu_ref["hywu.condition"]))


def request(builder, images=None):
    inputs = MANIFEST["inputs"]
    images = images or [Image.open(DATA / name) for name in inputs["images"]]
    return builder.prepare(inputs["edit_prompt"], images, cot_text=inputs["edit_cot_text"],
                           system_prompt=inputs["system_prompt"], image_size=inputs["image_size"], seed=inputs["seed"])


def assert_matches(ours, expected, tolerance=TOLERANCE):
    difference = (ours - expected).abs().max().item()
    assert difference <= tolerance * expected.abs().max().item(), (difference, expected.abs().max().item())


def step_with(transformer, bundle, hywu_ref, reference):
    """The reference's one step (fixed latent, t = 600, rows [cond, uncond]) with `bundle` injected per row."""
    x = hywu_ref["hywu.step.latent"].expand(2, -1, -1, -1)
    injection = PerRowLoRA(bundle.bound(transformer.expert_lora_slots))
    with torch.no_grad(), injection.inject(transformer, torch.zeros(2, dtype=torch.long)):
        return transformer.denoise(x, torch.full((2,), 600.0), reference_step_inputs(reference))


def test_condition_is_the_img_ratio_prefill_before_the_final_norm(builder, transformer, hywu_ref):
    prepared = request(builder)
    with torch.no_grad():
        states = transformer.prefill_states(prepared.ratio, torch.float32)
    assert states.shape == hywu_ref["hywu.condition"].shape
    assert_matches(states, hywu_ref["hywu.condition"])


def test_official_generator_writes_the_reference_lora(generated, hywu_ref):
    bundle = generated.bundle
    expected = {k.removeprefix("hywu.lora."): v for k, v in hywu_ref.items() if k.startswith("hywu.lora.")}
    ours = {f"{path}.lora_{name}": factors[path] for path in bundle.A for name, factors in
            (("A", bundle.A), ("B", bundle.B))}
    assert set(ours) == set(expected) - {"scale"}
    for key, value in ours.items():
        assert value.shape == expected[key].shape, key
        assert_matches(value, expected[key])
    assert bundle.scale == expected["scale"].item()
    b_means = [expected[k].abs().mean().item() for k in expected if k.endswith("lora_B")]
    assert min(b_means) > 0.01, "the reference generator's B projection must be non-zero for this test to mean anything"


def test_one_step_with_the_lora_matches_the_reference(transformer, generated, hywu_ref, reference):
    ours = step_with(transformer, generated.bundle, hywu_ref, reference)
    assert_matches(ours, hywu_ref["hywu.step.prediction"])
    change = (hywu_ref["hywu.step.prediction"] - hywu_ref["hywu.step.prediction_base"]).abs().max()
    assert change > 0.1 * hywu_ref["hywu.step.prediction_base"].abs().max(), "the LoRA must move the prediction"


def _with_experts(bundle, change):
    A, B = dict(bundle.A), dict(bundle.B)
    for path in bundle.A:
        if ".mlp.experts." in path:
            change(path, A, B)
    return LoRABundle(bundle.spec, bundle.rank, bundle.alpha, A, B)


def test_the_expert_lora_is_applied_and_its_halves_are_in_the_releases_order(transformer, generated, hywu_ref,
                                                                              reference):
    """Dropping the experts' LoRA, or writing w1 into the first half of gate_and_up (w3's) and w3 into the second,
    moves the step far outside the tolerance of the reference match."""
    def drop(path, A, B):
        B[path] = torch.zeros_like(B[path])

    def swap(path, A, B):
        other = {"w1": "w3", "w3": "w1"}.get(path.rsplit(".", 1)[1])
        if other:
            twin = f"{path.rsplit('.', 1)[0]}.{other}"
            A[path], B[path] = generated.bundle.A[twin], generated.bundle.B[twin]

    expected = hywu_ref["hywu.step.prediction"]
    no_experts = step_with(transformer, _with_experts(generated.bundle, drop), hywu_ref, reference)
    assert_matches(no_experts, hywu_ref["hywu.step.prediction_no_expert_lora"])
    for broken in (no_experts, step_with(transformer, _with_experts(generated.bundle, swap), hywu_ref, reference)):
        assert (broken - expected).abs().max() > 100 * TOLERANCE * expected.abs().max()


def test_a_lora_on_every_linear_gives_each_batch_row_its_own_router_and_experts_included(transformer, hywu_ref,
                                                                                          reference):
    """Our own generators may target every Linear of the blocks (derive_targets' default), the MoE router's wg
    included, which sees the flattened tokens: each token takes the LoRA of its batch row, so row i of a batch
    equals row i run alone with LoRA i."""
    from hywu_core.targets import derive_targets
    from tests.core.tiny_backbones import random_bundle

    spec = derive_targets(transformer, block_lists=["model.layers"])
    assert {"model.layers.0.mlp.gate.wg", "model.layers.0.mlp.experts.gate_and_up_proj"} <= set(spec.module_paths())
    bundle = random_bundle(spec, rank=4, batch=2, alpha=0.02, seed=3)
    x = hywu_ref["hywu.step.latent"].expand(2, -1, -1, -1)
    inputs, t = reference_step_inputs(reference), torch.full((2,), 600.0)
    with torch.no_grad():
        base = transformer.denoise(x, t, inputs)
        with PerRowLoRA(bundle).inject(transformer, torch.tensor([0, 1])):
            together = transformer.denoise(x, t, inputs)
        for i in range(2):
            with PerRowLoRA(bundle.item(i)).inject(transformer, torch.zeros(1, dtype=torch.long)):
                alone = transformer.denoise(x[i:i + 1], t[:1], inputs.select([i]))
            assert_matches(together[i:i + 1], alone)
            assert (together[i] - base[i]).abs().max() > 100 * TOLERANCE * base[i].abs().max()


@pytest.fixture(scope="module")
def comfy_model(comfy_lib, tiny_model):
    from hywu_core.comfyui.hunyuan3 import load_model, load_vae

    return load_model(tiny_model), load_vae(tiny_model, dtype=torch.float32)


def test_merged_lora_step_matches_the_reference(comfy_model, generated, hywu_ref, reference):
    """Merge: ComfyUI's own weight patches (the experts' fused gate_and_up halves included) on the loaded model."""
    import comfy.model_management as mm

    from hywu_core.comfyui.lora_patch import apply_merge

    model, _ = comfy_model
    merged = apply_merge(model, generated.bundle)
    mm.load_models_gpu([merged])
    x = hywu_ref["hywu.step.latent"].expand(2, -1, -1, -1)
    with torch.no_grad():
        ours = merged.model.diffusion_model.denoise(x, torch.full((2,), 600.0), reference_step_inputs(reference))
    assert_matches(ours, hywu_ref["hywu.step.prediction"])
    mm.load_models_gpu([model])
    with torch.no_grad():
        base = model.model.diffusion_model.denoise(x, torch.full((2,), 600.0), reference_step_inputs(reference))
    assert_matches(base, hywu_ref["hywu.step.prediction_base"])


def sample(model, positive, negative, noise, steps=4, cfg=2.5, sigmas=None):
    import comfy.sample
    import comfy.samplers

    if sigmas is None:
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    latent = torch.zeros_like(noise)
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas, positive,
                                      negative, latent, seed=0)


def pair(rows_cond, rows_uncond):
    return [[torch.zeros(1, 1, 1), {"hunyuan3": rows_cond}]], [[torch.zeros(1, 1, 1), {"hunyuan3": rows_uncond}]]


@pytest.mark.parametrize("mode", ["merge", "dynamic"])
def test_hywu_image_matches_the_reference_in_both_modes(comfy_model, generated, hywu_ref, reference, mode):
    """Same seed: ComfyUI's sampler with the generated LoRA lands on the reference's HY-WU latents and image, and
    merge and dynamic give the same image (a batch of one)."""
    from hywu_core.comfyui.lora_patch import apply

    model, vae = comfy_model
    inputs = reference_step_inputs(reference, keys=("cond", "uncond"))
    positive, negative = pair(inputs.select([0]), inputs.select([1]))
    noise = hywu_ref["hywu.sample.initial_noise"]
    samples = sample(apply(model, generated.bundle, mode=mode), positive, negative, noise)
    expected = hywu_ref["hywu.sample.final_latents"]
    assert_matches(model.model.process_latent_in(samples), expected, 1e-4)
    image = vae.decode(samples)
    reference_image = ((hywu_ref["hywu.sample.decoded"][:, :, 0] + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert (image - reference_image).abs().max() < 1e-3
    base = ((reference["sample.decoded"][:, :, 0] + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert (image - base).abs().mean() > 0.02, "the HY-WU image must differ from the base image"


def test_cfg_batch_of_two_edits_gives_each_its_solo_result(comfy_model, builder, generator):
    """Dynamic mode, two edits in one latent batch (model rows [cond a, cond b, uncond a, uncond b]), each with the
    LoRA generated from its own condition: each row equals that edit sampled alone."""
    from hywu_core.comfyui.hunyuan3 import conditioning, encode_condition
    from hywu_core.comfyui.lora_patch import apply_dynamic

    model, _ = comfy_model
    first = [Image.open(DATA / name) for name in MANIFEST["inputs"]["images"]]
    second = [Image.eval(first[0], lambda v: 255 - v), first[1].transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    edits = [request(builder, first), request(builder, second)]
    conditions = [encode_condition(model, conditioning(p)[0]) for p in edits]
    lora = generate_lora(generator, Condition.from_tensors(torch.cat([c.tokens for c in conditions])))
    experts_b = lora.bundle.B["model.layers.0.mlp.experts.w1"]
    assert (experts_b[0] != experts_b[1]).any()
    noise = torch.cat([p.initial_noise() for p in edits])
    together = sample(apply_dynamic(model, lora.bundle),
                      *pair(StepInputs.cat([p.cond for p in edits]), StepInputs.cat([p.uncond for p in edits])), noise)
    for i, p in enumerate(edits):
        alone = sample(apply_dynamic(model, lora.bundle.item(i)), *pair(p.cond, p.uncond), noise[i:i + 1])
        assert_matches(together[i:i + 1], alone, 1e-4)
    assert (together[0] - together[1]).abs().max() > 0.1


@pytest.mark.parametrize("mode", ["merge", "dynamic"])
def test_runs_sharing_one_sigmas_tensor_do_not_share_the_prefix_cache(comfy_model, generated, hywu_ref, reference,
                                                                     mode):
    """A workflow's base and HY-WU samplers take the same scheduler output (one sigmas tensor): the base run after
    the HY-WU run must recompute the prefix, not reuse the K/V the LoRA'd run cached."""
    import comfy.samplers

    from hywu_core.comfyui.lora_patch import apply

    model, _ = comfy_model
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4)
    inputs = reference_step_inputs(reference, keys=("cond", "uncond"))
    positive, negative = pair(inputs.select([0]), inputs.select([1]))
    noise = hywu_ref["hywu.sample.initial_noise"]
    hywu = sample(apply(model, generated.bundle, mode=mode), positive, negative, noise, sigmas=sigmas)
    base = sample(model, positive, negative, noise, sigmas=sigmas)
    assert_matches(model.model.process_latent_in(hywu), hywu_ref["hywu.sample.final_latents"], 1e-4)
    assert_matches(model.model.process_latent_in(base), reference["sample.final_latents"], 1e-4)
