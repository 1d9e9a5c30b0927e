"""`.ci/run`'s exit codes, and that ComfyServer (the tests' server fixture) leaves no process behind."""
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hywu_core.tools.comfy_server import ComfyServer, ServerError

REPO = Path(__file__).resolve().parent.parent


def run_ci(pytest_addopts: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTEST_ADDOPTS": f"-p no:cacheprovider {pytest_addopts}"}
    return subprocess.run([str(REPO / ".ci" / "run")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_ci_run_fails_when_pytest_collects_no_tests(hywu):
    """Everything here is real: the repository's own .ci/run, ./hywu test and pytest. Only
    PYTEST_ADDOPTS (which pytest reads and ./hywu passes on) selects the tests: a -k that matches
    none makes pytest exit 5 ("no tests collected"), which .ci/run must turn into a failure."""
    nothing = "-k no_such_test_name_anywhere"
    plain = hywu("test", "-q", env={**os.environ, "PYTEST_ADDOPTS": f"-p no:cacheprovider {nothing}"})
    assert plain.returncode == 5, plain.stdout + plain.stderr

    ci = run_ci(nothing)
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "CI: no tests were collected" in ci.stderr


def test_ci_run_passes_pytests_other_exit_codes_through():
    """The real .ci/run: one real passing test gives 0; a pytest usage error (exit 4) stays 4."""
    passing = run_ci("-q -k test_env_key_follows_every_requirement_line")
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "1 passed" in passing.stdout

    usage_error = run_ci("--no-such-pytest-option")
    assert usage_error.returncode == 4, usage_error.stdout + usage_error.stderr


# ---- ComfyServer stops the server and its children ------------------------------------------------

WORKER = """\
import os, signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
if sys.argv[2:] == ["spawn"]:
    subprocess.Popen([sys.executable, __file__, sys.argv[1]])
time.sleep(600)
"""


@pytest.fixture
def launcher(tmp_path):
    """A `python` for ComfyServer that starts a worker, which starts a worker of its own (both ignore
    SIGINT and SIGTERM and append their pids to tmp_path/worker.pids), waits until both run, then
    execs the real interpreter on ComfyUI's main.py. ComfyUI 0.3.75 starts no child processes itself,
    so this is what gives the server a tree to clean up: the real ComfyUI with the pack is the server
    process, with a child and a grandchild."""
    worker, pids = tmp_path / "worker.py", tmp_path / "worker.pids"
    worker.write_text(WORKER)
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\n"{sys.executable}" "{worker}" "{pids}" spawn &\n'
                      f'while [ "$(cat "{pids}" 2>/dev/null | wc -l)" -lt 2 ]; do sleep 0.05; done\n'
                      f'exec "{sys.executable}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def worker_pids(tmp_path) -> set[int]:
    return {int(line) for line in (tmp_path / "worker.pids").read_text().split()}


def make_server(comfyui_dir, tmp_path, launcher, **options) -> ComfyServer:
    return ComfyServer(comfyui_dir, workdir=tmp_path / "server", log_path=tmp_path / "comfyui.log",
                       python=str(launcher), **options)


def process_tree(server: ComfyServer, tmp_path) -> list[psutil.Process]:
    """The running server process and all its descendants (psutil); checked to be it plus the two workers."""
    root = psutil.Process(server.process.pid)
    tree = [root, *root.children(recursive=True)]
    assert "main.py" in " ".join(root.cmdline())
    assert {p.pid for p in tree[1:]} == worker_pids(tmp_path), [p.cmdline() for p in tree]
    return tree


def still_alive(tree: list[psutil.Process], timeout: float = 10.0) -> list[str]:
    """Processes of `tree` still running (a zombie counts as gone) after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for process in tree:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{process.pid} {' '.join(process.cmdline())}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def kill_leftovers(tmp_path) -> None:
    """Leave no worker behind when a test fails (they ignore SIGINT and SIGTERM)."""
    if (tmp_path / "worker.pids").is_file():
        for pid in worker_pids(tmp_path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("how", ["stop", "exception_in_with"])
def test_server_and_its_children_are_gone_after_stop(comfyui_dir, tmp_path, launcher, how):
    server = make_server(comfyui_dir, tmp_path, launcher)
    try:
        if how == "stop":
            server.start()
            tree = process_tree(server, tmp_path)
            server.stop()
        else:
            with pytest.raises(RuntimeError, match="fails inside the with block"):
                with server:
                    tree = process_tree(server, tmp_path)
                    raise RuntimeError("a test body that fails inside the with block")
        assert still_alive(tree) == []
        assert server.process is None
    finally:
        kill_leftovers(tmp_path)


def test_children_of_a_crashed_server_are_stopped_too(comfyui_dir, tmp_path, launcher):
    """The server process dies on its own (here SIGKILL, as from the OOM killer) and leaves its
    children running; stop() must still end them."""
    server = make_server(comfyui_dir, tmp_path, launcher)
    try:
        server.start()
        tree = process_tree(server, tmp_path)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        assert len(still_alive(tree[1:], timeout=0)) == 2, "the children outlive the server"
        server.stop()
        assert still_alive(tree) == []
    finally:
        kill_leftovers(tmp_path)


def test_children_of_a_server_that_fails_to_start_are_stopped(comfyui_dir, tmp_path, launcher):
    """ComfyUI exits while starting (an unknown flag): start() raises ServerError, and since
    `with server:` never reaches __exit__ then, start() itself must end the process tree."""
    server = make_server(comfyui_dir, tmp_path, launcher, extra_args=("--no-such-comfyui-flag",))
    try:
        with pytest.raises(ServerError, match="exited with code 2 while starting"):
            with server:
                pytest.fail("the server must not start")
        workers = []
        for pid in worker_pids(tmp_path):
            try:
                workers.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        assert len(worker_pids(tmp_path)) == 2
        assert still_alive(workers) == []
    finally:
        kill_leftovers(tmp_path)
