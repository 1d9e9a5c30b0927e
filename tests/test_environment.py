"""The bootstrap (`./hywu setup` / `./hywu env`), the package metadata and CI wiring."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from hywu_core.tools import devenv

REPO = Path(__file__).resolve().parent.parent


def test_env_prints_python_and_comfyui_dir(hywu, comfyui_dir):
    result = hywu("env")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["HYWU_PYTHON", "COMFYUI_DIR"]
    values = dict(line.split("=", 1) for line in lines)
    assert Path(values["HYWU_PYTHON"]).resolve() == Path(sys.executable).resolve()
    assert Path(values["COMFYUI_DIR"]).resolve() == comfyui_dir.resolve()


def test_setup_on_a_set_up_machine_changes_nothing(hywu, comfyui_dir):
    before = sorted(p.name for p in (devenv.hywu_home() / "envs").iterdir())
    result = hywu("setup")
    assert result.returncode == 0, result.stderr
    assert "environment ready" in result.stderr
    for work in ("creating environment", "provisioning ComfyUI", "pip install", "re-pointing", "removing"):
        assert work not in result.stderr, result.stderr
    assert sorted(p.name for p in (devenv.hywu_home() / "envs").iterdir()) == before
    if os.environ.get("COMFYUI_PATH"):
        assert (comfyui_dir / "custom_nodes" / devenv.PACK_LINK_NAME).resolve() == REPO
    else:
        assert (devenv.checkout_home() / "custom_nodes" / devenv.PACK_LINK_NAME).resolve() == REPO
        assert not os.path.lexists(comfyui_dir / "custom_nodes" / devenv.PACK_LINK_NAME), \
            "the shared ComfyUI tree must not hold any checkout's pack"


def test_env_key_follows_every_requirement_line():
    base = ["torch==2.14.1", "numpy>=1.25.0", "einops"]
    assert devenv.env_key(base) == devenv.env_key(list(base))
    assert devenv.env_key(base) != devenv.env_key(base[:-1] + ["einops==0.8.0"])
    assert devenv.env_key(base) != devenv.env_key(base + ["pytest"])


def test_comfyui_requirements_drop_optional_and_pinned_packages(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "comfyui-frontend-package==1.32.9\ntorch\ntorchvision\ntorchaudio\nnumpy>=1.25.0\n\n#comment\nkornia>=0.7.1\n")
    lines = devenv.comfy_requirement_lines(tmp_path)
    assert lines == ["comfyui-frontend-package==1.32.9", "numpy>=1.25.0", "kornia>=0.7.1", "requests"]


def test_provisioned_comfyui_is_the_pinned_unpatched_version(comfyui_dir):
    if os.environ.get("COMFYUI_PATH"):
        return  # a user's own ComfyUI: nothing of ours to check
    assert '__version__ = "0.3.75"' in (comfyui_dir / "comfyui_version.py").read_text()
    assert not (comfyui_dir / "extra_model_paths.yaml").exists(), "horde's folder redirect must be removed"


def test_hywu_core_imports_without_comfyui(tmp_path):
    """Every hywu_core module imports where no ComfyUI is importable, and none pulls in comfy."""
    code = (
        "import importlib, importlib.util, pkgutil, sys\n"
        "assert importlib.util.find_spec('comfy') is None, 'comfy must not be importable here'\n"
        "import hywu_core\n"
        "names = [m.name for m in pkgutil.walk_packages(hywu_core.__path__, 'hywu_core.') if m.name != 'hywu_core.__main__']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'comfy' or m.startswith(('comfy.', 'comfy_api')))\n"
        "assert not leaked, leaked\n"
        "print(len(names))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_DIR", "COMFYUI_PATH")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 5


def test_bootstrap_module_needs_only_the_standard_library():
    """./hywu imports devenv with a bare python3 before any environment exists."""
    code = ("import sys; sys.path.insert(0, %r); import hywu_core.tools.devenv as d; "
            "assert 'torch' not in sys.modules; print(d.COMFYUI_VERSION)" % str(REPO))
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == devenv.COMFYUI_VERSION


def test_unknown_command_is_refused_with_usage(hywu):
    result = hywu("frobnicate")
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr
    assert "setup" in result.stderr and "run" in result.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^\s*(\./hywu \w+)\s*(?:#.*)?$", readme, flags=re.M)
    assert "./hywu test" in commands and "./hywu demo" in commands
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^\s*\./hywu test\s*$", ci, flags=re.M), ci


def test_requirements_txt_matches_pyproject_dependencies():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip()]
    normalise = lambda spec: spec.replace("'", '"').replace(" ", "")
    assert sorted(map(normalise, lines)) == sorted(map(normalise, pyproject["project"]["dependencies"]))
    comfy = pyproject["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and (REPO / comfy["Icon"]).is_file()
    assert pyproject["project"]["scripts"]["hywu"] == "hywu_core.tools.cli:main"


def test_comfyui_path_uses_the_users_own_comfyui(hywu, comfyui_dir, tmp_path):
    own = tmp_path / "MyComfyUI"
    shutil.copytree(comfyui_dir, own, ignore=shutil.ignore_patterns("custom_nodes", "user", "output", "temp", "input",
                                                                    "__pycache__", devenv.DONE_MARKER))
    result = hywu("env", env={**os.environ, "COMFYUI_PATH": str(own)})
    assert result.returncode == 0, result.stderr
    assert f"COMFYUI_DIR={own}" in result.stdout.splitlines()
    assert (own / "custom_nodes" / devenv.PACK_LINK_NAME).resolve() == REPO
    assert "creating environment" not in result.stderr, "same requirements must reuse the environment"


def test_comfyui_path_that_is_not_comfyui_is_a_clear_error(hywu, tmp_path):
    result = hywu("setup", env={**os.environ, "COMFYUI_PATH": str(tmp_path)})
    assert result.returncode == 1
    assert f"COMFYUI_PATH={tmp_path} is not a ComfyUI checkout" in result.stderr


def test_pack_folder_in_the_way_is_not_overwritten(hywu, comfyui_dir, tmp_path):
    own = tmp_path / "Other"
    shutil.copytree(comfyui_dir, own, ignore=shutil.ignore_patterns("custom_nodes", "user", "output", "temp", "input",
                                                                    "__pycache__", devenv.DONE_MARKER))
    (own / "custom_nodes" / devenv.PACK_LINK_NAME).mkdir(parents=True)
    result = hywu("setup", env={**os.environ, "COMFYUI_PATH": str(own)})
    assert result.returncode == 1
    assert "exists and is not a link to this checkout" in result.stderr
    assert (own / "custom_nodes" / devenv.PACK_LINK_NAME).is_dir()


@pytest.mark.parametrize("command", ["run", "demo", "generate-lora", "train", "bench", "demo-family", "experiment"])
def test_every_python_subcommand_is_reachable_through_the_bootstrap(hywu, command):
    result = hywu(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter over `root` with the contracts in its pyproject.toml (docs/design.md, "The layer contract")."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_layer_contract_is_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize("module, upward", [("hywu_core/lora.py", "hywu_core.train.loop"),
                                            ("hywu_core/train/backbone.py", "hywu_core.demo.edits"),
                                            ("hywu_core/kernels/reference.py", "hywu_core.lora")])
def test_layer_contract_catches_an_upward_import(tmp_path, module, upward):
    for name in ("hywu_core", "nodes"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "inputs"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\nimport {upward}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "BROKEN" in result.stdout and upward in result.stdout, result.stdout


# ---- two checkouts sharing one HYWU_HOME each load their own pack -----------------------------------

def copy_checkout(target: Path) -> Path:
    """A second checkout of the pack (what ComfyUI imports and ./hywu needs), its fingerprint node renamed."""
    target.mkdir()
    for name in ("hywu", "__init__.py", "pyproject.toml", "requirements.txt", "requirements-dev.txt"):
        shutil.copy2(REPO / name, target / name)
    for name in ("nodes", "hywu_core", "js"):
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "inputs"))
    node = target / "nodes" / "model_fingerprint.py"
    node.write_text(node.read_text().replace('display_name="HYWU Model Fingerprint"',
                                             'display_name="HYWU Model Fingerprint (other checkout)"'))
    return target


def imported_pack_paths(log: str) -> list[str]:
    """The ComfyUI-HY-WU folders a server's import-times table lists."""
    return re.findall(r"^\s*[\d.]+ seconds(?: \(IMPORT FAILED\))?: (.*/ComfyUI-HY-WU)$", log, flags=re.M)


def test_two_checkouts_sharing_hywu_home_each_start_servers_with_their_own_pack(comfyui_dir, tmp_path):
    """The other checkout's setup runs (./hywu serve) while this checkout's tools start a server without
    running setup again, as a test session does: each server imports its own checkout, and the shared
    ComfyUI tree holds no pack link. Before, setup re-pointed the tree's one link, so this checkout's
    server imported the other checkout's code."""
    import json
    import signal
    import urllib.request

    from hywu_core.tools.comfy_server import ComfyServer, free_port

    if os.environ.get("COMFYUI_PATH"):
        pytest.skip("COMFYUI_PATH: a user's own ComfyUI keeps the one link setup puts into its custom_nodes")
    other = copy_checkout(tmp_path / "other-checkout")
    port, log_path = free_port(), tmp_path / "other.log"
    with open(log_path, "w") as log:
        # SIGINT restored: a suite started in the background (`./hywu test &`) runs with it ignored.
        process = subprocess.Popen([str(other / "hywu"), "serve", "--port", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkouts = devenv.hywu_home() / "checkouts"
    try:
        deadline, info = time.monotonic() + 180, None
        while info is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/HYWUModelFingerprint",
                                            timeout=2) as response:
                    info = json.load(response)
            except OSError:
                time.sleep(0.5)
        assert info is not None, log_path.read_text()
        with ComfyServer(comfyui_dir, workdir=tmp_path / "this", log_path=tmp_path / "this.log") as server:
            with urllib.request.urlopen(f"{server.url}/object_info/HYWUModelFingerprint", timeout=10) as response:
                this_info = json.load(response)
            this_log = server.log_text()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)
        other_links = [p for p in checkouts.glob("other-checkout-*/custom_nodes/ComfyUI-HY-WU") if p.resolve() == other]
        for link in other_links:  # the other checkout's folder under the shared HYWU_HOME
            shutil.rmtree(link.parent.parent)
    other_log = log_path.read_text()
    assert info["HYWUModelFingerprint"]["display_name"] == "HYWU Model Fingerprint (other checkout)"
    assert this_info["HYWUModelFingerprint"]["display_name"] == "HYWU Model Fingerprint"
    assert len(other_links) == 1, list(checkouts.iterdir())
    assert imported_pack_paths(other_log) == [str(other_links[0])], other_log
    assert imported_pack_paths(this_log) == [str(devenv.checkout_home() / "custom_nodes" / "ComfyUI-HY-WU")], this_log
    assert not os.path.lexists(comfyui_dir / "custom_nodes" / devenv.PACK_LINK_NAME)


# ---- registry metadata: comfy-cli's `comfy node validate` ------------------------------------------

def comfy_node_validate(folder: Path, home: Path) -> subprocess.CompletedProcess:
    """`comfy node validate` (comfy-cli, pinned in requirements-dev.txt) on folder/pyproject.toml: what the
    registry runs before publishing. Non-interactive and offline: --skip-prompt, no terminal on stdin, and
    DO_NOT_TRACK / COMFY_NO_TELEMETRY (comfy-cli 1.23.0 tracking.py: either one turns off the consent prompt
    and every event); HOME is a scratch folder, so comfy-cli's config.ini lands there, not in the user's."""
    comfy = Path(sys.executable).parent / "comfy"
    assert comfy.is_file(), f"comfy-cli is not installed in {Path(sys.executable).parent} (requirements-dev.txt)"
    env = {**os.environ, "HOME": str(home), "DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1"}
    return subprocess.run([str(comfy), "--skip-prompt", "node", "validate"], cwd=folder, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def validation_problems(result: subprocess.CompletedProcess) -> list[str]:
    """comfy-cli's warnings and errors (on stdout or, through rich, stderr): a warning (a bad classifier, version
    range or license, or ruff's security findings) keeps exit code 0 but would drop that field from what is
    published or soon fail publishing, so it counts as a failure here too."""
    return [line for line in (result.stdout + result.stderr).splitlines()
            if re.search(r"\b(warnings?|errors?)\b", line, flags=re.I)]


def test_registry_metadata_passes_comfy_node_validate(tmp_path):
    result = comfy_node_validate(REPO, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All validation checks passed successfully" in result.stdout + result.stderr, result.stdout + result.stderr
    assert not validation_problems(result), result.stdout + result.stderr


@pytest.mark.parametrize("change, expected", [
    (lambda text: re.sub(r'(?m)^version = .*\n', "", text, count=1), "project version is empty"),
    (lambda text: text.replace('"Operating System :: OS Independent"', '"Operating System :: Amiga"'),
     "Invalid Operating System classifier"),
    (lambda text: text.replace('requires-comfyui = ">=0.3.75"', 'requires-comfyui = "newest"'),
     "Invalid requires-comfyui format"),
    (lambda text: text.replace('license = { file = "LICENSE" }', 'license = { name = "LICENSE" }'),
     "License should be in one of these two formats"),
], ids=["no version", "bad OS classifier", "bad ComfyUI range", "bad license"])
def test_comfy_node_validate_catches_broken_metadata(tmp_path, change, expected):
    broken = change((REPO / "pyproject.toml").read_text())
    assert broken != (REPO / "pyproject.toml").read_text(), "the change must apply to the real pyproject.toml"
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "pyproject.toml").write_text(broken)
    result = comfy_node_validate(tmp_path / "pack", tmp_path)
    assert result.returncode != 0 or validation_problems(result), result.stdout + result.stderr
    assert expected in result.stdout + result.stderr
