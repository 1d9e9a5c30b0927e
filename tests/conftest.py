"""Shared fixtures: the ComfyUI tree, `comfy` as a library, and a real ComfyUI server.

`./hywu test` sets COMFYUI_DIR (and HYWU_PYTHON) before pytest starts.
"""
import os
import sys
from pathlib import Path

import pytest

from hywu_core.tiny_editor.family import build_family_files
from hywu_core.tools.comfy_client import ComfyClient
from hywu_core.tools.comfy_server import ComfyServer

REPO = Path(__file__).resolve().parent.parent


def _comfyui_dir() -> Path:
    value = os.environ.get("COMFYUI_DIR")
    if not value:
        pytest.fail("COMFYUI_DIR is not set: run the tests through `./hywu test`", pytrace=False)
    path = Path(value)
    if not (path / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={path} is not a ComfyUI tree (no main.py): run `./hywu setup`", pytrace=False)
    return path


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    return _comfyui_dir()


@pytest.fixture(scope="session")
def comfy_lib(comfyui_dir):
    """Import `comfy` as a library (no server), on the CPU when there is no GPU.

    comfy.model_management picks its device at import time, so args.cpu must be set first.
    """
    if str(comfyui_dir) not in sys.path:
        sys.path.insert(0, str(comfyui_dir))
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True
    import comfy
    import comfy.model_management  # noqa: F401  (device chosen here)

    return comfy


@pytest.fixture(scope="session")
def pack(comfy_lib):
    """The pack imported in-process the way ComfyUI imports it: a package built from its
    __init__.py, registered in sys.modules as "hywu_pack" (its submodules: hywu_pack.nodes...)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hywu_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def comfy_server(comfyui_dir, tmp_path_factory):
    """A real ComfyUI server with the pack, on a free loopback port, with its own
    input/output/user/temp folders and a models folder (server.models_dir, registered through
    an extra_model_paths.yaml) that tests fill; stopped with its children at the end, even on failure.
    It imports this checkout's pack (ComfyServer adds this checkout's own custom_nodes folder)."""
    workdir = tmp_path_factory.mktemp("comfyui")
    server = ComfyServer(comfyui_dir, workdir=workdir, log_path=workdir / "comfyui.log",
                         models_dir=workdir / "models")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server_family(comfy_server, comfy_lib):
    """The demo family (random weights, non-zero LoRAs) as "hywu_demo" in the server's model folders."""
    return build_family_files(comfy_server.models_dir, name="hywu_demo", seed=0, lora_std=0.05)


@pytest.fixture(scope="session")
def client(comfy_server):
    return ComfyClient(comfy_server.url)


@pytest.fixture(scope="session")
def hywu():
    """Run ./hywu as a user would: hywu("run", path, ...) -> CompletedProcess (text mode)."""
    import subprocess

    def run(*args, timeout=600, **kwargs):
        return subprocess.run([str(REPO / "hywu"), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    return run
