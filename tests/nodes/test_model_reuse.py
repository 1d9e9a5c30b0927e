"""Merge mode leaves model loading to ComfyUI, as a stock LoRA does, and the next consumer still sees
exactly its own weights: measured load / unload events per sampling run, and 50 mixed prompts on a
server against a fresh server."""
import contextlib
import time
from collections import Counter

import numpy as np
import pytest
import torch

from hywu_core.comfyui.lora_patch import apply_dynamic, apply_merge
from hywu_core.tools.comfy_server import ComfyServer

from test_comfy_lora import edit, images, random_bundle
from test_workflow import FAMILY, edit_prompt, images_of, run_images


@pytest.fixture(scope="module")
def backbone(comfy_lib, tmp_path_factory):
    from hywu_core.tiny_editor.backbone import build_demo_backbone, load_demo_checkpoint, save_demo_checkpoint

    path = tmp_path_factory.mktemp("backbone") / "demo.safetensors"
    save_demo_checkpoint(path, *build_demo_backbone(seed=0))
    return load_demo_checkpoint(path)


@contextlib.contextmanager
def model_events():
    """Counts what comfy.model_management does to the shared backbone while the block runs:
    "load" = ModelPatcher.load (weights patched onto the load device), "unload" = LoadedModel.model_unload
    (a patcher taken out of VRAM, weights restored), "restore" = ModelPatcher.unpatch_model putting
    backed-up base weights back. Measurement only: the pack's code calls none of these.
    ComfyUI 0.3.75 fact: these three are the only places a patcher's weights are patched or restored."""
    import comfy.model_management as mm
    import comfy.model_patcher as mp

    counts = Counter()
    originals = {(mp.ModelPatcher, "load"): mp.ModelPatcher.load,
                 (mm.LoadedModel, "model_unload"): mm.LoadedModel.model_unload,
                 (mp.ModelPatcher, "unpatch_model"): mp.ModelPatcher.unpatch_model}

    def load(self, *args, **kwargs):
        counts["load"] += 1
        return originals[mp.ModelPatcher, "load"](self, *args, **kwargs)

    def model_unload(self, *args, **kwargs):
        counts["unload"] += 1
        return originals[mm.LoadedModel, "model_unload"](self, *args, **kwargs)

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights and self.backup:
            counts["restore"] += 1
        return originals[mp.ModelPatcher, "unpatch_model"](self, device_to, unpatch_weights)

    mp.ModelPatcher.load, mm.LoadedModel.model_unload, mp.ModelPatcher.unpatch_model = load, model_unload, unpatch_model
    try:
        yield counts
    finally:
        for (cls, name), function in originals.items():
            setattr(cls, name, function)


def per_run(model, clip, vae, patchers: list) -> list[dict]:
    """Load / unload / restore events of each sampling run, one run per patcher, in order."""
    import comfy.model_management as mm

    mm.unload_all_models()
    edit(model, clip, vae, images(1, seed=1))      # the base model is loaded, as after any earlier prompt
    events = []
    for patcher in patchers:
        with model_events() as counts:
            edit(patcher, clip, vae, images(1, seed=2))
        events.append({key: counts[key] for key in ("load", "unload", "restore")})
    return events


def test_merge_mode_loads_like_a_stock_lora_and_never_forces_an_unload(backbone, capsys):
    """Measured per sampling run in merge mode. Before (an ON_CLEANUP callback unloaded the merged
    model after every run) each run cost 1 load + 1 unload, also when the same merged MODEL was
    sampled again; now ComfyUI keeps it loaded, as it does for a stock LoRA."""
    import comfy.sd

    model, clip, vae = backbone
    merged = apply_merge(model, random_bundle(model, 1, seed=20))
    same_model_again = per_run(model, clip, vae, [merged] * 4)
    new_lora_each_run = per_run(model, clip, vae, [apply_merge(model, random_bundle(model, 1, seed=30 + k))
                                                   for k in range(4)])
    stock = [comfy.sd.load_lora_for_models(model, None, random_bundle(model, 1, seed=40 + k).to_comfy_state_dict(0),
                                           1.0, 0)[0] for k in range(4)]
    stock_lora_each_run = per_run(model, clip, vae, stock)
    with capsys.disabled():
        print(f"\n[model events per run] same merged MODEL 4x: {same_model_again}"
              f"\n[model events per run] a new merged LoRA per run: {new_lora_each_run}"
              f"\n[model events per run] a new stock LoRA per run (LoraLoaderModelOnly's path): {stock_lora_each_run}")
    first = {"load": 1, "unload": 0, "restore": 0}  # after the base model: nothing patched to restore
    assert same_model_again == [first] + [{"load": 0, "unload": 0, "restore": 0}] * 3
    assert new_lora_each_run == stock_lora_each_run == [first] + [{"load": 1, "unload": 0, "restore": 1}] * 3


def test_the_base_model_after_merged_runs_samples_and_fingerprints_as_fresh(backbone):
    """The merged weights stay in the shared module after a merged run; the next consumer of the base
    MODEL still gets the base weights (ComfyUI restores them when it loads that patcher), and the
    fingerprint, which loads the MODEL as a consumer does, reports the base weights."""
    import comfy.model_management as mm

    from hywu_core.comfyui.fingerprint import model_fingerprint, weights_fingerprint

    model, clip, vae = backbone
    mm.unload_all_models()
    base_weights = weights_fingerprint(model.model.diffusion_model)
    source = images(1, seed=3)
    base_output = edit(model, clip, vae, source)
    merged = apply_merge(model, random_bundle(model, 1, seed=50))
    edit(merged, clip, vae, source)
    assert weights_fingerprint(model.model.diffusion_model) != base_weights, \
        "the shared module should still hold the merged LoRA (ComfyUI keeps the last patcher loaded)"
    merged_fingerprint = model_fingerprint(merged)
    assert model_fingerprint(model) == base_weights
    assert merged_fingerprint != base_weights
    assert model_fingerprint(merged) == merged_fingerprint
    assert torch.equal(edit(model, clip, vae, source), base_output)
    assert model_fingerprint(apply_dynamic(model, random_bundle(model, 2, seed=51))) == base_weights


# ---- 50 mixed prompts on a server, then the base model, against a fresh server ----------------------

def base_prompt(image: str) -> dict:
    """The base model sampled (no LoRA) plus its fingerprint."""
    prompt = edit_prompt([image], "make the image brighter", seed=7, steps=2)
    prompt["sampler"]["inputs"]["model"] = ["ckpt", 0]
    for node in ("encoder", "generator", "condition", "lora", "apply"):
        del prompt[node]
    prompt["hash"] = {"class_type": "HYWUModelFingerprint", "inputs": {"model": ["ckpt", 0]}}
    return prompt


def mixed_prompt(k: int, image: str, stock_lora: str) -> dict:
    """Prompt k of the mix: HY-WU merge, HY-WU dynamic, a stock LoRA (LoraLoaderModelOnly), and HY-WU
    merge stacked on the stock LoRA, each with its own seed and instruction."""
    instructions = ["make the image brighter", "blur the image", "turn it grayscale", "add noise", "sharpen it"]
    kind = k % 4
    prompt = edit_prompt([image], instructions[k % 5], seed=1000 + k, steps=2,
                         mode="dynamic" if kind == 1 else "merge")
    if kind in (2, 3):
        prompt["stock"] = {"class_type": "LoraLoaderModelOnly",
                           "inputs": {"model": ["ckpt", 0], "lora_name": stock_lora, "strength_model": 0.8}}
        if kind == 2:
            prompt["sampler"]["inputs"]["model"] = ["stock", 0]
        else:
            prompt["apply"]["inputs"]["model"] = ["stock", 0]
    return prompt


def server_loads(server) -> int:
    """Weight loads the server logged so far. ComfyUI 0.3.75 fact: ModelPatcher.load, which patches a
    model's weights onto its device, logs "loaded completely; ..." or "loaded partially; ..." each time."""
    return sum(line.startswith(("loaded completely", "loaded partially")) for line in server.log_text().splitlines())


def test_rerunning_a_merged_prompt_with_new_seeds_loads_no_weights(client, comfy_server, server_family, tmp_path,
                                                                  capsys):
    """A user re-queues the same edit with new seeds: ComfyUI's cache keeps the Apply node's MODEL, and
    merge mode no longer unloads it after each run, so only the first run loads weights (before: every run)."""
    from PIL import Image

    source = tmp_path / "rerun.png"
    Image.fromarray(np.random.default_rng(62).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    image = client.upload_image(source)
    loads = []
    for seed in range(4):
        before = server_loads(comfy_server)
        run_images(client, edit_prompt([image], "turn it grayscale", seed=500 + seed, mode="merge", steps=2))
        loads.append(server_loads(comfy_server) - before)
    with capsys.disabled():
        print(f"\n[same merged prompt, 4 seeds] weight loads logged per run: {loads}")
    assert loads[0] >= 1 and loads[1:] == [0, 0, 0], loads  # the first run may also load the text encoder


def test_after_fifty_mixed_prompts_the_base_model_gives_a_fresh_servers_image_and_fingerprint(
        client, comfy_server, server_family, comfyui_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    from hywu_core.comfyui.fingerprint import weights_fingerprint
    from hywu_core.tiny_editor.backbone import load_demo_checkpoint

    base_model = load_demo_checkpoint(server_family.backbone)[0]
    stock = random_bundle(base_model, 1, seed=60).to_comfy_state_dict(0)
    save_file(stock, str(comfy_server.models_dir / "loras" / "hywu_reuse_stock.safetensors"))
    source = tmp_path / "source.png"
    from PIL import Image
    Image.fromarray(np.random.default_rng(61).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    image = client.upload_image(source)

    started, loads_before = time.monotonic(), server_loads(comfy_server)
    outputs = [run_images(client, mixed_prompt(k, image, "hywu_reuse_stock.safetensors"))[0] for k in range(50)]
    mixed_seconds, loads = time.monotonic() - started, server_loads(comfy_server) - loads_before
    assert len({output.tobytes() for output in outputs}) > 40, "the prompts should differ in their outputs"
    after = client.run(base_prompt(image))

    with ComfyServer(comfyui_dir, workdir=tmp_path / "fresh", log_path=tmp_path / "fresh.log",
                     models_dir=comfy_server.models_dir) as fresh:
        from hywu_core.tools.comfy_client import ComfyClient

        fresh_client = ComfyClient(fresh.url)
        fresh_client.upload_image(source)
        fresh_entry = fresh_client.run(base_prompt(image))
        fresh_image = images_of(fresh_client, fresh_entry)[0]

    with capsys.disabled():
        print(f"\n[50 mixed prompts] {mixed_seconds:.1f} s, {loads} weight loads logged by the server")
    assert np.array_equal(images_of(client, after)[0], fresh_image)
    digest = after["outputs"]["hash"]["text"][0]
    assert digest == fresh_entry["outputs"]["hash"]["text"][0]
    assert digest == weights_fingerprint(base_model.model.diffusion_model)
