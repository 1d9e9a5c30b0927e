"""The pack's ComfyUI nodes (V3 schema). Thin: parse inputs, call hywu_core, return outputs."""
from . import model_folders
from .load_generator import HYWULoadGenerator

model_folders.register()

NODES = [HYWULoadGenerator]
