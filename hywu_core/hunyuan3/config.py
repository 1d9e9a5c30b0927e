"""A HunyuanImage-3.0(-Instruct) model folder, as users download it from Hugging Face.

The folder holds config.json (the model, with `vae`, `vit` and `vit_aligner` sub-configs),
generation_config.json (steps, guidance, flow shift, system prompt and CoT defaults), the weights
(`model.safetensors`, or shards named by `model.safetensors.index.json`) and the tokenizer
(tokenizer.json). `open_folder` checks all of that up front and names what is missing;
`ModelFolder.state_dict` reads weights through safetensors only, lazily per prefix, so a caller can
load the VAE without touching the 80B trunk.
"""
import json
import os
from dataclasses import dataclass, field

from safetensors import SafetensorError, safe_open

ARCHITECTURE = "HunyuanImage3ForCausalMM"
REQUIRED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "num_experts",
                   "moe_topk", "patch_size", "image_base_size", "vae", "vit", "vit_aligner")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class FolderError(ValueError):
    """A folder that is not a usable HunyuanImage-3 model; the message names the file and the fix."""


@dataclass
class ModelFolder:
    path: str
    config: dict
    generation: dict
    weight_map: dict = field(repr=False)        # key -> shard file name (inside `path`)
    tokenizer_file: str = ""

    @property
    def shards(self):
        return sorted(set(self.weight_map.values()))

    def keys(self, prefix=""):
        return [k for k in self.weight_map if k.startswith(prefix)]

    def state_dict(self, prefix="", strip=True, dtype=None):
        """{key: tensor} for every weight under `prefix` (the prefix removed when `strip`)."""
        by_shard = {}
        for key in self.keys(prefix):
            by_shard.setdefault(self.weight_map[key], []).append(key)
        out = {}
        for shard, keys in sorted(by_shard.items()):
            fn = os.path.join(self.path, shard)
            try:
                with safe_open(fn, framework="pt") as f:
                    present = set(f.keys())
                    missing = [k for k in keys if k not in present]
                    if missing:
                        raise FolderError(f"{fn} lacks {len(missing)} weight(s) the index names (e.g. {missing[0]!r}); "
                                          "the shard is from another download: download the folder again")
                    for k in keys:
                        t = f.get_tensor(k)
                        out[k[len(prefix):] if strip else k] = t if dtype is None else t.to(dtype)
            except (SafetensorError, OSError, RuntimeError) as e:
                if isinstance(e, FolderError):
                    raise
                raise FolderError(f"cannot read {fn}: {e}. The file is truncated or corrupt (an interrupted download?): "
                                  "download it again") from e
        return out


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise FolderError(f"{os.path.dirname(path)} has no {os.path.basename(path)} ({what}); "
                          "choose the HunyuanImage-3.0-Instruct folder as downloaded from Hugging Face") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FolderError(f"{path} is not valid JSON ({e}); download it again") from e
    if not isinstance(value, dict):
        raise FolderError(f"{path} holds a {type(value).__name__}, not a JSON object; download it again")
    return value


def _inside(folder, name):
    """`name` as a path inside `folder`, or a FolderError (an index must not point outside its folder)."""
    full = os.path.realpath(os.path.join(folder, name))
    root = os.path.realpath(folder)
    if os.path.isabs(name) or os.path.commonpath([full, root]) != root:
        raise FolderError(f"{os.path.join(folder, INDEX_FILE)} names {name!r}, outside the model folder; "
                          "weights must sit in the folder itself")
    return full


def _weight_map(folder):
    index_path = os.path.join(folder, INDEX_FILE)
    if os.path.exists(index_path):
        index = _read_json(index_path, "the weight index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise FolderError(f"{index_path} has no weight_map; download it again")
        for name in sorted(set(weight_map.values())):
            if not str(name).endswith(".safetensors"):
                raise FolderError(f"{index_path} names {name!r}: only .safetensors weights are loaded")
            if not os.path.isfile(_inside(folder, name)):
                raise FolderError(f"{folder} lacks the shard {name} that {INDEX_FILE} names; the download is "
                                  "incomplete: download the missing shard(s)")
        return dict(weight_map)
    single = os.path.join(folder, SINGLE_FILE)
    if os.path.isfile(single):
        try:
            with safe_open(single, framework="pt") as f:
                return {k: SINGLE_FILE for k in f}
        except (SafetensorError, OSError) as e:
            raise FolderError(f"cannot read {single}: {e}; download it again") from e
    if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in os.listdir(folder)):
        raise FolderError(f"{folder} has only pickle weights (.bin/.pt); only .safetensors are loaded: download the "
                          "safetensors release")
    raise FolderError(f"{folder} has neither {INDEX_FILE} nor {SINGLE_FILE}; choose the folder that holds the "
                      "HunyuanImage-3.0-Instruct weights")


def open_folder(path):
    """Check a HunyuanImage-3 folder and return its ModelFolder; FolderError names anything missing."""
    if not os.path.isdir(path):
        raise FolderError(f"{path} is not a folder; give the HunyuanImage-3.0-Instruct folder as downloaded")
    config = _read_json(os.path.join(path, "config.json"), "the model config")
    missing = [k for k in REQUIRED_CONFIG if k not in config]
    if ARCHITECTURE not in config.get("architectures", [ARCHITECTURE]) or missing:
        found = config.get("architectures") or config.get("model_type") or "no architecture"
        raise FolderError(f"{path}/config.json is not a HunyuanImage-3 config ({found}"
                          + (f"; missing {', '.join(missing)}" if missing else "")
                          + "): choose the HunyuanImage-3.0-Instruct folder")
    generation = _read_json(os.path.join(path, "generation_config.json"), "steps, guidance and flow shift")
    tokenizer_file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        raise FolderError(f"{path} has no tokenizer.json; download the tokenizer files with the weights")
    return ModelFolder(path=path, config=config, generation=generation, weight_map=_weight_map(path),
                       tokenizer_file=tokenizer_file)

