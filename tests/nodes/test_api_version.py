"""The nodes use ComfyUI's versioned V3 API (comfy_api.v0_0_2), never the unstable comfy_api.latest."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_SOURCES = [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py"))]


def comfy_api_imports(path: Path) -> list[str]:
    """Every comfy_api module a file imports (import x / from x import y)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("comfy_api"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("comfy_api")]
    return found


def io_names(path: Path) -> set[str]:
    """Dotted names used on `io` in a file, e.g. "Model.Input", "ComfyNode"."""
    return set(re.findall(r"\bio\.([A-Za-z_]+(?:\.[A-Za-z_]+)?)", path.read_text()))


def test_the_pack_imports_only_the_versioned_api():
    imports = {path.relative_to(REPO).as_posix(): comfy_api_imports(path) for path in PACK_SOURCES}
    assert all(modules == ["comfy_api.v0_0_2"] for modules in imports.values() if modules), imports
    assert sum(map(len, imports.values())) >= 10, imports  # the root __init__ and every node module


def test_every_io_type_the_nodes_use_exists_in_v0_0_2(comfy_lib):
    from comfy_api.v0_0_2 import ComfyExtension, io  # noqa: F401

    used = set().union(*map(io_names, PACK_SOURCES))
    assert {"ComfyNode", "Schema", "NodeOutput", "Model.Input", "Custom"} <= used, used
    missing = []
    for name in sorted(used):
        obj = io
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            missing.append(name)
    assert not missing, f"not in comfy_api.v0_0_2.io: {missing}"
