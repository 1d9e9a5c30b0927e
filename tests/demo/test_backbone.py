"""The demo backbone (hywu_core.tiny_editor.backbone): one checkpoint file -> MODEL, CLIP, VAE that sample
through ComfyUI's stock path (CLIPTextEncode -> InstructPixToPixConditioning -> KSampler -> VAEDecode)."""
import pytest
import torch

from hywu_core.tiny_editor import backbone

STEPS = 4


@pytest.fixture(scope="module")
def demo(comfy_lib):
    return backbone


@pytest.fixture(scope="module")
def checkpoint(demo, tmp_path_factory):
    state_dict, config = demo.build_demo_backbone(seed=0)
    path = tmp_path_factory.mktemp("demo") / "demo_backbone.safetensors"
    demo.save_demo_checkpoint(path, state_dict, config)
    return path, state_dict, config


@pytest.fixture(scope="module")
def loaded(demo, checkpoint):
    return demo.load_demo_checkpoint(checkpoint[0])


def images(seed: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 64, 64, 3, generator=torch.Generator().manual_seed(seed))


def test_file_round_trip_is_bitwise_and_the_family_is_comfyui_sd3(demo, checkpoint, loaded):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sd

    path, state_dict, config = checkpoint
    model, clip, vae = loaded
    reloaded = demo.demo_state_dict(model, clip)
    assert reloaded.keys() == state_dict.keys()
    assert all(torch.equal(reloaded[k], state_dict[k]) for k in state_dict)
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert isinstance(model.model, comfy.model_base.SD3)
    assert isinstance(model.get_model_object("latent_format"), comfy.latent_formats.ChromaRadiance)
    assert model.model.concat_keys == ("concat_image",)
    assert model.model.diffusion_model.x_embedder.proj.in_channels == 6
    assert isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
    mmdit_params = sum(v.numel() for k, v in state_dict.items() if k.startswith(demo.MODEL_PREFIX))
    assert 1_000_000 < mmdit_params < 2_000_000
    print(f"\nMMDiT {mmdit_params} parameters, text encoder "
          f"{sum(v.numel() for v in state_dict.values()) - mmdit_params}, file {path.stat().st_size} bytes")


def test_build_is_deterministic_in_the_seed(demo, checkpoint):
    again, _ = demo.build_demo_backbone(seed=0)
    other, _ = demo.build_demo_backbone(seed=1)
    state_dict = checkpoint[1]
    assert all(torch.equal(again[k], state_dict[k]) for k in state_dict)
    assert all(v.isfinite().all() for v in state_dict.values())
    assert not torch.equal(other[demo.MODEL_PREFIX + "joint_blocks.0.x_block.attn.qkv.weight"],
                           state_dict[demo.MODEL_PREFIX + "joint_blocks.0.x_block.attn.qkv.weight"])


def test_sampling_is_deterministic_and_follows_source_and_prompt(demo, loaded):
    model, clip, vae = loaded
    source, other_source = images(1), images(2)
    edit = demo.sample(model, clip, vae, source, "blur the image", seed=7, steps=STEPS, cfg=2.5)
    assert edit.shape == (2, 64, 64, 3) and edit.isfinite().all()
    assert 0.0 <= edit.min() and edit.max() <= 1.0
    assert torch.equal(edit, demo.sample(model, clip, vae, source, "blur the image", seed=7, steps=STEPS, cfg=2.5))
    other_image = demo.sample(model, clip, vae, other_source, "blur the image", seed=7, steps=STEPS, cfg=2.5)
    other_seed = demo.sample(model, clip, vae, source, "blur the image", seed=8, steps=STEPS, cfg=2.5)
    other_prompt = demo.sample(model, clip, vae, source, "sharpen the image", seed=7, steps=STEPS, cfg=2.5)
    assert (other_image - edit).abs().mean() > 1e-2
    assert (other_seed - edit).abs().mean() > 1e-2
    # Untrained weights: a few changed bytes among 64 text tokens move the output by ~1e-4, never by 0.
    assert (other_prompt - edit).abs().mean() > 1e-5


def test_joint_blocks_hold_the_linear_layers_a_lora_targets(loaded, checkpoint):
    config = checkpoint[2]
    blocks = loaded[0].model.diffusion_model.joint_blocks
    assert len(blocks) == config.num_blocks
    linear_names = [{n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)} for block in blocks]
    image_side = {"x_block.attn.qkv", "x_block.attn.proj", "x_block.mlp.fc1", "x_block.mlp.fc2",
                  "x_block.adaLN_modulation.1"}
    text_side = {n.replace("x_block", "context_block") for n in image_side}
    assert all(names == image_side | text_side for names in linear_names[:-1])
    # ComfyUI's last joint block is "pre_only" on the text side: no attention output or MLP there.
    assert linear_names[-1] == image_side | {"context_block.attn.qkv", "context_block.adaLN_modulation.1"}


def test_stock_lora_loader_patches_the_joint_blocks(demo, loaded):
    import comfy.sd

    model, clip, vae = loaded
    width = model.model.diffusion_model.hidden_size
    g = torch.Generator().manual_seed(0)
    lora = {"diffusion_model.joint_blocks.1.x_block.attn.qkv.lora_down.weight": torch.randn(4, width, generator=g),
            "diffusion_model.joint_blocks.1.x_block.attn.qkv.lora_up.weight": torch.randn(3 * width, 4, generator=g)}
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    assert list(patched.patches) == ["diffusion_model.joint_blocks.1.x_block.attn.qkv.weight"]
    source = images(3, n=1)
    base = demo.sample(model, clip, vae, source, "darken", seed=0, steps=2, cfg=1.0)
    assert (demo.sample(patched, clip, vae, source, "darken", seed=0, steps=2, cfg=1.0) - base).abs().mean() > 1e-3
    assert torch.equal(demo.sample(model, clip, vae, source, "darken", seed=0, steps=2, cfg=1.0), base)


def test_half_precision_file_is_smaller_and_loads(demo, checkpoint, tmp_path):
    path, state_dict, config = checkpoint
    half = tmp_path / "half.safetensors"
    demo.save_demo_checkpoint(half, state_dict, config, dtype=torch.bfloat16)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    reloaded, _ = demo.read_demo_checkpoint(half)
    key = demo.TEXT_PREFIX + "shared.weight"
    assert torch.equal(reloaded[key], state_dict[key].to(torch.bfloat16))


def test_bad_files_are_refused_with_the_reason(demo, checkpoint, tmp_path):
    from safetensors.torch import save_file

    path, state_dict, config = checkpoint
    with pytest.raises(demo.DemoCheckpointError, match="does not exist"):
        demo.load_demo_checkpoint(tmp_path / "nothing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(demo.DemoCheckpointError, match="truncated or corrupted"):
        demo.load_demo_checkpoint(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(demo.DemoCheckpointError, match="not a readable .safetensors"):
        demo.load_demo_checkpoint(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(demo.DemoCheckpointError, match="not a HY-WU demo backbone"):
        demo.load_demo_checkpoint(foreign)
    wrong = dict(state_dict)
    del wrong[demo.TEXT_PREFIX + "shared.weight"]
    with pytest.raises(demo.DemoCheckpointError, match="missing text_encoders.demo_byt5.transformer.shared.weight"):
        demo.save_demo_checkpoint(tmp_path / "wrong.safetensors", wrong, config)
    narrow = type(config)(text_width=32, text_heads=1)
    with pytest.raises(demo.DemoCheckpointError, match="has shape"):
        demo.assemble_demo_backbone(state_dict, narrow)


def test_sample_refuses_channels_first_images(demo, loaded):
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        demo.sample(*loaded, torch.rand(1, 3, 64, 64), "blur", seed=0)


@pytest.mark.parametrize("prediction", backbone.PREDICTIONS)
def test_prediction_sets_what_the_mmdit_output_means(demo, prediction, tmp_path):
    """velocity: D = x_t - sigma out (SD3's rectified flow); x0: D = out; source_residual: D = source + out;
    source_affine: D = local_affine(source, out). The file keeps the choice, and the training objective's
    loss is taken on the raw output (on D itself for source_affine, whose D is not affine in out per pixel)."""
    from hywu_core.train.backbone import Backbone
    from hywu_core.train.objective import DenoisingObjective

    config = demo.DemoBackboneConfig(prediction=prediction)
    path = tmp_path / f"{prediction}.safetensors"
    demo.save_demo_checkpoint(path, demo.build_demo_backbone(seed=0, config=config)[0], config)
    model, clip, vae = demo.load_demo_checkpoint(path)
    assert demo.read_demo_checkpoint(path)[1].prediction == prediction
    g = torch.Generator().manual_seed(0)
    x_t, source = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    sigma = torch.tensor([0.8, 0.3])
    context = torch.randn(2, 64, config.text_width, generator=g)
    with torch.no_grad():
        denoised = model.model.apply_model(x_t, sigma, c_concat=source, c_crossattn=context)
        out = model.model.diffusion_model(torch.cat([x_t, source], 1), sigma * 1000, context=context)
    assert out.shape[1] == (backbone.AFFINE_CHANNELS if prediction == "source_affine" else 3)
    expected = {"velocity": lambda: x_t - sigma.view(-1, 1, 1, 1) * out, "x0": lambda: out,
                "source_residual": lambda: source + out,
                "source_affine": lambda: backbone.local_affine(source, out, config.patch_size)}[prediction]()
    assert denoised.shape == x_t.shape
    torch.testing.assert_close(denoised, expected, rtol=1e-5, atol=1e-5)

    bb = Backbone(model, clip, vae, "instruct_pix2pix").load()
    objective = DenoisingObjective(bb)
    images = torch.rand(2, 16, 16, 3, generator=g)
    x0, conds, noise, sigma = objective.inputs(images, images, ["blur", "blur"], [], [0, 1], 0)
    losses = objective.losses(None, conds, x0, noise, sigma)
    with torch.no_grad():
        for i in range(2):
            s = sigma[i:i + 1]
            x_t = bb.model_sampling.noise_scaling(s, noise[i:i + 1], x0[i:i + 1])
            c = conds[i]
            raw = model.model.diffusion_model(torch.cat([x_t, c["c_concat"].cond], 1), s * 1000,
                                              context=c["c_crossattn"].cond)
            if prediction == "source_affine":
                raw = backbone.local_affine(c["c_concat"].cond, raw, config.patch_size)
            target = {"velocity": noise[i:i + 1] - x0[i:i + 1], "x0": x0[i:i + 1], "source_affine": x0[i:i + 1],
                      "source_residual": x0[i:i + 1] - c["c_concat"].cond}[prediction]
            torch.testing.assert_close(losses[i], (raw - target).square().mean(), rtol=1e-4, atol=1e-6)


def test_config_without_prediction_is_velocity_and_an_unknown_one_is_refused(demo):
    import json

    old = json.loads(demo.DemoBackboneConfig().to_json())
    del old["prediction"]  # files written before the field existed
    assert demo.DemoBackboneConfig.from_json(json.dumps(old)).prediction == "velocity"
    with pytest.raises(demo.DemoCheckpointError, match="'eps' is not one of velocity, x0, source_residual"):
        demo.DemoBackboneConfig.from_json(json.dumps({**old, "prediction": "eps"}))


def test_a_velocity_model_sampling_patch_on_an_x0_backbone_is_refused_by_name(demo):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    config = demo.DemoBackboneConfig(prediction="source_residual")
    model, clip, vae = demo.assemble_demo_backbone(demo.build_demo_backbone(seed=0, config=config)[0], config)
    source = images(4, n=1)
    assert demo.sample(model, clip, vae, source, "darken", seed=0, steps=2, cfg=1.0).isfinite().all()
    patched = ModelSamplingSD3().patch(model, shift=3.0)[0]
    with pytest.raises(ValueError, match="predicts 'source_residual'.*ModelSamplingSD3.*remove that node"):
        demo.sample(patched, clip, vae, source, "darken", seed=0, steps=2, cfg=1.0)


def test_local_affine_writes_exposure_and_chroma_as_smooth_colour_transforms():
    """out = 0 keeps the source; a constant M and b (in the pixel VAE's [-1, 1]) are the suite's darken,
    brighten and chroma scaling exactly; M and b count only through their patch means, so variation
    inside a patch (the grid a per-pixel output leaves) cannot reach the image."""
    from hywu_core.demo.edits import LIGHT_AMOUNT, brighten, darken, scale_chroma
    from hywu_core.demo.images import LUMA

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 16, 16, 3, generator=g) * 0.8 + 0.1
    s = (2 * x - 1).permute(0, 3, 1, 2)                     # IMAGE -> the pixel VAE's latent

    def out(matrix, offset, detail=torch.zeros(3)):
        fields = torch.cat([detail, torch.as_tensor(matrix).flatten(), torch.as_tensor(offset)])
        return fields.view(1, -1, 1, 1).expand(2, -1, 16, 16).float()

    def image(latent):
        return ((latent + 1) / 2).permute(0, 2, 3, 1)

    a, eye = LIGHT_AMOUNT, torch.eye(3)
    torch.testing.assert_close(backbone.local_affine(s, torch.zeros(2, 15, 16, 16), 4), s, rtol=0, atol=0)
    torch.testing.assert_close(image(backbone.local_affine(s, out(-a * eye, [-a] * 3), 4)), darken(x))
    torch.testing.assert_close(image(backbone.local_affine(s, out(-a * eye, [a] * 3), 4)), brighten(x))
    luma = torch.tensor(LUMA)
    grey = 0.25 * eye + 0.75 * torch.ones(3, 1) * luma - eye
    torch.testing.assert_close(image(backbone.local_affine(s, out(grey, [0.0] * 3), 4)), scale_chroma(x, 0.25))

    fields = torch.randn(2, 15, 4, 4, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)
    wobble = torch.randn(2, 15, 16, 16, generator=g)
    wobble[:, 3:] -= torch.nn.functional.avg_pool2d(wobble[:, 3:], 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
    wobble[:, :3] = 0                                       # the detail channels are per pixel by design
    torch.testing.assert_close(backbone.local_affine(s, fields + wobble, 4), backbone.local_affine(s, fields, 4))
    with pytest.raises(ValueError, match=r"an output \(N, 15, H, W\)"):
        backbone.local_affine(s, torch.zeros(2, 3, 16, 16), 4)
