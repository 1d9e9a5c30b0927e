"""The pack inside a real ComfyUI server: it loads cleanly and every node it registers is served."""
import re

import pytest


@pytest.fixture(scope="session")
def pack_node_ids(pack):
    """Node ids the pack's V3 extension returns, read in-process through its comfy_entrypoint()."""
    import asyncio

    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return [node.GET_SCHEMA().node_id for node in nodes]


def traceback_blocks(log: str) -> list[str]:
    """Each Python traceback in a log: its header, the indented frames, and the exception line."""
    blocks, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            current = [line]
            blocks.append(current)
        elif current is not None:
            current.append(line)
            if line and not line.startswith(" "):
                current = None
    return ["\n".join(block) for block in blocks]


def test_traceback_blocks_end_at_the_exception_line():
    log = "a\nTraceback (most recent call last):\n  File \"x.py\"\n    boom()\nValueError: no\nlater line\n"
    assert traceback_blocks(log) == ['Traceback (most recent call last):\n  File "x.py"\n    boom()\nValueError: no']


def startup_log(log: str) -> str:
    """The server log up to ComfyUI's "To see the GUI go to" line: the import phase, before any prompt
    (other tests send deliberately broken prompts whose node errors name the pack)."""
    end = log.find("To see the GUI go to")
    assert end >= 0, f"the server log has no startup line:\n{log}"
    return log[:end]


def test_pack_imports_without_errors(comfy_server):
    log = startup_log(comfy_server.log_text())
    timing = [line for line in log.splitlines() if re.search(r"seconds.*custom_nodes/ComfyUI-HY-WU$", line)]
    assert timing, f"the pack does not appear in ComfyUI's custom node import list:\n{log}"
    assert "IMPORT FAILED" not in timing[0], timing[0]
    for block in traceback_blocks(log):
        assert "ComfyUI-HY-WU" not in block and "hywu_core" not in block, block
    assert not [line for line in log.splitlines() if "Cannot import" in line and "ComfyUI-HY-WU" in line]


def test_every_pack_node_is_in_object_info(client, pack_node_ids):
    assert pack_node_ids, "the pack registers no nodes"
    info = client.object_info()
    missing = [node_id for node_id in pack_node_ids if node_id not in info]
    assert not missing, f"registered but not served: {missing}"
    for node_id in pack_node_ids:
        assert info[node_id]["category"].startswith("HY-WU"), info[node_id]
        assert info[node_id]["python_module"].startswith("custom_nodes."), info[node_id]


def test_frontend_extension_is_served(client):
    extensions = client.get_json("/extensions")
    assert "/extensions/ComfyUI-HY-WU/hywu.js" in extensions
    source = client._request("/extensions/ComfyUI-HY-WU/hywu.js").decode()
    assert "app.registerExtension" in source
