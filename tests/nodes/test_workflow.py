"""The HY-WU nodes in a real ComfyUI server with a tiny family built here (paper §3.3 as a graph):
Load Image -> Encode Condition -> Generate LoRA -> Apply LoRA -> KSampler -> VAE Decode -> Save Image.
"""
import io as bytes_io

import numpy as np
import pytest
from PIL import Image

from hywu_core.tools.comfy_client import PromptFailed

FAMILY = "hywu_demo"
INSTRUCTIONS = ["make the image brighter", "blur the image", "turn it grayscale", "add noise", "sharpen it"]


@pytest.fixture(scope="module")
def family(server_family):
    return server_family


@pytest.fixture(scope="module")
def upload(client, tmp_path_factory):
    """upload(seed, name=None) -> the LoadImage name of a random 64x64 image (same seed, same pixels)."""
    folder = tmp_path_factory.mktemp("images")

    def put(seed: int, name: str | None = None) -> str:
        pixels = np.random.default_rng(seed).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        path = folder / (name or f"source_{seed}.png")
        Image.fromarray(pixels).save(path)
        return client.upload_image(path)

    return put


def edit_prompt(images: list[str], instruction: str, seed: int = 1, mode: str = "auto", strength: float = 1.0,
                cfg: float = 2.0, steps: int = 3, latent_index: int | None = None, batch_images: list[str] | None = None,
                lora_node: dict | None = None) -> dict:
    """The edit graph in API format. Several images form one batch (ImageBatch). latent_index takes the
    sampling latent from a batch of `batch_images` (LatentFromBatch), so a solo run draws the noise that
    row of the batch run gets. The backbone's own prompt is the same for every run: only the
    generated LoRA carries the instruction, so a batch row and its solo run differ in nothing else."""
    prompt = {
        "ckpt": {"class_type": "HYWUDemoCheckpointLoader", "inputs": {"ckpt_name": f"{FAMILY}.safetensors"}},
        "encoder": {"class_type": "HYWULoadConditionEncoder",
                    "inputs": {"encoder": FAMILY, "device": "cpu", "dtype": "float32"}},
        "generator": {"class_type": "HYWULoadGenerator",
                      "inputs": {"generator": f"{FAMILY}.safetensors", "device": "cpu"}},
        "condition": {"class_type": "HYWUEncodeCondition",
                      "inputs": {"encoder": ["encoder", 0], "image": None, "instruction": instruction}},
        "lora": {"class_type": "HYWUGenerateLoRA", "inputs": {"generator": ["generator", 0],
                                                               "condition": ["condition", 0]}},
        "apply": {"class_type": "HYWUApplyLoRA", "inputs": {"model": ["ckpt", 0], "lora": ["lora", 0],
                                                             "strength": strength, "mode": mode}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": "edit the image", "clip": ["ckpt", 1]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "ip2p": {"class_type": "InstructPixToPixConditioning",
                 "inputs": {"positive": ["positive", 0], "negative": ["negative", 0], "vae": ["ckpt", 2],
                            "pixels": None}},
        "sampler": {"class_type": "KSampler",
                    "inputs": {"model": ["apply", 0], "seed": seed, "steps": steps, "cfg": cfg,
                               "sampler_name": "euler", "scheduler": "simple", "positive": ["ip2p", 0],
                               "negative": ["ip2p", 1], "latent_image": ["ip2p", 2], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "hywu_test"}},
    }
    prompt["condition"]["inputs"]["image"] = prompt["ip2p"]["inputs"]["pixels"] = add_image_batch(prompt, images, "src")
    if lora_node is not None:
        prompt["lora_post"] = lora_node | {"inputs": lora_node["inputs"] | {"lora": ["lora", 0]}}
        prompt["apply"]["inputs"]["lora"] = ["lora_post", 0]
    if latent_index is not None:
        batch = add_image_batch(prompt, batch_images, "batch")
        prompt["ip2p_batch"] = {"class_type": "InstructPixToPixConditioning",
                                "inputs": {"positive": ["positive", 0], "negative": ["negative", 0],
                                           "vae": ["ckpt", 2], "pixels": batch}}
        prompt["pick"] = {"class_type": "LatentFromBatch",
                          "inputs": {"samples": ["ip2p_batch", 2], "batch_index": latent_index, "length": 1}}
        prompt["sampler"]["inputs"]["latent_image"] = ["pick", 0]
    return prompt


def add_image_batch(prompt: dict, images: list[str], tag: str) -> list:
    """LoadImage nodes joined by ImageBatch; returns the link to the batch."""
    link = None
    for i, name in enumerate(images):
        prompt[f"{tag}_load{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        if link is None:
            link = [f"{tag}_load{i}", 0]
        else:
            prompt[f"{tag}_batch{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": link,
                                                                             "image2": [f"{tag}_load{i}", 0]}}
            link = [f"{tag}_batch{i}", 0]
    return link


def images_of(client, entry: dict) -> list[np.ndarray]:
    refs = sorted(client.output_images(entry), key=lambda ref: ref.filename)
    return [np.asarray(Image.open(bytes_io.BytesIO(client.fetch_image(ref))).convert("RGB")).astype(int)
            for ref in refs]


def run_images(client, prompt: dict) -> list[np.ndarray]:
    return images_of(client, client.run(prompt))


def test_edit_workflow_runs_and_the_lora_changes_the_output(client, family, upload):
    image = upload(1)
    entry = client.run(edit_prompt([image], "make the image brighter"))
    edited = images_of(client, entry)
    base = run_images(client, edit_prompt([image], "make the image brighter", strength=0.0))
    assert len(edited) == 1 and edited[0].shape == (64, 64, 3)
    assert np.abs(edited[0] - base[0]).max() > 8, "the generated LoRA should change the edit"
    summary = entry["outputs"]["lora"]["hywu_norms"][0]
    assert summary["layers"] == ["joint_blocks.0", "joint_blocks.1", "joint_blocks.2"]
    assert len(summary["items"]) == 1 and min(summary["mean"]) > 0


def test_merge_equals_the_stock_lora_loader_on_the_saved_file(client, family, upload):
    image = upload(2)
    saved = client.run({
        **{k: v for k, v in edit_prompt([image], "blur the image").items()
           if k in ("encoder", "generator", "condition", "lora", "src_load0")},
        "save_lora": {"class_type": "HYWUSaveLoRA",
                      "inputs": {"lora": ["lora", 0], "index": 0, "filename_prefix": "hywu/frozen"}}})
    lora_name = saved["outputs"]["save_lora"]["text"][0].removeprefix("saved models/loras/")
    stock = edit_prompt([image], "blur the image")
    stock["apply"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": ["ckpt", 0], "lora_name": lora_name, "strength_model": 1.0}}
    merged = run_images(client, edit_prompt([image], "blur the image", mode="merge"))
    assert np.array_equal(run_images(client, stock)[0], merged[0])


def test_stock_load_lora_model_and_save_lora_weights_take_our_lora(client, family, upload, comfy_server):
    image = upload(4)
    stock = edit_prompt([image], "add noise")
    stock["to_lora_model"] = {"class_type": "HYWULoRAToLoraModel", "inputs": {"lora": ["lora", 0], "index": 0}}
    stock["apply"] = {"class_type": "LoraModelLoader",
                      "inputs": {"model": ["ckpt", 0], "lora": ["to_lora_model", 0], "strength_model": 1.0}}
    stock["save_weights"] = {"class_type": "SaveLoRA", "inputs": {"lora": ["to_lora_model", 0],
                                                                  "prefix": "loras/hywu_stock_save"}}
    merged = run_images(client, edit_prompt([image], "add noise", mode="merge"))
    assert np.array_equal(run_images(client, stock)[0], merged[0])
    assert list((comfy_server.output_dir / "loras").glob("hywu_stock_save_*.safetensors"))


def test_dynamic_equals_merge_when_the_batch_shares_one_lora(client, family, upload):
    image = upload(3)
    merged = run_images(client, edit_prompt([image, image], "sharpen it", mode="merge"))
    dynamic = run_images(client, edit_prompt([image, image], "sharpen it", mode="dynamic"))
    assert len(merged) == len(dynamic) == 2
    for a, b in zip(merged, dynamic):
        assert np.abs(a - b).max() <= 1


def test_auto_merges_a_shared_lora_and_goes_dynamic_for_different_ones(client, family, upload):
    image, other = upload(20), upload(21)
    for shared in ([image], [image, image]):
        auto = run_images(client, edit_prompt(shared, "blur the image", mode="auto"))
        merged = run_images(client, edit_prompt(shared, "blur the image", mode="merge"))
        assert len(auto) == len(merged) == len(shared)
        assert all(np.array_equal(a, m) for a, m in zip(auto, merged)), f"auto differs from merge for {len(shared)}"
    different = ([image, other], "blur the image\nturn it grayscale")
    auto = run_images(client, edit_prompt(*different, mode="auto"))
    dynamic = run_images(client, edit_prompt(*different, mode="dynamic"))
    assert len(auto) == len(dynamic) == 2
    assert all(np.array_equal(a, d) for a, d in zip(auto, dynamic))


def test_each_row_of_a_cfg_batch_equals_its_solo_run(client, family, upload):
    images = [upload(10 + i) for i in range(3)]
    batch = run_images(client, edit_prompt(images, "\n".join(INSTRUCTIONS[:3]), mode="dynamic", cfg=2.5))
    assert len(batch) == 3
    solo = [run_images(client, edit_prompt([images[i]], INSTRUCTIONS[i], mode="dynamic", cfg=2.5, latent_index=i,
                                           batch_images=images))[0] for i in range(3)]
    for i in range(3):
        assert np.abs(batch[i] - solo[i]).max() <= 1, f"row {i} differs from its solo run"
    # the rows really carry different LoRAs: shuffling them across rows changes every row
    shuffled = run_images(client, edit_prompt(images, "\n".join(INSTRUCTIONS[:3]), mode="dynamic", cfg=2.5,
                                              lora_node={"class_type": "HYWUShuffleLoRA", "inputs": {"seed": 0}}))
    for i in range(3):
        assert np.abs(shuffled[i] - batch[i]).max() > 8, f"row {i} unchanged by another row's LoRA"


def test_twenty_queued_prompts_equal_their_solo_runs_and_leave_the_base_weights(client, family, upload, comfy_lib):
    from hywu_core.comfyui.fingerprint import weights_fingerprint
    from hywu_core.tiny_editor.backbone import load_demo_checkpoint

    def prompt(k: int, name: str) -> dict:
        mode = ("dynamic", "merge", "auto")[k % 3]  # the last prompt (k = 19) merges
        return edit_prompt([name], INSTRUCTIONS[k % len(INSTRUCTIONS)], seed=100 + k, mode=mode, steps=2)

    solo = [run_images(client, prompt(k, upload(200 + k)))[0] for k in range(20)]
    # the same pixels under new file names, so ComfyUI's output cache cannot answer for the graph
    ids = [client.submit(prompt(k, upload(200 + k, name=f"queued_{k}.png"))) for k in range(20)]
    for k, prompt_id in enumerate(ids):
        queued = images_of(client, client.wait_history(prompt_id, timeout=600))
        assert np.array_equal(queued[0], solo[k]), f"prompt {k} differs when queued with the others"

    fingerprint = client.run({
        "ckpt": {"class_type": "HYWUDemoCheckpointLoader", "inputs": {"ckpt_name": f"{FAMILY}.safetensors"}},
        "hash": {"class_type": "HYWUModelFingerprint", "inputs": {"model": ["ckpt", 0]}}})
    model, _, _ = load_demo_checkpoint(family.backbone)
    assert fingerprint["outputs"]["hash"]["text"][0] == weights_fingerprint(model.model.diffusion_model)


@pytest.fixture(scope="module")
def broken(family, comfy_server):
    """Files that must be refused: a generator for another backbone, a wider encoder, a truncated
    generator, generators with a corrupted header or corrupted weights, generators writing NaN or
    Inf, encoders computing NaN or Inf, a truncated encoder."""
    import shutil
    import struct

    import torch
    from safetensors.torch import load_file, save_file

    from hywu_core.generator_files import load_generator, save_generator
    from hywu_core.tiny_editor.backbone import DemoBackboneConfig, assemble_demo_backbone, build_demo_backbone
    from hywu_core.tiny_editor.encoders import build_tiny_siglip2
    from hywu_core.tiny_editor.family import demo_generator

    models = comfy_server.models_dir
    other, _, _ = assemble_demo_backbone(*build_demo_backbone(seed=1, config=DemoBackboneConfig(num_blocks=4)))
    save_generator(models / "hywu" / "other_backbone.safetensors",
                   demo_generator(other.model.diffusion_model, 32, lora_std=0.05))
    build_tiny_siglip2(models / "hywu_encoders" / "wide", width=48)
    data = family.generator.read_bytes()
    (models / "hywu" / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    header_end = 8 + struct.unpack("<Q", data[:8])[0]  # safetensors: u64 header length, JSON header, tensor bytes
    middle = (header_end + len(data)) // 2
    for name, start, junk in (("corrupt_header", header_end // 2, b"\x00" * 64),
                              ("corrupt_weights", middle, b"\xff" * 4096)):  # 0xffffffff is a float32 NaN
        (models / "hywu" / f"{name}.safetensors").write_bytes(data[:start] + junk + data[start + len(junk):])
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        damaged_generator = load_generator(family.generator)
        with torch.no_grad():
            damaged_generator.nnt.head_B.bias.fill_(value)
        save_generator(models / "hywu" / f"{name}.safetensors", damaged_generator)
    for name, damage in (("nan_encoder", "nan"), ("inf_encoder", "inf"), ("truncated_encoder", "truncate")):
        folder = models / "hywu_encoders" / name
        shutil.copytree(family.encoder, folder)
        weights = folder / "model.safetensors"
        if damage == "truncate":
            weights.write_bytes(weights.read_bytes()[:1000])
            continue
        tensors = load_file(weights)
        if damage == "nan":
            key = next(k for k in tensors if "vision_model" in k and k.endswith("layer_norm1.weight"))
            tensors[key] = torch.full_like(tensors[key], float("nan"))
        else:  # the last vision LayerNorm's bias: every image token of U is +Inf (not NaN)
            tensors["vision_model.post_layernorm.bias"].fill_(float("inf"))
        save_file(tensors, weights, metadata={"format": "pt"})


def with_inputs(node: str, **inputs):
    def change(prompt: dict) -> dict:
        prompt[node]["inputs"].update(inputs)
        return prompt
    return change


FIRST_MODULE = "joint_blocks.0.context_block.attn.qkv"  # the first adapted module of the demo backbone
GENERATED_NON_FINITE = "the generated LoRA has NaN/Inf values in"
CONDITION_NON_FINITE = "the condition encoder produced NaN/Inf features"

# case -> (change to the good prompt, fragments the error text must contain)
BAD_INPUTS = {
    "generator for another backbone": (with_inputs("generator", generator="other_backbone.safetensors"),
                                       ("does not match this model, 11 mismatch(es)",
                                        "joint_blocks.2.context_block.attn.proj: missing; "
                                        "joint_blocks.2.context_block.mlp.fc1: missing",
                                        "joint_blocks.2.context_block.adaLN_modulation.1: shape differs, model has "
                                        "(d_in=128, d_out=256), spec has (d_in=128, d_out=768)",
                                        "joint_blocks.3.context_block.attn.qkv: missing")),
    "encoder width differs from the generator": (with_inputs("encoder", encoder="wide"),
                                                 ("condition is 48 wide",)),
    "empty instruction": (with_inputs("condition", instruction="  \n "), ("instruction is empty",)),
    "instructions do not match the batch": (with_inputs("condition", instruction="a\nb\nc"),
                                            ("3 instruction lines for a batch of 2 images",)),
    "truncated generator file": (with_inputs("generator", generator="truncated.safetensors"),
                                 ("may be truncated",)),
    "generator file with a corrupted header": (with_inputs("generator", generator="corrupt_header.safetensors"),
                                               ("corrupt_header.safetensors: not a readable safetensors file",
                                                "invalid JSON in header")),
    "generator file with corrupted weights": (with_inputs("generator", generator="corrupt_weights.safetensors"),
                                              (GENERATED_NON_FINITE, "refusing to apply it",
                                               "The generator file is corrupt")),
    "generator writes NaN": (with_inputs("generator", generator="nan.safetensors"),
                             (f"{GENERATED_NON_FINITE} {FIRST_MODULE} (B); refusing to apply it",)),
    "generator writes Inf": (with_inputs("generator", generator="inf.safetensors"),
                             (f"{GENERATED_NON_FINITE} {FIRST_MODULE} (B); refusing to apply it",)),
    "encoder computes NaN": (with_inputs("encoder", encoder="nan_encoder"), (CONDITION_NON_FINITE,)),
    "encoder computes Inf": (with_inputs("encoder", encoder="inf_encoder"), (CONDITION_NON_FINITE,)),
    "truncated encoder file": (with_inputs("encoder", encoder="truncated_encoder"), ("truncated",)),
    "file outside the model folders": (with_inputs("generator", generator="../checkpoints/hywu_demo.safetensors"),
                                       ("points outside the model folder",)),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_clear_error_and_the_server_keeps_serving(client, broken, upload, case):
    change, fragments = BAD_INPUTS[case]
    images = [upload(300), upload(301)]
    with pytest.raises(PromptFailed) as failure:
        client.run(change(edit_prompt(images, "make the image brighter")))
    for fragment in fragments:
        assert fragment in str(failure.value), str(failure.value)
    seed = 400 + list(BAD_INPUTS).index(case)
    assert len(run_images(client, edit_prompt(images, "make the image brighter", seed=seed))) == 2

