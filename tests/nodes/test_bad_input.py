"""Bad and hostile input through a real ComfyUI server: every case gives a node error that names the
problem and the fix, the server keeps serving, and the next good prompt gives bitwise the images it
gave before. The denial-of-service cases are bounded in time and memory while /object_info keeps
answering within a second."""
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from hywu_core.tools.comfy_client import PromptFailed
from hywu_core.tools.comfy_server import ComfyServer, free_port
from test_workflow import FAMILY, add_image_batch, edit_prompt, run_images

REPO = Path(__file__).resolve().parents[2]
INSTRUCTION = "make the image brighter"
SEED = 7


@pytest.fixture(scope="module")
def upload(client, tmp_path_factory):
    """upload(seed, name, size=64) -> the LoadImage name of a random size x size image (same seed, same pixels);
    seed None gives a flat grey image (a small PNG at any size)."""
    folder = tmp_path_factory.mktemp("bad_input_images")

    def put(seed: int | None, name: str, size: int = 64) -> str:
        if seed is None:
            pixels = np.full((size, size, 3), 128, dtype=np.uint8)
        else:
            pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        return client.upload_image(folder / name)

    return put


@pytest.fixture(scope="module")
def good(client, server_family, upload):
    """good(tag) -> the images of the good edit prompt, under new upload names so that ComfyUI's
    output cache cannot answer for it (the loaders stay cached)."""
    def run(tag: str) -> list[np.ndarray]:
        images = [upload(300, f"good_{tag}_0.png"), upload(301, f"good_{tag}_1.png")]
        return run_images(client, edit_prompt(images, INSTRUCTION, seed=SEED))
    return run


@pytest.fixture(scope="module")
def baseline(good):
    images = good("baseline")
    assert len(images) == 2
    return images


def assert_still_serving(good, baseline, tag: str) -> None:
    after = good(tag)
    assert len(after) == len(baseline)
    assert all(np.array_equal(a, b) for a, b in zip(after, baseline)), "the good prompt's output changed"


def server_memory_mb(server) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak so far) of the ComfyUI process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


class Responsiveness:
    """While active, asks GET /object_info every 0.2 s with a 1 s timeout and records each answer time."""

    def __init__(self, url: str):
        self.url, self.times, self.failures = url, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.url}/object_info", timeout=1) as response:
                    json.load(response)
                self.times.append(time.monotonic() - start)
            except OSError as error:
                self.failures.append(repr(error))
            self._stop.wait(0.2)

    def __enter__(self) -> "Responsiveness":
        self._thread.start()
        return self

    def __exit__(self, error_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if error_type is None:
            assert not self.failures, f"/object_info did not answer within a second: {self.failures[:3]}"
            assert self.times and max(self.times) < 1.0


def copy_model_file(source: Path, target: Path, **metadata) -> None:
    """A copy of a safetensors model file with metadata entries replaced."""
    with safe_open(str(source), "pt") as f:
        stored, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(target), metadata=stored | metadata)


@pytest.fixture(scope="module")
def hostile(server_family, comfy_server):
    """Hostile model files next to the family: generator configs the weights do not back, official
    folders whose config or shard index lies, and an encoder whose shard index leaves its folder."""
    models = comfy_server.models_dir
    with safe_open(str(server_family.generator), "pt") as f:
        config = json.loads(f.metadata()["nnt_config"])
    copy_model_file(server_family.generator, models / "hywu" / "depth_1e6.safetensors",
                   nnt_config=json.dumps(config | {"depth": 1_000_000}))
    for name, alpha in (("alpha_1e30", "1e30"), ("alpha_inf", "inf"), ("alpha_nan", "nan")):
        copy_model_file(server_family.generator, models / "hywu" / f"{name}.safetensors", alpha=alpha)
    release = {"model_type": "parameter_generator", "token_dim": 8, "rank": 4, "alpha": 4, "input_dim": 32,
               "dim_accumulation": 1, "d_model": 32, "head_dim": 8, "num_base_model_layers": 3, "output_dim": 8,
               "num_pg_layers": 1_000_000, "prefix": "joint_blocks.",
               "pg_mapping": {"x_block.attn.qkv": {"lora_A_dim": 128, "lora_B_dim": 384}}}
    for name, weights in (("official_depth_1e6", "model.safetensors"), ("official_escape", "index")):
        folder = models / "hywu" / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(release))
        if weights == "index":
            (folder / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {}, "weight_map": {"model.layer_pos.weight": "../outside.safetensors"}}))
        else:
            save_file({"model.layer_pos.weight": torch.zeros(3, 32)}, str(folder / weights))
    with safe_open(str(server_family.backbone), "pt") as f:
        backbone_config = json.loads(f.metadata()["config"])
    copy_model_file(server_family.backbone, models / "checkpoints" / "residual_backbone.safetensors",
                   config=json.dumps(backbone_config | {"prediction": "source_residual"}))
    encoder = models / "hywu_encoders" / "escaping_encoder"
    shutil.copytree(server_family.encoder, encoder)
    with safe_open(str(encoder / "model.safetensors"), "pt") as f:
        weight_map = {name: "../outside.safetensors" for name in f.keys()}
    (encoder / "model.safetensors").unlink()
    (encoder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return models


def set_inputs(node: str, **inputs):
    def change(prompt: dict, upload) -> dict:
        prompt[node]["inputs"].update(inputs)
        return prompt
    return change


def add_lora_tool(class_type: str, **inputs):
    """The generated LoRA goes through a LoRA tool node before Apply LoRA."""
    def change(prompt: dict, upload) -> dict:
        names = ("lora_a", "lora_b") if class_type == "HYWUBlendLoRA" else ("lora",)
        links = {name: ["lora", 0] for name in names}
        prompt["tool"] = {"class_type": class_type, "inputs": links | inputs}
        prompt["apply"]["inputs"]["lora"] = ["tool", 0]
        return prompt
    return change


def velocity_sampling_on_a_residual_backbone(prompt: dict, upload) -> dict:
    """The stock ModelSamplingSD3 node between a source_residual demo backbone and Apply LoRA."""
    prompt["ckpt"]["inputs"]["ckpt_name"] = "residual_backbone.safetensors"
    prompt["shift"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["ckpt", 0], "shift": 3.0}}
    prompt["apply"]["inputs"]["model"] = ["shift", 0]
    return prompt


def sample_three_images(prompt: dict, upload) -> dict:
    """Two LoRAs (the condition's two images), three latent rows (the sampler's three images)."""
    images = [upload(310 + i, f"three_{i}.png") for i in range(3)]
    prompt["ip2p"]["inputs"]["pixels"] = add_image_batch(prompt, images, "three")
    prompt["apply"]["inputs"]["mode"] = "dynamic"
    return prompt


def one_image(size: int):
    def change(prompt: dict, upload) -> dict:
        for key in [k for k in prompt if k.startswith("src_")]:
            del prompt[key]
        link = add_image_batch(prompt, [upload(None, f"size_{size}.png", size=size)], "src")
        prompt["condition"]["inputs"]["image"] = prompt["ip2p"]["inputs"]["pixels"] = link
        return prompt
    return change


def save_lora(filename_prefix: str):
    def change(prompt: dict, upload) -> dict:
        prompt["save_lora"] = {"class_type": "HYWUSaveLoRA",
                               "inputs": {"lora": ["lora", 0], "index": 0, "filename_prefix": filename_prefix}}
        return prompt
    return change


NAN = float("nan")
CHOICE = "is not a choice of this input: use one of"
OUTSIDE = "shard '../outside.safetensors' is outside the folder"
SIZE_RANGE = "the HY-WU demo editor samples images of 8 to 256 pixels per side"

# case -> (change to the good prompt, fragments the error must contain)
BAD_INPUTS = {
    "generator alpha 1e30": (set_inputs("generator", generator="alpha_1e30.safetensors"),
                             ("alpha_1e30.safetensors: LoRA alpha 1e+30 (scale alpha / rank = 2.5e+29) is not a "
                              "finite positive scale of at most 1000", "re-download or retrain the generator")),
    "generator alpha inf": (set_inputs("generator", generator="alpha_inf.safetensors"),
                            ("alpha_inf.safetensors: LoRA alpha inf",)),
    "generator alpha NaN": (set_inputs("generator", generator="alpha_nan.safetensors"),
                            ("alpha_nan.safetensors: LoRA alpha nan",)),
    "official generator shard outside its folder": (set_inputs("generator", generator="official_escape"),
                                                    (OUTSIDE, "download the model again")),
    "encoder shard outside its folder": (set_inputs("encoder", encoder="escaping_encoder"),
                                         (OUTSIDE, "download the model again")),
    "strength NaN": (set_inputs("apply", strength=NAN), ("strength is nan: give a finite number",)),
    "Blend LoRA t NaN": (add_lora_tool("HYWUBlendLoRA", t=NAN, space="parameters"),
                         ("t is nan: give a finite number",)),
    "Bound LoRA max_norm NaN": (add_lora_tool("HYWUBoundLoRA", max_norm=NAN),
                                ("max_norm is nan: give a finite number",)),
    "encoder dtype float64": (set_inputs("encoder", dtype="float64"),
                              (f"dtype 'float64' {CHOICE} auto, float32, bfloat16, float16",)),
    "encoder dtype __class__": (set_inputs("encoder", dtype="__class__"), (f"dtype '__class__' {CHOICE}",)),
    "encoder device cuda:7": (set_inputs("encoder", device="cuda:7"), (f"device 'cuda:7' {CHOICE} auto, cpu",)),
    "generator device cuda:7": (set_inputs("generator", device="cuda:7"), (f"device 'cuda:7' {CHOICE} auto, cpu",)),
    "Apply LoRA mode": (set_inputs("apply", mode="sideways"), ("unknown mode 'sideways': use one of auto, merge",)),
    "Demo Checkpoint Loader ckpt_name": (set_inputs("ckpt", ckpt_name="../hywu/depth_1e6.safetensors"),
                                         ("Model in folder 'checkpoints' with filename", "not found")),
    "Average LoRA space": (add_lora_tool("HYWUAverageLoRA", space="sideways"),
                           ("unknown space 'sideways': use one of parameters, update",)),
    "Blend LoRA space": (add_lora_tool("HYWUBlendLoRA", t=0.5, space="sideways"), ("unknown space 'sideways'",)),
    "dynamic mode with 2 LoRAs for 3 images": (sample_three_images,
                                               ("dynamic mode got 2 LoRAs for a latent batch of 3: give one LoRA per "
                                                "latent (encode the 3 images the sampler edits) or a single LoRA",)),
    "ModelSamplingSD3 on a source_residual backbone": (
        velocity_sampling_on_a_residual_backbone,
        ("this HY-WU demo backbone predicts 'source_residual'", "ModelSamplingSD3",
         "remove that node from the workflow")),
    "1x1 image": (one_image(1), (SIZE_RANGE, "this run's image is 0x0 pixels", "resize the image")),
    "4096x4096 image": (one_image(4096), (SIZE_RANGE, "this run's image is 4096x4096 pixels")),
    "Save LoRA empty prefix": (save_lora(""), ("filename_prefix '' names no file",
                                              "give a path that ends in a file name, such as 'hywu/my_edit'")),
    "Save LoRA prefix ..": (save_lora(".."), ("filename_prefix '..' names no file",)),
    "Save LoRA prefix hywu/..": (save_lora("hywu/.."), ("filename_prefix 'hywu/..' names no file",)),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_clear_error_and_the_next_prompt_runs_as_before(client, hostile, upload, good, baseline,
                                                                         comfy_server, case):
    change, fragments = BAD_INPUTS[case]
    images = [upload(300, "bad_0.png"), upload(301, "bad_1.png")]
    start = time.monotonic()
    with pytest.raises(PromptFailed) as failure:
        client.run(change(edit_prompt(images, INSTRUCTION, seed=SEED), upload))
    assert time.monotonic() - start < 60
    for fragment in fragments:
        assert fragment in str(failure.value), str(failure.value)
    assert not list((comfy_server.models_dir / "loras").rglob(".*")), "a hidden file was written"
    assert_still_serving(good, baseline, f"case{list(BAD_INPUTS).index(case)}")


@pytest.mark.parametrize("generator, fragment", [
    ("depth_1e6.safetensors", "depth_1e6.safetensors: the stored config says depth 1000000, but the weights hold 1 "
                              "NNT block(s)"),
    ("official_depth_1e6", "official_depth_1e6/config.json: the stored config says depth 1000000, but the weights "
                           "hold 0 NNT block(s)"),
])
def test_a_generator_config_built_to_exhaust_memory_is_refused_at_once(client, hostile, upload, good, baseline,
                                                                       comfy_server, generator, fragment):
    """Before: the loader built a million blocks (24 MB/s up to 12 GB, the queue stuck). Now the
    config is checked against the tensors first: refused in seconds, no new memory peak, and
    /object_info answers within a second throughout."""
    images = [upload(300, "bad_0.png"), upload(301, "bad_1.png")]
    prompt = edit_prompt(images, INSTRUCTION, seed=SEED)
    prompt["generator"]["inputs"]["generator"] = generator
    before = server_memory_mb(comfy_server)
    with Responsiveness(comfy_server.url):
        start = time.monotonic()
        with pytest.raises(PromptFailed) as failure:
            client.run(prompt)
        assert time.monotonic() - start < 10
    assert fragment in str(failure.value), str(failure.value)
    assert "re-download or re-save the generator" in str(failure.value)
    after = server_memory_mb(comfy_server)
    assert after["VmHWM"] - before["VmHWM"] < 100 and after["VmRSS"] - before["VmRSS"] < 100
    assert_still_serving(good, baseline, f"dos_{generator.removesuffix('.safetensors')}")


def test_shard_error_is_the_same_whether_or_not_the_outside_file_exists(client, hostile, upload, comfy_server):
    outside = hostile / "hywu_encoders" / "outside.safetensors"
    images = [upload(300, "bad_0.png"), upload(301, "bad_1.png")]
    prompt = edit_prompt(images, INSTRUCTION, seed=SEED)
    prompt["encoder"]["inputs"]["encoder"] = "escaping_encoder"
    messages = []
    try:
        for exists in (False, True):
            if exists:
                shutil.copy(hostile / "hywu_encoders" / FAMILY / "model.safetensors", outside)
            with pytest.raises(PromptFailed) as failure:
                client.run(prompt)
            messages.append(failure.value.error["exception_message"])
    finally:
        outside.unlink(missing_ok=True)
    assert OUTSIDE in messages[0] and messages[0] == messages[1]


def test_link_loops_in_the_model_folders_do_not_stop_the_server(client, server_family, good, baseline, comfy_server):
    """Before: `ln -s . loopA` twice made the listing follow links forever inside the HTTP event loop."""
    links = [comfy_server.models_dir / folder / name for folder in ("hywu", "hywu_encoders")
             for name in ("loopA", "loopB")]
    before = server_memory_mb(comfy_server)
    try:
        for link in links:
            os.symlink(".", link)
        with Responsiveness(comfy_server.url):
            time.sleep(1.5)
            info = client.get_json("/object_info")
        after = server_memory_mb(comfy_server)
    finally:
        for link in links:
            link.unlink(missing_ok=True)
    generators = info["HYWULoadGenerator"]["input"]["required"]["generator"][1]["options"]
    encoders = info["HYWULoadConditionEncoder"]["input"]["required"]["encoder"][1]["options"]
    assert f"{FAMILY}.safetensors" in generators and FAMILY in encoders
    assert not any("loop" in name for name in generators + encoders)
    assert after["VmRSS"] - before["VmRSS"] < 100
    assert_still_serving(good, baseline, "loops")


def test_model_fingerprint_runs_on_every_prompt(client, server_family):
    """Before: behind a cached loader the fingerprint ran once, so a later leak showed no new digest."""
    prompt = {"ckpt": {"class_type": "HYWUDemoCheckpointLoader", "inputs": {"ckpt_name": f"{FAMILY}.safetensors"}},
              "hash": {"class_type": "HYWUModelFingerprint", "inputs": {"model": ["ckpt", 0]}}}
    digests = []
    for _ in range(3):
        entry = client.run(prompt)
        cached = [data["nodes"] for name, data in entry["status"]["messages"] if name == "execution_cached"][0]
        assert "hash" not in cached
        digests.append(entry["outputs"]["hash"]["text"][0])
    assert "ckpt" in cached, "the loader should be answered from the cache"
    assert len(set(digests)) == 1


def test_generation_cache_of_the_node_is_bounded_by_bytes(pack):
    cache = pack.nodes.generate_lora.CACHE
    assert cache.max_bytes == 512 * 2**20 and cache.bytes <= cache.max_bytes


def hywu_run(*args) -> subprocess.Popen:
    """`./hywu run ARGS` started as a user would, its output captured."""
    return subprocess.Popen([str(REPO / "hywu"), "run", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("hywu run:")]


@pytest.mark.parametrize("with_upload", [False, True])
def test_run_against_a_server_that_is_not_there_names_the_url(tmp_path, with_upload):
    url = f"http://127.0.0.1:{free_port()}"
    image = tmp_path / "source.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    inputs = ["--input", f"1.image={image}"] if with_upload else []
    process = hywu_run(REPO / "tests" / "workflows" / "invert_api.json", "--server", url, *inputs,
                       "--out", tmp_path / "out")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert error_lines(stderr) == [f"hywu run: cannot reach ComfyUI at {url}: connection refused; "
                                   "start it with ./hywu serve or drop --server"], stderr


def test_run_when_the_server_dies_mid_run_gives_one_line(comfyui_dir, server_family, comfy_server, tmp_path):
    """A second server (the session's keeps serving) is stopped while `./hywu run` follows a long prompt."""
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    workflow = tmp_path / "long_edit.json"
    workflow.write_text(json.dumps(edit_prompt(["placeholder.png"], INSTRUCTION, steps=10000)))
    server = ComfyServer(comfyui_dir, workdir=tmp_path / "server", log_path=tmp_path / "server.log",
                         models_dir=comfy_server.models_dir)
    server.start()
    try:
        process = hywu_run(workflow, "--server", server.url, "--input", f"src_load0.image={source}",
                           "--out", tmp_path / "out")
        deadline = time.monotonic() + 120
        while not json.loads(urllib.request.urlopen(f"{server.url}/queue", timeout=5).read())["queue_running"]:
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()[1]
            time.sleep(0.2)
        time.sleep(2)
    finally:
        server.stop()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(f"hywu run: lost the connection to ComfyUI at {server.url} "
                                                   "while prompt "), stderr
    assert "the server stopped or crashed" in lines[0]
