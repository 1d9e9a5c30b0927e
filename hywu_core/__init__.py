"""hywu_core: HY-WU "Weight Unleashing" in pure PyTorch, importable without ComfyUI.

Light on purpose: the stdlib-only bootstrap (`./hywu`) imports this package before any
environment with torch exists, so submodules are imported where they are used.
"""

__version__ = "0.1.0"
