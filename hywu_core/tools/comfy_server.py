"""Start and stop a real ComfyUI server as a child process (tests, `./hywu serve`, `./hywu run`).

Facts about ComfyUI 0.3.75 this relies on:
- main.py takes --input/--output/--user/--temp-directory and --database-url; the temp
  directory is wiped at start, so two servers sharing one tree need their own.
- With a CUDA build of torch and no GPU, ComfyUI stops at start unless given --cpu.
- Custom node import failures do not stop the server: they are logged as a traceback and
  "(IMPORT FAILED)" in the import-times table, so callers must read the log.
- Extra custom node folders come from an --extra-model-paths-config yaml ("custom_nodes" key);
  every server started here gets this checkout's own folder that way (devenv.pack_server_args),
  so checkouts sharing one ComfyUI tree each import their own pack.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from hywu_core.tools import devenv

# Model folder names a server started with models_dir= gets inside it (ComfyUI's own + the pack's).
MODEL_FOLDERS = ("hywu", "hywu_encoders", "hunyuan3", "checkpoints", "diffusion_models", "loras", "vae", "text_encoders")


class ServerError(RuntimeError):
    """The ComfyUI server did not start or stopped unexpectedly; the message holds its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def has_cuda() -> bool:
    override = os.environ.get("HYWU_DEVICE")
    if override:
        return override.lower() != "cpu"
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def server_command(comfy_dir: Path, port: int, host: str = "127.0.0.1", *, python: str | None = None,
                   cpu: bool | None = None, input_dir: Path | None = None, output_dir: Path | None = None,
                   user_dir: Path | None = None, temp_dir: Path | None = None,
                   extra_args: tuple[str, ...] = ()) -> list[str]:
    cmd = [python or sys.executable, str(Path(comfy_dir) / "main.py"), "--listen", host, "--port", str(port),
           "--disable-auto-launch"]
    if cpu if cpu is not None else not has_cuda():
        cmd.append("--cpu")
    for flag, value in (("--input-directory", input_dir), ("--output-directory", output_dir),
                        ("--user-directory", user_dir), ("--temp-directory", temp_dir)):
        if value is not None:
            Path(value).mkdir(parents=True, exist_ok=True)
            cmd += [flag, str(Path(value).resolve())]
    if user_dir is not None:
        cmd += ["--database-url", f"sqlite:///{Path(user_dir).resolve() / 'comfyui.db'}"]
    try:
        cmd += devenv.pack_server_args(Path(comfy_dir))  # this checkout's pack, and no other copy
    except devenv.SetupError as error:
        raise ServerError(str(error)) from None
    return cmd + list(extra_args)


class ComfyServer:
    """A ComfyUI server on a loopback port; a context manager that always stops it and its children.

    With workdir given, input/output/user/temp directories live under it (isolated run);
    without, ComfyUI's own folders are used (what `./hywu serve` wants). With models_dir given,
    its MODEL_FOLDERS subfolders are added to ComfyUI's model search paths through an
    extra_model_paths.yaml, first in the search order (ComfyUI's own folders stay searched too).
    """

    def __init__(self, comfy_dir: Path, *, port: int | None = None, host: str = "127.0.0.1",
                 workdir: Path | None = None, python: str | None = None, cpu: bool | None = None,
                 extra_args: tuple[str, ...] = (), log_path: Path | None = None,
                 models_dir: Path | None = None):
        self.comfy_dir = Path(comfy_dir)
        self.host = host
        self.port = port
        self.workdir = Path(workdir) if workdir is not None else None
        self.python = python
        self.cpu = cpu
        self.extra_args = tuple(extra_args)
        self.models_dir = Path(models_dir).resolve() if models_dir is not None else None
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="comfyui-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def input_dir(self) -> Path:
        return (self.workdir or self.comfy_dir) / "input"

    @property
    def output_dir(self) -> Path:
        return (self.workdir or self.comfy_dir) / "output"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def model_paths_config(self) -> Path:
        """Write the extra_model_paths.yaml that maps MODEL_FOLDERS under models_dir."""
        for folder in MODEL_FOLDERS:
            (self.models_dir / folder).mkdir(parents=True, exist_ok=True)
        config = self.log_path.with_suffix(".extra_model_paths.yaml")
        config.write_text("hywu_server:\n" f"    base_path: {self.models_dir}\n    is_default: true\n" +
                          "".join(f"    {folder}: {folder}\n" for folder in MODEL_FOLDERS))
        return config

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        port = self.port or free_port(self.host)
        dirs = {}
        if self.workdir is not None:
            dirs = {name: self.workdir / name.removesuffix("_dir") for name in ("input_dir", "output_dir", "user_dir", "temp_dir")}
        extra_args = self.extra_args
        if self.models_dir is not None:
            extra_args += ("--extra-model-paths-config", str(self.model_paths_config()))
        cmd = server_command(self.comfy_dir, port, self.host, python=self.python, cpu=self.cpu,
                             extra_args=extra_args, **dirs)
        self.port = port
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()     # its children may live on; `with` never reaches __exit__ from here
                raise ServerError(f"ComfyUI exited with code {code} while starting; "
                                  f"log {self.log_path}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/system_stats", timeout=2) as response:
                    json.load(response)
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                time.sleep(0.25)
        self.stop()
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s; "
                          f"log {self.log_path}:\n{self._log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """Interrupt the server's whole process group, then terminate and kill what is left.

        The group outlives the server process when it has died on its own and left children
        behind, so they are killed then too."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    return
                try:
                    process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
