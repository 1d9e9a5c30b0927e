"""ComfyUI-HY-WU: the ComfyUI entry point (V3 API).

ComfyUI imports a custom node folder as a package under a path-derived module name, so
the pack's own folder is appended to sys.path to make `hywu_core` importable by its plain
name (one copy of its classes for nodes, CLI and training). Appended, not prepended: the
pack's `nodes/` package must never shadow ComfyUI's top-level `nodes` module.

The nodes use the versioned V3 API `comfy_api.v0_0_2` (io, ComfyExtension), not
`comfy_api.latest`, which ComfyUI may change in any release. ComfyUI 0.3.75 fact: v0_0_2
re-exports latest's `io` module and `ComfyExtension` unchanged.
"""
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

from comfy_api.v0_0_2 import ComfyExtension, io  # noqa: E402

from .nodes import NODES  # noqa: E402

WEB_DIRECTORY = "./js"


class HYWUExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> HYWUExtension:
    return HYWUExtension()
