"""On-the-fly end-to-end generator training through a frozen ComfyUI backbone (paper §3.6-3.7).

    config      the TOML config (TrainConfig, load_config, ConfigError)
    data        JSONL manifest checking (ManifestError), images, data order
    synthetic   procedural edit datasets (brighten / darken) written as files
    backbone    the frozen backbone loaded through comfy as a library; edit conditioning
    objective   the backbone's own denoising loss with per-sample LoRAs injected
    loop        the trainer: AdamW, warmup + cosine, clipping, accumulation, checkpoints, resume
    state       training-state files (safetensors + JSON metadata)
    distributed torchrun / FSDP2 sharding of the generator
    validation  sample grids through ComfyUI with the generated LoRAs
    bench       steps/s and peak memory with and without gradient checkpointing

Entry points: `./hywu train CONFIG`, `python -m hywu_core.train CONFIG`, `train(load_config(path))`.
Nothing here imports comfy at import time.
"""
import importlib

_EXPORTS = {"ConfigError": "config", "TrainConfig": "config", "load_config": "config",
            "ManifestError": "data", "read_manifest": "data", "TrainResult": "loop", "train": "loop"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Exports load on first use, so `hywu` sub-commands that only build the parser stay light."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
