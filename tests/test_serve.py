"""`./hywu serve`: ComfyUI with the pack on loopback; Ctrl-C stops it cleanly."""
import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from hywu_core.tools.comfy_server import free_port

REPO = Path(__file__).resolve().parent.parent


def test_serve_answers_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    # A shell running the suite in the background (`./hywu test &`) starts it with SIGINT ignored, which the
    # server would inherit (Python then installs no KeyboardInterrupt handler): give it Ctrl-C as a terminal does.
    process = subprocess.Popen([str(REPO / "hywu"), "serve", "--port", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        stats = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=2) as response:
                    stats = json.load(response)
                    break
            except OSError:
                time.sleep(0.5)
        assert stats is not None, (tmp_path / "serve.log").read_text()
        extensions = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/extensions"))
        assert "/extensions/ComfyUI-HY-WU/hywu.js" in extensions
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        text = (tmp_path / "serve.log").read_text()
        assert "Stopped server" in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=2)
        raise AssertionError("the server still answers after Ctrl-C")
    except OSError:
        pass
