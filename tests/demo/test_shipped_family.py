"""The shipped demo family (demo_models/): its edits go the right way on held-out images, through
the demo workflow in a real ComfyUI, and the paper-reproduction experiments run on it (--quick)."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hywu_core.demo.edits import DIRECTIONS, make_edits, score
from hywu_core.demo.run import DEMO_INPUTS, DEMO_MODELS, FAMILY_FILES, INSTRUCTIONS, WORKFLOW
from hywu_core.tools.workflow_run import apply_inputs, load_api_workflow

SHIPPED = "hywu_demo_shipped"
HELDOUT_SEED = 1          # the experiments' held-out set (hywu_core.experiments.context)
PER_DIRECTION = 3
DEMO_DIRECTIONS = ("brighten", "darken", "add_noise")   # the edits `./hywu demo` shows


@pytest.fixture(scope="module")
def shipped_family(comfy_server):
    """demo_models/ linked into the test server's model folders under another name (the session's
    random "hywu_demo" family lives there too)."""
    missing = [name for name in FAMILY_FILES if not (DEMO_MODELS / name).is_file()]
    assert not missing, f"demo_models/ is incomplete: {missing}"
    models = comfy_server.models_dir
    links = {"checkpoints": f"{SHIPPED}.safetensors", "hywu": f"{SHIPPED}.safetensors", "hywu_encoders": SHIPPED}
    sources = {"checkpoints": "checkpoints/hywu_demo.safetensors", "hywu": "hywu/hywu_demo.safetensors",
               "hywu_encoders": "hywu_encoders/hywu_demo"}
    for folder, name in links.items():
        (models / folder).mkdir(parents=True, exist_ok=True)
        target = models / folder / name
        if not target.exists():
            target.symlink_to((DEMO_MODELS / sources[folder]).resolve())
    return links


def _image(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0)[None]


def test_each_demo_edit_moves_its_score_the_right_way_on_heldout_images(shipped_family, client, tmp_path):
    """brighten / darken raise / lower mean luma, add_noise raises the noise estimate: for every
    held-out edit, HY-WU's output moves the score the right way and further than the base backbone's
    output does (the base reproduces its input)."""
    template = load_api_workflow(WORKFLOW)
    edits = make_edits("heldout", PER_DIRECTION, seed=HELDOUT_SEED, tasks=DEMO_DIRECTIONS)
    gains = {task: {"hywu": [], "base": []} for task in DEMO_DIRECTIONS}
    for i, task in enumerate(edits.tasks):
        path = tmp_path / f"edit{i}.png"
        Image.fromarray((edits.source[i] * 255).round().to(torch.uint8).numpy()).save(path)
        name = client.upload_image(path)
        prompt = apply_inputs(template, [f"Source Image.image={name}", f"Instruction.value={edits.instructions[i]}",
                                         f"Demo Backbone.ckpt_name={shipped_family['checkpoints']}",
                                         f"Generator.generator={shipped_family['hywu']}",
                                         f"Condition Encoder.encoder={shipped_family['hywu_encoders']}"])
        entry = client.run(prompt)
        images = {ref.node: client.fetch_image(ref) for ref in client.output_images(entry)}
        source = edits.source[i:i + 1]
        sign = DIRECTIONS[task].sign
        for key, node in (("hywu", "14"), ("base", "17")):
            gains[task][key].append(float(sign * (score(task, _image(images[node])) - score(task, source))))
    report = {t: {k: [round(v, 5) for v in g[k]] for k in g} for t, g in gains.items()}
    for task, g in gains.items():
        assert all(v > 0 for v in g["hywu"]), f"{task}: HY-WU moved the wrong way on some held-out image: {report}"
        assert min(g["hywu"]) > max(g["base"]), f"{task}: the base backbone edits as much as HY-WU: {report}"


def test_the_experiments_run_on_the_shipped_family(hywu, tmp_path):
    out = tmp_path / "experiments"
    result = hywu("experiment", "all", "--quick", "--out", out, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = Path(result.stdout.strip().splitlines()[-1])
    assert report == out.resolve() / "report.md"
    text = report.read_text()
    for section in ("## conflict (§5.1)", "## gradients (§5.2)", "## routing (§5.3, Table 7)", "## geometry (§5.4)"):
        assert section in text
    conflict = json.loads((out / "conflict.json").read_text())["results"]["brighten_darken"]
    assert set(conflict) == {"Base", "Single LoRA (brighten)", "Single LoRA (darken)", "Shared LoRA", "SFT",
                             "HY-WU (PG)"}
    routing = json.loads((out / "routing.json").read_text())["results"]
    assert set(routing) == {"(a) Base", "(b) Shared LoRA", "(c) SFT", "(d) Average PG", "(e) Shuffle PG",
                            "(f) Full PG"}
    for variant in routing.values():
        assert np.isfinite([variant["psnr"], variant["ssim"], variant["progress"]]).all()
    gradients = json.loads((out / "gradients.json").read_text())["results"]
    for point in gradients.values():
        assert set(point["groups"]) == {"intra-task", "conflicting pair", "other tasks"}
        assert all(-1.0 <= g["mean"] <= 1.0 for g in point["groups"].values())
    geometry = json.loads((out / "geometry.json").read_text())["results"]
    assert geometry["edits"] == 16 and set(geometry["neighbour_rates"]) == {
        "same direction", "conflicting direction (same pair)", "same source image"}
    for figure in ("conflict_examples.png", "routing_progress.png", "gradients_trained_mean_cosine.png",
                   "geometry_map.png"):
        with Image.open(out / figure) as image:
            assert image.size[0] > 100 and image.size[1] > 100


def test_demo_defaults_run_the_shipped_family_on_the_bundled_images(hywu, tmp_path):
    inputs = sorted(DEMO_INPUTS.glob("*.png"))
    assert len(inputs) == 3
    out = tmp_path / "demo"
    result = hywu("demo", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    grid = Path(result.stdout.strip().splitlines()[-1])
    assert grid == out.resolve() / "side_by_side.png"
    assert Image.open(grid).size == (3 * 128 + 220, 24 + len(inputs) * len(INSTRUCTIONS) * 128)
    assert len(list(out.glob("*__hywu.png"))) == len(list(out.glob("*__base.png"))) == len(inputs) * len(INSTRUCTIONS)
