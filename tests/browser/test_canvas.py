"""The pack in ComfyUI's own frontend, driven in Debian's headless Chromium through playwright.

Loads every canvas workflow in workflows/ (no missing node types, no console errors), queues the
demo edit from the canvas, waits for it, checks that HYWU Generate LoRA drew its update-norm
chart and shows each layer's value under the pointer, checks that a failing HY-WU node shows our
error text in the canvas until a good run, and saves screenshots to hywu_output/test-artifacts/
(HYWU_ARTIFACTS overrides).
"""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hywu_core.tools.devenv import ensure_chromium

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
INPUT_IMAGES = ("hywu_demo_source.png", "hywu_demo_source_2.png", "hywu_demo_source_3.png")
ARTIFACTS = Path(os.environ.get("HYWU_ARTIFACTS", REPO / "hywu_output" / "test-artifacts"))


@pytest.fixture(scope="module")
def chromium():
    path, how = ensure_chromium()
    if path is None:
        pytest.skip(f"browser test skipped: {how}")
    return path


@pytest.fixture(scope="module")
def page(chromium, comfy_server, server_family, client, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    folder = tmp_path_factory.mktemp("browser")
    for seed, name in enumerate(INPUT_IMAGES):  # what the workflows' Load Image nodes name
        pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        client.upload_image(folder / name)
    # a returning user: the frontend skips its first-run templates dialog
    client._request("/settings/Comfy.TutorialCompleted", b"true", {"Content-Type": "application/json"})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.console_errors = []
        origin = comfy_server.url.rstrip("/")
        # Resource failures are judged by URL: only the ComfyUI server's own count (this machine is
        # offline, so the frontend's requests to outside hosts fail by design).
        page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.on("response", lambda r: r.status >= 400 and r.url.startswith(origin)
                and page.console_errors.append(f"HTTP {r.status} {r.url}"))
        page.on("requestfailed", lambda r: r.url.startswith(origin)
                and page.console_errors.append(f"failed request {r.url}: {r.failure}"))
        page.goto(comfy_server.url)
        page.wait_for_function("window.app?.graph && window.app.extensions?.some(e => e.name === 'HYWU.Nodes')",
                               timeout=120_000)
        page.wait_for_timeout(2000)
        # A fresh ComfyUI user, offline, makes the stock frontend log 404s (user.css, userdata) and
        # unresolved external hosts while it starts; only what follows is held against the pack.
        page.startup_errors = list(page.console_errors)
        page.console_errors.clear()
        yield page
        browser.close()


@pytest.fixture(autouse=True)
def fresh_errors(request):
    """Each test judges only the errors logged while it runs."""
    if "page" in request.fixturenames:
        request.getfixturevalue("page").console_errors.clear()


def load(page, workflow: dict) -> list[str]:
    """Load a workflow into the canvas; returns the node types the frontend does not know."""
    return page.evaluate("""async (workflow) => {
        await window.app.loadGraphData(workflow);
        const known = window.LiteGraph.registered_node_types;
        return window.app.graph._nodes.map(n => n.type).filter(t => !(t in known));
    }""", workflow)


def test_the_pack_adds_no_errors_to_the_frontend_start(page):
    assert not [e for e in page.startup_errors if "ComfyUI-HY-WU" in e or "hywu" in e.lower()], page.startup_errors


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_loads_with_every_node_known(page, path):
    workflow = json.loads(path.read_text())
    assert load(page, workflow) == []
    assert page.evaluate("window.app.graph._nodes.length") == len(workflow["nodes"])
    assert page.console_errors == [], "\n".join(page.console_errors)


def queue_and_wait(page, client) -> dict:
    """Queue the canvas's workflow as the Run button does; returns its history entry once it ended."""
    before = set(client.get_json("/history"))
    page.evaluate("window.app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new = set(client.get_json("/history")) - before
        if new and all(client.history(p)["status"].get("completed") is not None for p in new):
            return client.history(new.pop())
        time.sleep(0.5)
    pytest.fail("the queued demo workflow did not finish")


def node_id(workflow: dict, node_type: str) -> int:
    return next(node["id"] for node in workflow["nodes"] if node["type"] == node_type)


def set_instruction(page, workflow: dict, text: str) -> None:
    """Set the demo workflow's Instruction node (it feeds Encode Condition and the backbone's prompt)."""
    instruction = node_id(workflow, "PrimitiveStringMultiline")
    page.evaluate(f"(text) => {{ window.app.graph.getNodeById({instruction}).widgets[0].value = text; }}", text)


def show_node(page, node: int) -> None:
    page.evaluate(f"""() => {{
        const canvas = window.app.canvas;
        canvas.ds.scale = 1.2;
        canvas.centerOnNode(window.app.graph.getNodeById({node}));
        canvas.setDirty(true, true);
    }}""")
    page.wait_for_timeout(500)


def screenshot(page, name: str):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def run_demo_edit(page, client, instruction: str | None = None) -> tuple[int, dict]:
    """Run the demo edit from the canvas; returns HYWU Generate LoRA's node id and its update norms.

    A prompt the server has run before sends no "executed" for its cached inner nodes, so a test
    that needs the chart drawn again gives another instruction."""
    workflow = json.loads((REPO / "workflows" / "hywu_demo_edit.json").read_text())
    assert load(page, workflow) == []
    if instruction is not None:
        set_instruction(page, workflow, instruction)
    generate = node_id(workflow, "HYWUGenerateLoRA")
    entry = queue_and_wait(page, client)
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.wait_for_function(f"window.app.graph.getNodeById({generate})?.hywuChartDrawn > 0", timeout=30_000)
    return generate, entry["outputs"][str(generate)]["hywu_norms"][0]


def test_demo_edit_runs_from_the_canvas_and_draws_the_norms_chart(page, client):
    generate, norms = run_demo_edit(page, client)
    layers = page.evaluate(f"window.app.graph.getNodeById({generate}).hywuNorms.layers.length")
    assert layers == len(norms["layers"]) > 0
    show_node(page, generate)
    screenshot(page, "canvas_demo_edit.png")
    assert page.console_errors == [], "\n".join(page.console_errors)


def test_norms_chart_shows_the_layer_update_norm_under_the_pointer(page, client):
    generate, norms = run_demo_edit(page, client, "make the image darker")
    show_node(page, generate)

    def point(x_fraction: float) -> list[float]:
        """The page position of a point near the chart's bottom, x_fraction across its width
        (the chart spans the node's width less 10 on each side and ends 10 above its bottom)."""
        return page.evaluate(f"""() => {{
            const node = window.app.graph.getNodeById({generate});
            const [width, height] = node.size;
            const [x, y] = window.app.canvas.ds.convertOffsetToCanvas(
                [node.pos[0] + 10 + {x_fraction} * (width - 20), node.pos[1] + height - 15]);
            const box = window.app.canvas.canvas.getBoundingClientRect();
            return [box.left + x, box.top + y];
        }}""")

    def hover_text(x_fraction: float):
        page.mouse.move(*point(x_fraction))
        page.wait_for_timeout(300)
        return page.evaluate(f"window.app.graph.getNodeById({generate}).hywuHoverText")

    count = len(norms["mean"])
    for i, (layer, value) in enumerate(zip(norms["layers"], norms["mean"])):
        name, shown = hover_text((i + 0.5) / count).rsplit(": ", 1)
        assert name == layer
        assert float(shown) == float(f"{value:.4g}")  # the server's norm to 4 significant digits
    assert hover_text(1.2) is None  # right of the node: no bar, no value
    assert page.console_errors == [], "\n".join(page.console_errors)


def test_a_failing_node_shows_its_error_in_the_canvas_until_a_good_run(page, client):
    workflow = json.loads((REPO / "workflows" / "hywu_demo_edit.json").read_text())
    assert load(page, workflow) == []
    encode = node_id(workflow, "HYWUEncodeCondition")
    node = f"window.app.graph.getNodeById({encode})"
    set_instruction(page, workflow, "")
    entry = queue_and_wait(page, client)
    assert entry["status"]["status_str"] == "error", entry["status"]
    error = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    assert (error["node_id"], error["node_type"]) == (str(encode), "HYWUEncodeCondition")
    page.wait_for_function(f"{node}.hywuErrorDrawn > 0", timeout=30_000)
    shown = page.evaluate(f"{node}.hywuError")
    assert shown == error["exception_message"].strip()
    assert shown.startswith("the instruction is empty: describe the edit")
    page.keyboard.press("Escape")  # the stock error dialog, so that the screenshot shows the canvas
    show_node(page, encode)
    screenshot(page, "canvas_node_error.png")

    set_instruction(page, workflow, "make the image brighter")
    entry = queue_and_wait(page, client)
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.wait_for_function(f"{node}.hywuError === undefined", timeout=30_000)
    drawn = page.evaluate(f"{node}.hywuErrorDrawn")
    page.evaluate("window.app.canvas.draw(true, true)")
    assert page.evaluate(f"{node}.hywuErrorDrawn") == drawn  # the box is no longer drawn
    assert page.console_errors == [], "\n".join(page.console_errors)
