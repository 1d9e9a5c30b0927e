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


def test_generator_and_lora_counts_match_the_tiny_generator_and_its_lora():
    import json

    from safetensors.torch import load_file

    from hywu_core.generator_files import RELEASE_CONFIG, load_generator
    from hywu_core.hunyuan3.memory import configurations, generator_counts

    folder = DATA / "tiny_generator"
    counts = generator_counts(json.loads((folder / "config.json").read_text()))
    assert counts["generator"] == sum(p.numel() for p in load_generator(folder).parameters())
    lora = load_file(str(DATA / "hywu_reference.safetensors"))
    assert counts["lora"] == sum(v.numel() for k, v in lora.items() if k.startswith("hywu.lora.") and "lora_" in k)
    kept, released = configurations(RELEASE_SHAPES, RELEASE_CONFIG, 11192)[1:]
    assert kept[1].split(", ")[0] == released[1].split(", ")[0]          # generating: the same
    assert float(released[1].split("sampling ")[1].split()[0]) < float(kept[1].split("sampling ")[1].split()[0])
