"""The pack in ComfyUI's own frontend, driven in Debian's headless Chromium through playwright.

Loads every canvas workflow in workflows/ (no missing node types, no console errors), queues the
demo edit from the canvas, waits for it, checks that HYWU Generate LoRA drew its update-norm
chart, and saves a screenshot to hywu_output/test-artifacts/ (HYWU_ARTIFACTS overrides).
"""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
INPUT_IMAGES = ("hywu_demo_source.png", "hywu_demo_source_2.png", "hywu_demo_source_3.png")
ARTIFACTS = Path(os.environ.get("HYWU_ARTIFACTS", REPO / "hywu_output" / "test-artifacts"))


@pytest.fixture(scope="module")
def chromium():
    from hywu_core.devenv import ensure_chromium

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


def test_demo_edit_runs_from_the_canvas_and_draws_the_norms_chart(page, client):
    workflow = json.loads((REPO / "workflows" / "hywu_demo_edit.json").read_text())
    assert load(page, workflow) == []
    generate = next(node["id"] for node in workflow["nodes"] if node["type"] == "HYWUGenerateLoRA")
    before = set(client.get_json("/history"))
    page.evaluate("window.app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new = set(client.get_json("/history")) - before
        if new and all(client.history(p)["status"].get("completed") is not None for p in new):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the queued demo workflow did not finish")
    entry = client.history(new.pop())
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.wait_for_function(f"window.app.graph.getNodeById({generate})?.hywuChartDrawn > 0", timeout=30_000)
    layers = page.evaluate(f"window.app.graph.getNodeById({generate}).hywuNorms.layers.length")
    assert layers == len(entry["outputs"][str(generate)]["hywu_norms"][0]["layers"]) > 0
    page.evaluate(f"""() => {{
        const canvas = window.app.canvas;
        canvas.ds.scale = 1.2;
        canvas.centerOnNode(window.app.graph.getNodeById({generate}));
        canvas.setDirty(true, true);
    }}""")
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "canvas_demo_edit.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert page.console_errors == [], "\n".join(page.console_errors)
