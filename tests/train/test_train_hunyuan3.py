"""Training our own generator on HunyuanImage-3.0-Instruct's own condition ([backbone] kind = "hunyuan3",
[encoder] backbone = "hunyuan3"), on the tiny checkpoint the reference code built (tests/data/hunyuan3).

Stated results (30 AdamW steps, lr 3e-2, batch 2, 2 brighten/darken edits, LoRA rank 8 on every layer's qkv and
o projections): the backbone's own denoising loss on the training edits, with fixed noise and noise levels, is
at least 1.05x lower with the trained generator's LoRAs than for the base backbone (measured: 1.07x; the tiny
model is random, so most of its loss is out of a LoRA's reach); the condition it trains on is
bitwise the one HYWU Encode Condition (HunyuanImage-3) computes from the Conditioning node's output; the
backbone's weights are bitwise unchanged and hold no gradient; the trained file loads through Load Generator
and its LoRA, applied to the loader node's MODEL, changes the sampled image.
"""
import hashlib
from pathlib import Path

import pytest
import torch

from hywu_core.train import load_config
from hywu_core.train.config import ConfigError
from hywu_core.train.loop import Trainer
from hywu_core.train.objective import evaluation_loss

from .helpers import write_config

TINY_MODEL = Path(__file__).resolve().parents[1] / "data" / "hunyuan3" / "tiny_model"
REQUIRED_FALL = 1.05
STEPS = 30
HUNYUAN3 = dict(backbone={"kind": "hunyuan3", "demo": None, "folder": str(TINY_MODEL)},
                encoder={"tiny": None, "backbone": "hunyuan3"},
                generator={"include": [r"self_attn\.(qkv_proj|o_proj)$"], "width": 32, "depth": 1, "heads": 2,
                           "rank": 8, "alpha": 8.0},
                data={"folder": "data", "procedural": {"kind": "brighten_darken", "count": 2, "size": 32}},
                train={"steps": STEPS, "batch_size": 2, "lr": 3e-2, "warmup_steps": 2},
                validation={"count": 1, "steps": 2})


def weights_digest(module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def trained(pack, tmp_path_factory):
    config = load_config(write_config(tmp_path_factory.mktemp("hunyuan3_train"), **HUNYUAN3))
    trainer = Trainer(config).build()
    before = weights_digest(trainer.backbone.diffusion_model)
    base = evaluation_loss(trainer.backbone, trainer.encoder, None, trainer.dataset)
    result = trainer.run()
    after = evaluation_loss(trainer.backbone, trainer.encoder, trainer.generator.eval(), trainer.dataset)
    print(f"\nL_edit on the training edits: base {base:.4f}, trained {after:.4f} ({base / after:.3f}x)")
    return trainer, result, before, base, after


def test_training_lowers_the_loss_and_leaves_the_backbone_alone(trained):
    trainer, result, before, base, after = trained
    assert [b.prefix for b in trainer.spec.blocks] == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert trainer.encoder.width == 64 and trainer.generator.config.cond_dim == 64
    assert base / after >= REQUIRED_FALL
    assert weights_digest(trainer.backbone.diffusion_model) == before
    assert all(p.grad is None and not p.requires_grad for p in trainer.backbone.diffusion_model.parameters())
    assert result.generator_file.is_file() and (result.output / "samples").is_dir()


def test_the_condition_is_the_one_the_nodes_compute(pack, trained):
    """What training reads is what HYWU Encode Condition (HunyuanImage-3) gives in ComfyUI for the same edit."""
    trainer = trained[0]
    record = trainer.dataset.batch([0], [0])
    nodes = pack.nodes
    positive, _, _ = nodes.HYWUHunyuanImage3Conditioning.execute(
        encoder=trainer.backbone.requests, prompt=record.instructions[0], image_1=record.source,
        system_prompt="en_unified", image_size="auto", seed=0).result
    node_condition = nodes.HYWUHunyuanImage3Condition.execute(model=trainer.backbone.model, positive=positive).result[0]
    tokens, mask = trainer.encoder.encode(record.source, record.instructions)
    assert mask.all() and torch.equal(tokens, node_condition.tokens)


def test_the_trained_generator_runs_in_comfyui(pack, trained):
    """Load Generator -> Generate LoRA -> Apply LoRA on the HunyuanImage-3 MODEL: the sampled image changes."""
    import comfy.sample
    import folder_paths

    trainer, result = trained[:2]
    nodes = pack.nodes
    record = trainer.dataset.batch([0], [0])
    positive, negative, latent = nodes.HYWUHunyuanImage3Conditioning.execute(
        encoder=trainer.backbone.requests, prompt=record.instructions[0], image_1=record.source,
        system_prompt="en_unified", image_size="auto", seed=0).result
    condition = nodes.HYWUHunyuanImage3Condition.execute(model=trainer.backbone.model, positive=positive).result[0]
    saved = folder_paths.folder_names_and_paths["hywu"]
    folder_paths.folder_names_and_paths["hywu"] = ([str(result.output)], {".safetensors"})
    try:
        generator = nodes.HYWULoadGenerator.execute(generator="generator.safetensors", device="cpu").result[0]
    finally:
        folder_paths.folder_names_and_paths["hywu"] = saved
    lora = nodes.HYWUGenerateLoRA.execute(generator=generator, condition=condition).result[0]
    patched = nodes.HYWUApplyLoRA.execute(model=trainer.backbone.model, lora=lora, strength=1.0,
                                          mode="auto").result[0]
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(0))

    def sample(model):
        return comfy.sample.sample(model, noise, 3, 2.0, "euler", "simple", positive, negative, latent["samples"],
                                   seed=0, disable_pbar=True)

    base, edited, base_again = sample(trainer.backbone.model), sample(patched), sample(trainer.backbone.model)
    assert (edited - base).abs().mean() > 1e-3 * base.abs().mean()
    assert torch.equal(base, base_again)


def test_a_target_of_another_size_than_its_source_is_named(trained):
    """The target must encode to the latent the backbone generates for the source (one ratio bucket)."""
    trainer = trained[0]
    record = trainer.dataset.batch([0], [0])
    wide = torch.rand(1, 32, 64, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="give source and target the same size"):
        trainer.objective.inputs(record.source, wide, record.instructions, [], [0], 0)


@pytest.mark.parametrize("sections, message", [
    ({"encoder": {"tiny": None, "backbone": "hunyuan3"}}, "needs backbone.kind = 'hunyuan3'"),
    ({**HUNYUAN3, "encoder": {"tiny": None, "backbone": "hunyuan3", "trainable": True}}, "encoder.trainable = false"),
    ({**HUNYUAN3, "encoder": {"tiny": None, "backbone": "flux"}}, "only 'hunyuan3' is built in"),
    ({**HUNYUAN3, "encoder": {"tiny": "siglip2", "backbone": "hunyuan3"}}, "set exactly one of"),
    ({**HUNYUAN3, "backbone": {"kind": "hunyuan3", "demo": None}}, "needs backbone.folder"),
    ({**HUNYUAN3, "backbone": {"kind": "hunyuan3", "demo": None, "folder": "x", "weight_dtype": "fp8_e5m2"}},
     "HunyuanImage-3 loads as default"),
])
def test_config_mistakes_are_named(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, **sections))
