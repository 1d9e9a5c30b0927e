"""Training through a backbone that ComfyUI's own loaders read from files ([backbone] kind = "comfy").

The files are small but real, written by the fixture with seeded random weights:
- unet.safetensors: an InstructPix2Pix UNet of the SD1.5 family (8 input channels: the noisy latent and the
  source latent that InstructPixToPixConditioning concatenates). ComfyUI's detection of the family fixes
  model_channels = 320 and a 768-wide context; one resolution level, one res block, no middle block: 18.7M
  parameters. comfy.sd.load_diffusion_model detects it as SD15_instructpix2pix (EPS noise prediction, where
  the demo backbone is flow matching);
- clip_l.safetensors: a CLIP-L text encoder (fp16), the SD1.5 family's. It has the real size, 123.7M
  parameters: every text encoder that comfy.sd.load_clip detects has a fixed configuration;
- taesd.safetensors: a TAESD VAE (4 latent channels, 8x downsampling), as comfy.sd.VAE detects it;
- sd15_ip2p.safetensors: the same three in one SD1.5-layout checkpoint (model.diffusion_model.,
  cond_stage_model.transformer., first_stage_model.), for comfy.sd.load_checkpoint_guess_config.

Stated results (30 AdamW steps, lr 1e-2, batch 4, 16 brighten/darken edits at 32x32): the backbone's own
denoising loss on the training edits, with fixed noise and noise levels, is at least 1.15x lower with the
trained generator's LoRAs than for the base backbone (measured: 1.28x); the checkpoint file loads the same
backbone as the three separate files (the same losses, bit for bit); the files and the backbone's weights in
memory are bitwise unchanged by training, and the backbone holds no gradient. A VAE that ComfyUI does not
recognise (a `vae` file that is no VAE, a checkpoint without VAE weights) is refused when the backbone loads,
with a BackboneError that names the key (comfy.sd.VAE itself only logs a warning and fails at the first encode).
"""
import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hywu_core.generator_files import load_generator
from hywu_core.train import load_config, train
from hywu_core.train.backbone import BackboneError, load_backbone
from hywu_core.train.loop import Trainer
from hywu_core.train.objective import evaluation_loss

from .helpers import write_config

REQUIRED_FALL = 1.15
STEPS = 30
FILES = ("unet.safetensors", "clip_l.safetensors", "taesd.safetensors")
SEPARATE = {"kind": "comfy", "demo": None, "diffusion_model": "../unet.safetensors",
            "text_encoders": ["../clip_l.safetensors"], "text_encoder_type": "stable_diffusion",
            "vae": "../taesd.safetensors", "edit": "instruct_pix2pix"}
SETTINGS = dict(generator={"include": [r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$"]},
                data={"folder": "../data", "procedural": {"kind": "brighten_darken", "count": 16, "size": 32}},
                train={"steps": STEPS, "batch_size": 4, "lr": 1e-2, "warmup_steps": 2},
                validation={"count": 2, "steps": 2})


def random_weights(shapes: dict, seed: int, dtype=torch.float32) -> dict:
    """Seeded weights for a state dict's shapes: matrices and kernels ~ N(0, 1/fan_in), 1-D weights
    (norm scales) 1, biases 0, scalars 1 for *scale and 0 otherwise."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if len(shape) == 0:
            value = torch.tensor(float(key.endswith("scale")))
        elif len(shape) == 1:
            value = torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=generator) * (shape[1:].numel() ** -0.5)
        out[key] = value.to(dtype)
    return out


def shapes_of(module: torch.nn.Module) -> dict:
    return {key: value.shape for key, value in module.state_dict().items()}


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.fixture(scope="module")
def model_files(comfy_lib, tmp_path_factory):
    """The backbone files (module docstring) in a fresh folder, removed afterwards (~650 MB)."""
    import comfy.clip_model
    import comfy.ops
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    folder = tmp_path_factory.mktemp("comfy_backbone")
    unet = UNetModel(image_size=32, in_channels=8, model_channels=320, out_channels=4, num_res_blocks=[1],
                     channel_mult=(1,), num_heads=8, num_head_channels=-1, use_spatial_transformer=True,
                     transformer_depth=[1], transformer_depth_output=[1, 1], transformer_depth_middle=-2,
                     context_dim=768, use_linear_in_transformer=False, dtype=torch.float32, device="meta",
                     operations=comfy.ops.disable_weight_init)
    with open(os.path.join(comfy_lib.__path__[0], "sd1_clip_config.json")) as f:
        clip_config = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(clip_config, dtype=torch.float16, device="meta",
                                          operations=comfy.ops.manual_cast)
    parts = {"unet.safetensors": random_weights(shapes_of(unet), seed=1),
             "clip_l.safetensors": random_weights(shapes_of(clip), seed=2, dtype=torch.float16),
             "taesd.safetensors": random_weights(shapes_of(comfy.taesd.taesd.TAESD(latent_channels=4)), seed=3)}
    for name, state_dict in parts.items():
        save_file(state_dict, str(folder / name))
    prefixes = {"unet.safetensors": "model.diffusion_model.", "clip_l.safetensors": "cond_stage_model.transformer.",
                "taesd.safetensors": "first_stage_model."}
    save_file({prefixes[name] + key: value for name, state_dict in parts.items() for key, value in state_dict.items()},
              str(folder / "sd15_ip2p.safetensors"))
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def trained(model_files):
    """30 steps through the separate files; the Trainer (its backbone, encoder, data) and the files' hashes."""
    hashes = {name: sha256(model_files / name) for name in FILES}
    config = load_config(write_config(model_files / "separate", backbone=SEPARATE, **SETTINGS))
    trainer = Trainer(config).build()
    result = trainer.run()
    return trainer, result, hashes


def test_comfy_backbone_is_detected_frozen_and_trained(trained, model_files):
    import comfy.model_sampling

    trainer, result, hashes = trained
    backbone = trainer.backbone
    assert type(backbone.model.model).__name__ == "SD15_instructpix2pix"
    assert isinstance(backbone.model_sampling, comfy.model_sampling.EPS)
    assert [step for step, _ in result.losses] == list(range(1, STEPS + 1))
    assert (result.output / "samples" / f"step_{STEPS:07d}.png").is_file()

    assert {name: sha256(model_files / name) for name in FILES} == hashes
    on_file = load_file(str(model_files / "unet.safetensors"))
    in_memory = backbone.diffusion_model.state_dict()
    assert in_memory.keys() == on_file.keys()
    assert all(torch.equal(in_memory[k], on_file[k]) for k in on_file)
    assert all(not p.requires_grad and p.grad is None for p in backbone.diffusion_model.parameters())

    generator = load_generator(result.generator_file).eval()
    assert generator.spec.to_json() == trainer.spec.to_json() and generator.spec.num_layers == 3
    base = evaluation_loss(backbone, trainer.encoder, None, trainer.dataset)
    tuned = evaluation_loss(backbone, trainer.encoder, generator, trainer.dataset)
    print(f"\nSD1.5 InstructPix2Pix files: denoising loss on the 16 training edits: base {base:.4f} -> trained "
          f"{tuned:.4f} ({base / tuned:.2f}x lower)")
    assert base > REQUIRED_FALL * tuned


def test_checkpoint_loads_the_same_backbone(trained, model_files):
    checkpoint = {"kind": "comfy", "demo": None, "checkpoint": "../sd15_ip2p.safetensors"}
    config = load_config(write_config(model_files / "checkpoint", backbone=checkpoint,
                                      **{**SETTINGS, "train": {**SETTINGS["train"], "steps": 2}}))
    result = train(config)
    # Warmup makes the learning rate of step 1 the same in both runs, so the first two losses only depend
    # on the backbone (the data order, noise and generator initialisation come from the same seed).
    assert [loss for _, loss in result.losses] == [loss for _, loss in trained[1].losses[:2]]


def test_a_file_comfyui_does_not_read_as_a_vae_is_named(comfy_lib, model_files):
    config = load_config(write_config(model_files / "bad_vae", backbone={**SEPARATE, "vae": "../unet.safetensors"},
                                      **SETTINGS))
    with pytest.raises(BackboneError, match=r"backbone.vae = '../unet.safetensors': ComfyUI recognises no VAE"):
        load_backbone(config)


def test_a_checkpoint_without_a_vae_is_named(comfy_lib, model_files):
    full = load_file(str(model_files / "sd15_ip2p.safetensors"))
    save_file({k: v for k, v in full.items() if not k.startswith("first_stage_model.")},
              str(model_files / "no_vae.safetensors"))
    config = load_config(write_config(model_files / "no_vae", backbone={"kind": "comfy", "demo": None,
                                                                        "checkpoint": "../no_vae.safetensors"},
                                      **SETTINGS))
    with pytest.raises(BackboneError, match=r"backbone.checkpoint '../no_vae.safetensors' holds no VAE; name"):
        load_backbone(config)
