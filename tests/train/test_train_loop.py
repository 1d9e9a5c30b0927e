"""End-to-end training of a tiny generator through the tiny demo backbone (paper §3.6), in process.

60 AdamW steps (lr 1e-2, batch 4) on 16 procedural brighten/darken edits at 16x16. Stated result:
the backbone's own denoising loss on the training edits, with fixed noise and noise levels, is at
least 1.3x lower with the trained generator's LoRAs than for the base backbone (measured: 1.44x).
The final checkpoint loads with load_generator and through the HYWULoadGenerator node, and its
LoRA (merged through ComfyUI's stock LoRA path) changes what the backbone samples.
"""
import csv

import pytest
import torch

from hywu_core.condition import encode_condition
from hywu_core.encoders import load_condition_encoder
from hywu_core.generated_lora import generate_lora
from hywu_core.generator_files import load_generator
from hywu_core.tiny_editor.backbone import load_demo_checkpoint, sample
from hywu_core.train import load_config, train
from hywu_core.train.backbone import load_backbone
from hywu_core.train.data import EditDataset, load_image, read_manifest
from hywu_core.train.objective import evaluation_loss

from .helpers import write_config

REQUIRED_FALL = 1.3


@pytest.fixture(scope="module")
def trained(comfy_lib, tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_loop")
    config = load_config(write_config(folder, validation={"count": 2, "steps": 4, "every": 30}))
    result = train(config)
    return config, result


def test_loss_falls_and_outputs_are_written(trained):
    config, result = trained
    run = result.output
    assert [step for step, _ in result.losses] == list(range(1, 61))
    with open(run / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    assert [float(r["loss"]) for r in rows] == [loss for _, loss in result.losses]
    assert all(float(r["samples_per_s"]) > 0 and float(r["grad_norm"]) > 0 for r in rows)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000030.png", "step_0000060.png"]
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors")) == [
        f"step_00000{n}{suffix}" for n in (20, 40, 60) for suffix in (".safetensors", ".state.safetensors")]
    assert (run / "generator.safetensors").read_bytes() == (run / "checkpoints/step_0000060.safetensors").read_bytes()

    backbone = load_backbone(config)
    encoder = load_condition_encoder(run / "encoder")
    dataset = EditDataset(read_manifest(config.path("data")))
    generator = load_generator(run / "generator.safetensors").eval()
    base = evaluation_loss(backbone, encoder, None, dataset)
    tuned = evaluation_loss(backbone, encoder, generator, dataset)
    print(f"\ndenoising loss on the 16 training edits: base {base:.4f} -> trained {tuned:.4f} "
          f"({base / tuned:.2f}x lower); training loss {result.losses[0][1]:.4f} -> {result.losses[-1][1]:.4f}")
    assert base > REQUIRED_FALL * tuned


def test_checkpoint_loads_in_the_node_and_changes_the_sampled_edit(trained, pack):
    import comfy.sd
    import folder_paths

    config, result = trained
    run = result.output
    saved = folder_paths.folder_names_and_paths["hywu"]
    folder_paths.folder_names_and_paths["hywu"] = ([str(run / "checkpoints")], {".safetensors"})
    try:
        node = pack.nodes.HYWULoadGenerator
        assert "step_0000060.safetensors" in node.GET_SCHEMA().inputs[0].options
        generator = node.execute(generator="step_0000060.safetensors", device="cpu").result[0].model
    finally:
        folder_paths.folder_names_and_paths["hywu"] = saved
    assert generator.rank == 8 and generator.spec.num_layers == 2

    model, clip, vae = load_demo_checkpoint(run / "backbone.safetensors")   # what HYWUDemoCheckpointLoader loads
    record = read_manifest(config.path("data"))[0]
    source = load_image(record.source)[None]
    condition = encode_condition(load_condition_encoder(run / "encoder"), source, record.instruction)
    bundle = generate_lora(generator, condition).bundle
    assert any(bundle.B[p].abs().max() > 0 for p in bundle.B)          # training moved B off its zero init
    lora_model, _ = comfy.sd.load_lora_for_models(model, None, bundle.to_comfy_state_dict(0), 1.0, 0.0)
    base = sample(model, clip, vae, source, record.instruction, seed=3, steps=4)
    edited = sample(lora_model, clip, vae, source, record.instruction, seed=3, steps=4)
    again = sample(model, clip, vae, source, record.instruction, seed=3, steps=4)
    change = (edited - base).abs().mean().item()
    print(f"\nmean |edited - base| = {change:.4f} (pixels in [0, 1])")
    assert change > 1e-2
    assert torch.equal(again, base)                                       # the base model is untouched
