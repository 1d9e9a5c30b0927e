"""The HY-WU nodes called in-process as ComfyUI calls them (execute with widget values and upstream outputs)."""
import pytest
import torch

from hywu_core.tiny_editor.backbone import load_demo_checkpoint
from hywu_core.tiny_editor.family import build_family_files

FAMILY = "hywu_demo"


@pytest.fixture(scope="module")
def models(pack, tmp_path_factory):
    """A family in temporary model folders that ComfyUI's folder_paths searches first."""
    import folder_paths

    root = tmp_path_factory.mktemp("models")
    files = build_family_files(root, name=FAMILY, lora_std=0.05)
    (root / "loras").mkdir()
    saved = {}
    for name in ("checkpoints", "hywu", "hywu_encoders", "loras"):
        saved[name] = folder_paths.folder_names_and_paths[name]
        paths, extensions = saved[name]
        folder_paths.folder_names_and_paths[name] = ([str(root / name)] + paths, extensions)
    yield root, files
    folder_paths.folder_names_and_paths.update(saved)


@pytest.fixture(scope="module")
def outputs(pack, models):
    """Encoder, generator, a 2-item condition and its generated LoRA, through the nodes."""
    nodes = pack.nodes
    encoder = nodes.HYWULoadConditionEncoder.execute(encoder=FAMILY, device="cpu", dtype="float32").result[0]
    generator = nodes.HYWULoadGenerator.execute(generator=f"{FAMILY}.safetensors", device="cpu").result[0]
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    condition = nodes.HYWUEncodeCondition.execute(encoder=encoder, image=images,
                                                  instruction="brighten\ndarken").result[0]
    generated = nodes.HYWUGenerateLoRA.execute(generator=generator, condition=condition)
    return encoder, generator, images, condition, generated


def test_loaders_list_their_model_folders(pack, models):
    encoder_options = pack.nodes.HYWULoadConditionEncoder.GET_SCHEMA().inputs[0].options
    assert FAMILY in encoder_options
    checkpoint_options = pack.nodes.HYWUDemoCheckpointLoader.GET_SCHEMA().inputs[0].options
    assert f"{FAMILY}.safetensors" in checkpoint_options
    with pytest.raises(ValueError, match="points outside the model folder"):
        pack.nodes.HYWULoadConditionEncoder.execute(encoder="../hywu", device="cpu", dtype="float32")


def test_condition_has_one_item_per_image_with_references(pack, outputs):
    encoder, _, images, condition, _ = outputs
    assert condition.batch_size == 2 and condition.instructions == ("brighten", "darken")
    assert condition.sources[0] != condition.sources[1]
    reference = torch.rand(1, 64, 64, 3)
    with_reference = pack.nodes.HYWUEncodeCondition.execute(encoder=encoder, image=images, instruction="brighten",
                                                            reference_1=reference).result[0]
    assert with_reference.tokens.shape[1] > condition.tokens.shape[1]
    assert with_reference.instructions == ("brighten", "brighten")


def test_generate_shows_per_layer_norms(outputs):
    generated = outputs[4]
    lora = generated.result[0]
    summary = generated.ui["hywu_norms"][0]
    assert lora.batch_size == 2 and len(summary["items"]) == 2
    assert summary["layers"] == [block.prefix for block in lora.bundle.spec.blocks]
    assert all(value > 0 for value in summary["mean"])
    assert lora.items[1]["instruction"] == "darken" and lora.items[1]["generator"] == f"{FAMILY}.safetensors"


def test_generator_is_a_model_comfyui_loads_to_run_and_unloads_when_memory_is_needed(pack, models, outputs):
    """Load Generator hands ComfyUI a ModelPatcher: Generate loads it through load_models_gpu, a cached
    generation does not load it, and ComfyUI's free_memory (what loading a backbone calls) unloads it."""
    import comfy.model_management as mm

    encoder, patcher, images, condition, generated = outputs
    nodes = pack.nodes
    assert patcher.model.source == f"{FAMILY}.safetensors"
    assert any(loaded is patcher for loaded in mm.loaded_models())
    mm.free_memory(2 ** 60, patcher.load_device)
    assert not any(loaded is patcher for loaded in mm.loaded_models())
    cached = nodes.HYWUGenerateLoRA.execute(generator=patcher, condition=condition).result[0]
    assert cached.bundle is generated.result[0].bundle
    assert not any(loaded is patcher for loaded in mm.loaded_models())
    fresh = nodes.HYWUEncodeCondition.execute(encoder=encoder, image=images.flip(1), instruction="brighten").result[0]
    again = nodes.HYWUGenerateLoRA.execute(generator=patcher, condition=fresh).result[0]
    assert any(loaded is patcher for loaded in mm.loaded_models())
    with torch.no_grad():
        expected = patcher.model(fresh)
    assert all(torch.equal(again.bundle.B[p], expected.B[p]) for p in expected.B)


def test_lora_model_and_saved_file_load_through_the_stock_loader(pack, models, outputs):
    import comfy.lora
    import comfy.sd
    import comfy.utils
    from safetensors import safe_open

    root, files = models
    lora = outputs[4].result[0]
    model, _, _ = load_demo_checkpoint(files.backbone)
    lora_model = pack.nodes.HYWULoRAToLoraModel.execute(lora=lora, index=1).result[0]
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora_model, 1.0, 0)
    adapted = len(lora.bundle.spec.module_paths())
    assert len(patched.patches) == adapted > 0

    saved = pack.nodes.HYWUSaveLoRA.execute(lora=lora, index=1, filename_prefix="hywu/frozen")
    name = saved.result[0]
    path = root / "loras" / name
    assert name.startswith("hywu/frozen_") and path.is_file()
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert metadata["hywu.instruction"] == "darken" and metadata["hywu.source_sha256"] == lora.items[1]["source"]
    from_file = comfy.utils.load_torch_file(str(path), safe_load=True)
    assert from_file.keys() == lora_model.keys()
    assert all(torch.equal(from_file[k], lora_model[k]) for k in from_file)
    with pytest.raises(ValueError, match="leaves the LoRA folder"):
        pack.nodes.HYWUSaveLoRA.execute(lora=lora, index=0, filename_prefix="../../escape")
    with pytest.raises(ValueError, match="index 2 is out of range: this HYWU_LORA holds 2 items"):
        pack.nodes.HYWULoRAToLoraModel.execute(lora=lora, index=2)


def test_tool_nodes_keep_provenance(pack, outputs):
    lora = outputs[4].result[0]
    nodes = pack.nodes
    average = nodes.HYWUAverageLoRA.execute(lora=lora, space="parameters").result[0]
    assert average.batch_size == 1 and "average of 2" in average.items[0]["derived"]
    shuffled = nodes.HYWUShuffleLoRA.execute(lora=lora, seed=0).result[0]
    assert [item["instruction"] for item in shuffled.items] == ["darken", "brighten"]
    blended = nodes.HYWUBlendLoRA.execute(lora_a=lora, lora_b=average, t=0.5, space="update").result[0]
    assert blended.batch_size == 2 and blended.bundle.rank == 2 * lora.bundle.rank
    bounded = nodes.HYWUBoundLoRA.execute(lora=lora, max_norm=1e-3)
    assert "scaled down" in bounded.ui["text"][0] and bounded.result[0].items[0]["bounded"] == 1e-3


def test_apply_merge_refuses_a_batch_of_different_loras(pack, models, outputs):
    model, _, _ = load_demo_checkpoint(models[1].backbone)
    with pytest.raises(ValueError, match="holds 2 different LoRAs: use mode 'dynamic'"):
        pack.nodes.HYWUApplyLoRA.execute(model=model, lora=outputs[4].result[0], strength=1.0, mode="merge")
    assert pack.nodes.HYWUApplyLoRA.execute(model=model, lora=outputs[4].result[0], strength=0.0,
                                            mode="auto").result[0] is model


def applied_as(patched) -> str:
    """How HYWUApplyLoRA put the LoRA on the model: "merge" (weight patches), "dynamic" (its forward wrapper)."""
    import comfy.patcher_extension

    wrappers = patched.wrappers.get(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {})
    dynamic = any(key.startswith("hywu_dynamic_") for key in wrappers)
    return {(True, False): "merge", (False, True): "dynamic"}.get((bool(patched.patches), dynamic), "neither or both")


def test_apply_auto_merges_one_shared_lora_and_goes_dynamic_otherwise(pack, models, outputs):
    nodes = pack.nodes
    encoder, generator, images, _, generated = outputs
    different = generated.result[0]
    single = nodes.HYWUAverageLoRA.execute(lora=different, space="parameters").result[0]
    same_twice = nodes.HYWUEncodeCondition.execute(encoder=encoder, image=images[:1].repeat(2, 1, 1, 1),
                                                   instruction="brighten").result[0]
    shared = nodes.HYWUGenerateLoRA.execute(generator=generator, condition=same_twice).result[0]
    assert (single.batch_size, shared.batch_size, different.batch_size) == (1, 2, 2)
    model, _, _ = load_demo_checkpoint(models[1].backbone)

    def apply(lora, mode):
        return applied_as(nodes.HYWUApplyLoRA.execute(model=model, lora=lora, strength=1.0, mode=mode).result[0])

    assert apply(shared, "merge") == "merge" and apply(shared, "dynamic") == "dynamic"
    assert apply(single, "auto") == "merge"
    assert apply(shared, "auto") == "merge"
    assert apply(different, "auto") == "dynamic"
