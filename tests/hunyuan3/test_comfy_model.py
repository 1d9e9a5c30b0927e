"""HunyuanImage-3 as a ComfyUI MODEL: ComfyUI's own sampler reproduces the reference pipeline's sampling.

comfy.sample.sample_custom (what SamplerCustomAdvanced runs) with the euler sampler, the "simple" schedule
(which, for a step count dividing 1000, gives the release's shifted sigmas exactly) and CFG, from the release's
initial noise, must land on the reference's final latents; the stock VAE Decode path on its image.
"""

import pytest
import torch

from tests.hunyuan3.helpers import DATA, reference_step_inputs


@pytest.fixture(scope="module")
def loaded(comfy_lib, tiny_model):
    from hywu_core.comfyui.hunyuan3 import load_model, load_vae

    return load_model(tiny_model), load_vae(tiny_model, dtype=torch.float32), tiny_model


def _conditioning(reference):
    """CONDITIONING pairs carrying the reference's own cond and uncond rows."""
    inputs = reference_step_inputs(reference, keys=("cond", "uncond"))
    return ([[torch.zeros(1, 1, 1), {"hunyuan3": inputs.select([0])}]],
            [[torch.zeros(1, 1, 1), {"hunyuan3": inputs.select([1])}]])


def test_comfy_sampler_reproduces_the_reference_latents_and_image(loaded, reference):
    import comfy.sample
    import comfy.samplers

    model, vae, folder = loaded
    positive, negative = _conditioning(reference)
    steps = int(folder.generation["diff_infer_steps"])
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    torch.testing.assert_close(sigmas, reference["sample.sigmas"], atol=1e-6, rtol=0)
    latent = torch.zeros(1, 8, 16, 16)
    samples = comfy.sample.sample_custom(
        model, reference["sample.initial_noise"], float(folder.generation["diff_guidance_scale"]),
        comfy.samplers.sampler_object("euler"), sigmas, positive, negative, latent, seed=0)
    expected = reference["sample.final_latents"]        # model space; sample_custom returns VAE space
    in_model_space = model.model.process_latent_in(samples)
    assert (in_model_space - expected).abs().max() < 1e-4 * expected.abs().max()
    image = vae.decode(samples)
    ref_image = ((reference["sample.decoded"][:, :, 0] + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert (image - ref_image).abs().max() < 1e-3


@pytest.mark.parametrize("weight_dtype", ["bf16", "fp8_e4m3fn"])
def test_weight_dtypes_load_and_sample_close_to_float32(comfy_lib, reference, weight_dtype):
    """ComfyUI's weight dtypes: the weights are stored narrow and cast per layer (comfy.ops), every step stays
    finite and the result stays near the float32 one (bf16 / fp8 rounding of the weights only)."""
    import comfy.sample
    import comfy.samplers

    from hywu_core.comfyui.hunyuan3 import load_model
    from hywu_core.hunyuan3.config import open_folder

    folder = open_folder(str(DATA / "tiny_model"))
    model = load_model(folder, weight_dtype)
    stored = {p.dtype for p in model.model.diffusion_model.model.layers.parameters()}
    assert {"bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}[weight_dtype] in stored
    positive, negative = _conditioning(reference)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4)
    samples = comfy.sample.sample_custom(model, reference["sample.initial_noise"], 2.5,
                                         comfy.samplers.sampler_object("euler"), sigmas, positive, negative,
                                         torch.zeros(1, 8, 16, 16), seed=0)
    ours = model.model.process_latent_in(samples)
    expected = reference["sample.final_latents"]
    assert torch.isfinite(ours).all()
    relative = (ours - expected).norm() / expected.norm()
    assert relative < {"bf16": 0.05, "fp8_e4m3fn": 0.3}[weight_dtype], float(relative)


def test_ksampler_path_reproduces_the_reference_given_its_noise(loaded, reference):
    """comfy.sample.sample is KSampler's body: with the reference's initial noise it lands on the same latents
    (KSampler itself draws its own noise from the seed, so in the canvas it gives another, equally valid image)."""
    import comfy.sample

    model, _, folder = loaded
    positive, negative = _conditioning(reference)
    samples = comfy.sample.sample(model, reference["sample.initial_noise"], 4, 2.5, "euler", "simple", positive,
                                  negative, torch.zeros(1, 8, 16, 16), seed=0)
    expected = reference["sample.final_latents"]
    assert (model.model.process_latent_in(samples) - expected).abs().max() < 1e-4 * expected.abs().max()


def test_text_to_image_request_samples_to_the_reference(loaded, reference):
    """The whole path the nodes take, in process: our request (no input image), the nodes' CONDITIONING and
    NOISE, ComfyUI's sampler -> the reference's text-to-image latents."""
    import comfy.sample
    import comfy.samplers

    from hywu_core.comfyui.hunyuan3 import ReferenceNoise, conditioning, request_of
    from hywu_core.hunyuan3.request import RequestBuilder
    from tests.hunyuan3.helpers import MANIFEST

    model, _, folder = loaded
    inputs = MANIFEST["inputs"]
    prepared = RequestBuilder.from_folder(folder).prepare(inputs["t2i_prompt"], [], cot_text=inputs["t2i_cot_text"],
                                                          system_prompt=inputs["system_prompt"],
                                                          image_size=inputs["image_size"], seed=inputs["seed"])
    positive, negative, latent = conditioning(prepared)
    noise = ReferenceNoise(request_of(positive)).generate_noise(latent)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4)
    samples = comfy.sample.sample_custom(model, noise, 2.5, comfy.samplers.sampler_object("euler"), sigmas,
                                         positive, negative, latent["samples"], seed=0)
    expected = reference["t2i.final_latents"]
    assert (model.model.process_latent_in(samples) - expected).abs().max() < 1e-4 * expected.abs().max()
