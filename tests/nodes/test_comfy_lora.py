"""Generated LoRAs applied through ComfyUI's ModelPatcher (hywu_core.comfyui.lora_patch), sampled through
comfy.sample as KSampler does, on the tiny demo backbone."""
import pytest
import torch

from hywu_core.comfyui.lora_patch import apply_dynamic, apply_merge
from hywu_core.lora import LoRABundle
from hywu_core.targets import TargetMismatchError, derive_targets
from hywu_core.tiny_editor.backbone import (
    DemoBackboneConfig,
    assemble_demo_backbone,
    build_demo_backbone,
    load_demo_checkpoint,
    save_demo_checkpoint,
)

STEPS = 3


@pytest.fixture(scope="module")
def backbone(comfy_lib, tmp_path_factory):
    path = tmp_path_factory.mktemp("backbone") / "demo.safetensors"
    save_demo_checkpoint(path, *build_demo_backbone(seed=0))
    return path, load_demo_checkpoint(path)


def random_bundle(model, n: int, seed: int, std: float = 0.05):
    spec = derive_targets(model.model.diffusion_model)
    g = torch.Generator().manual_seed(seed)
    A = {p: torch.randn(n, 4, m.d_in, generator=g) * std for p, m in spec.items()}
    B = {p: torch.randn(n, m.d_out, 4, generator=g) * std for p, m in spec.items()}
    return LoRABundle(spec, 4, 4.0, A, B)


def edit(model, clip, vae, images, prompt="make it brighter", seed=3, cfg=2.5, noise_index=None):
    """CLIPTextEncode -> InstructPixToPixConditioning -> KSampler (its noise, with the latent's
    batch_index when given, as LatentFromBatch sets it) -> VAEDecode."""
    import comfy.sample
    from comfy_extras.nodes_ip2p import InstructPixToPixConditioning

    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    positive, negative, latent = InstructPixToPixConditioning.execute(positive, negative, images, vae).result
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, None if noise_index is None else [noise_index])
    out = comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", positive, negative, samples,
                              seed=seed, disable_pbar=True)
    return vae.decode(out)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 64, 64, 3, generator=torch.Generator().manual_seed(seed))


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}


def same_weights(model, reference: dict) -> bool:
    now = model.model.diffusion_model.state_dict()
    return now.keys() == reference.keys() and all(torch.equal(now[k], reference[k]) for k in now)


def test_merge_equals_the_stock_loader_on_the_exported_file(backbone, tmp_path):
    import comfy.sd
    import comfy.utils
    from safetensors.torch import save_file

    _, (model, clip, vae) = backbone
    bundle = random_bundle(model, 2, seed=1)
    path = tmp_path / "lora.safetensors"
    save_file(bundle.to_comfy_state_dict(1), str(path))
    stock, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(path), safe_load=True), 0.8, 0)
    ours = apply_merge(model, bundle, item=1, strength=0.8)
    source = images(1)
    assert torch.equal(edit(ours, clip, vae, source), edit(stock, clip, vae, source))
    assert not torch.equal(edit(ours, clip, vae, source), edit(model, clip, vae, source))


def test_dynamic_equals_merge_for_one_shared_lora(backbone):
    _, (model, clip, vae) = backbone
    one = random_bundle(model, 1, seed=2)
    source = images(2, seed=5)
    merged = edit(apply_merge(model, one), clip, vae, source)
    dynamic = edit(apply_dynamic(model, one), clip, vae, source)
    assert (merged - dynamic).abs().max() < 1e-4


def test_each_row_under_cfg_gets_its_own_lora(backbone):
    """Three LoRAs over a batch of 3: each row equals a solo run."""
    _, (model, clip, vae) = backbone
    bundle = random_bundle(model, 3, seed=3)
    source = images(3, seed=6)
    together = edit(apply_dynamic(model, bundle), clip, vae, source, cfg=3.0)
    for row in range(3):
        solo = edit(apply_merge(model, bundle, item=row), clip, vae, source[row:row + 1], cfg=3.0, noise_index=row)
        assert (together[row] - solo[0]).abs().max() < 1e-4, f"row {row}"
    wrong = edit(apply_merge(model, bundle, item=1), clip, vae, source[:1], cfg=3.0, noise_index=0)
    assert (together[0] - wrong[0]).abs().max() > 1e-2


def test_a_lora_count_neither_one_nor_the_batch_is_refused(backbone):
    """Three LoRAs on four images would reuse LoRA 0 for image 3: refused, naming both counts."""
    _, (model, clip, vae) = backbone
    with pytest.raises(ValueError, match="dynamic mode got 3 LoRAs for a latent batch of 4"):
        edit(apply_dynamic(model, random_bundle(model, 3, seed=3)), clip, vae, images(4, seed=6), cfg=3.0)


def test_base_weights_after_twenty_runs_and_the_input_model_is_untouched(backbone):
    """After each run the input MODEL, loaded as its next consumer loads it, holds the base weights and
    no hooks; the shared module itself may hold the last merged LoRA until then (ComfyUI's loading)."""
    from hywu_core.comfyui.fingerprint import model_fingerprint, weights_fingerprint

    _, (model, clip, vae) = backbone
    base_weights = weights(model)
    base_digest = weights_fingerprint(model.model.diffusion_model)
    patches, wrappers = dict(model.patches), model.wrappers
    source = images(1, seed=7)
    base_output = edit(model, clip, vae, source)
    for run in range(20):
        bundle = random_bundle(model, 2, seed=100 + run)
        patched = apply_merge(model, bundle, item=run % 2) if run % 2 else apply_dynamic(model, bundle)
        edit(patched, clip, vae, images(2, seed=run))
        assert model_fingerprint(model) == base_digest, f"weights differ after run {run}"
        assert same_weights(model, base_weights), f"weights differ after run {run}"
        linears = [m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear)]
        assert not any(m._forward_hooks for m in linears)
    assert model.patches == patches and model.wrappers == wrappers
    assert torch.equal(edit(model, clip, vae, source), base_output)


def test_lowvram_partial_load_gives_the_full_load_result(backbone):
    """ComfyUI never loads partially on the CPU (load_models_gpu: vram state DISABLED), so the patcher is
    loaded by hand with a 1-byte budget: weights stay offloaded behind comfy.ops casts, and merge
    patches become LowVramPatch weight functions applied at cast time."""
    import comfy.model_management as mm
    import comfy.patcher_extension

    _, (model, _, _) = backbone
    bundle = random_bundle(model, 2, seed=8)
    g = torch.Generator().manual_seed(9)
    x, c_concat = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    context, t = torch.randn(2, 8, 64, generator=g), torch.tensor([0.7, 0.7])

    def call(patcher):
        options = {"wrappers": comfy.patcher_extension.copy_nested_dicts(patcher.wrappers), "cond_or_uncond": [0]}
        with torch.no_grad():
            return patcher.model.apply_model(x, t, c_concat=c_concat, c_crossattn=context,
                                             transformer_options=options)

    for mode, apply in (("merge", lambda m: apply_merge(m, bundle, item=1)), ("dynamic", lambda m: apply_dynamic(m, bundle))):
        patched = apply(model)
        mm.load_models_gpu([patched])
        full = call(patched)
        mm.unload_all_models()
        patched.load(mm.get_torch_device(), lowvram_model_memory=1)
        assert patched.model.model_lowvram and patched.model.model_loaded_weight_memory == 0
        assert (patched.lowvram_patch_counter() > 0) == (mode == "merge")
        low = call(patched)
        patched.detach()
        assert torch.equal(low, full), mode
        assert not torch.equal(full, call(model)), mode


def test_stacks_with_a_stock_lora_before_and_after(backbone):
    import comfy.sd

    _, (model, clip, vae) = backbone
    ours, other = random_bundle(model, 1, seed=10), random_bundle(model, 1, seed=11)
    stock = other.to_comfy_state_dict(0)
    source = images(1, seed=12)
    both_merged = apply_merge(apply_merge(model, ours), other)
    before, _ = comfy.sd.load_lora_for_models(model, None, stock, 1.0, 0)
    after, _ = comfy.sd.load_lora_for_models(apply_merge(model, ours), None, stock, 1.0, 0)
    expected = edit(both_merged, clip, vae, source)
    assert (edit(apply_merge(before, ours), clip, vae, source) - expected).abs().max() < 1e-5
    assert (edit(after, clip, vae, source) - expected).abs().max() < 1e-5
    assert (edit(apply_dynamic(before, ours), clip, vae, source) - expected).abs().max() < 1e-4


def test_a_stock_lora_stacks_after_dynamic_under_cfg(backbone):
    """LoraLoader's patches on top of HYWUApplyLoRA's dynamic clone: each row gets its own LoRA plus the stock one."""
    import comfy.sd

    _, (model, clip, vae) = backbone
    ours, other = random_bundle(model, 2, seed=14), random_bundle(model, 1, seed=15)
    source = images(2, seed=16)
    after, _ = comfy.sd.load_lora_for_models(apply_dynamic(model, ours), None, other.to_comfy_state_dict(0), 1.0, 0)
    together = edit(after, clip, vae, source, cfg=3.0)
    for row in range(2):
        solo = edit(apply_merge(apply_merge(model, ours, item=row), other), clip, vae, source[row:row + 1], cfg=3.0,
                    noise_index=row)
        assert (together[row] - solo[0]).abs().max() < 1e-4, f"row {row}"
    dynamic_only = edit(apply_dynamic(model, ours), clip, vae, source, cfg=3.0)
    assert (together - dynamic_only).abs().max() > 1e-2, "the stock LoRA should change the output"


def test_a_lora_for_another_backbone_names_the_mismatch(backbone):
    _, (model, _, _) = backbone
    other, _, _ = assemble_demo_backbone(*build_demo_backbone(seed=1, config=DemoBackboneConfig(num_blocks=4)))
    foreign = random_bundle(other, 1, seed=13)
    for apply in (apply_merge, apply_dynamic):
        with pytest.raises(TargetMismatchError, match="joint_blocks.2.context_block.attn.proj: missing"):
            apply(model, foreign)
