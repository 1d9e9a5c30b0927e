"""The memory table's parameter counts, computed from a config alone, equal the checkpoint's actual weights."""
import math

from safetensors import safe_open

from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.memory import (
    RELEASE_SHAPES,
    kv_bytes_per_token,
    parameter_counts,
)
from tests.hunyuan3.helpers import DATA


def test_counts_from_the_config_equal_the_checkpoint():
    folder = open_folder(str(DATA / "tiny_model"))
    stored = {}
    for shard in folder.shards:
        with safe_open(str(DATA / "tiny_model" / shard), framework="pt") as f:
            for key in f.keys():
                stored[key] = f.get_slice(key).get_shape()
    numel = {k: math.prod(shape) for k, shape in stored.items()}
    counts = parameter_counts(folder.config)
    assert counts["VAE"] == sum(n for k, n in numel.items() if k.startswith("vae."))
    assert counts["vision tower + aligner"] == sum(n for k, n in numel.items() if k.startswith("vision_"))
    assert counts["transformer"] == sum(n for k, n in numel.items() if not k.startswith(("vae.", "vision_")))
    assert counts["of which routed experts"] == sum(n for k, n in numel.items() if ".mlp.experts." in k)


def test_release_shapes_give_the_published_size_and_kv_per_token():
    counts = parameter_counts(RELEASE_SHAPES)
    assert 80e9 < counts["transformer"] < 85e9          # "80B total" in the release's description
    assert kv_bytes_per_token(RELEASE_SHAPES) == 2 * 32 * 8 * 128 * 2
