"""Hybrid condition extraction (paper §3.3): U = [Enc_img(I) ⊕ Enc_text(p)].

A transformers dual encoder (SigLIP2 as in the paper; SigLIP and CLIP work too) reads the
source image, any reference images (multi-image edits) and the edit instruction. U is the
concatenation along the sequence of

    image tokens   last hidden states of the vision tower, one block per image (source first,
                   then each reference batch in order)
    text tokens    last hidden states of the text tower, padded to the encoder's fixed text
                   length (the SigLIP recipe: padding="max_length")

The mask is True for real tokens: text padding and, for SigLIP2's NaFlex inputs, padded
patches are False, and U is exactly 0 there. SigLIP and SigLIP2 towers share one width, which
is U's width as in the paper. When the towers differ (CLIP: e.g. 768 vision, 512 text), the
narrower features are zero-padded on the channel axis to the wider width: no new weights, no
information lost; the generator's input projection learns from the padded features.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hywu_core import checks

SUPPORTED_FAMILIES = ("siglip2", "siglip", "clip")
LOWERCASE_FAMILIES = ("siglip2", "siglip")  # trained on lowercased text

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class ConditionEncoder:
    """A loaded dual encoder that turns (images, instructions[, references]) into (U, mask)."""

    def __init__(self, model, tokenizer, image_processor, folder: Path):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.folder = folder
        self.family = model.config.model_type
        self.vision_width = model.config.vision_config.hidden_size
        self.text_width = model.config.text_config.hidden_size
        self.text_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        self.text_tower_uses_mask = "attention_mask" in tokenizer.model_input_names

    @property
    def width(self) -> int:
        """D, the channel width of U."""
        return max(self.vision_width, self.text_width)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        return (f"ConditionEncoder({self.family}, width={self.width}, text_length={self.text_length}, "
                f"folder={str(self.folder)!r})")

    def encode(self, images: Tensor, instructions: str | Sequence[str],
               references: Tensor | Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """U (N, L, D) in the encoder's dtype and device, and its mask (N, L) bool, True = real.

        Gradients flow only into a trainable encoder: a loaded one is frozen (requires_grad off).

        images: (N, H, W, 3) float in [0, 1] (ComfyUI IMAGE). instructions: one string for the
        whole batch or N strings; text beyond `text_length` tokens is truncated. references:
        extra image batches, each of 1 or N images; their tokens follow the source's, in order.
        """
        count = check_image_batch(images, "images")
        texts = match_instructions(instructions, count)
        batches = [images, *match_references(references, count)]

        pixels = self._pixel_inputs(batches)
        text = self._text_inputs(texts)
        text_mask = text.pop("attention_mask").bool()
        if self.text_tower_uses_mask:
            text["attention_mask"] = text_mask.long()
        output = self.model(**text, **pixels, return_dict=True)

        groups = len(batches)
        image_tokens = output.vision_model_output.last_hidden_state
        per_image = image_tokens.shape[1]
        image_tokens = image_tokens.reshape(groups, count, per_image, -1).transpose(0, 1)
        image_tokens = image_tokens.reshape(count, groups * per_image, -1)
        image_mask = pixels.get("pixel_attention_mask")
        if image_mask is None:
            image_mask = torch.ones(groups * count, per_image, dtype=torch.bool, device=self.device)
        image_mask = image_mask.bool().reshape(groups, count, per_image).transpose(0, 1).reshape(count, -1)

        text_tokens = output.text_model_output.last_hidden_state
        cond = torch.cat([self._to_width(image_tokens), self._to_width(text_tokens)], dim=1)
        mask = torch.cat([image_mask, text_mask], dim=1)
        cond = cond.masked_fill(~mask[..., None], 0.0)
        if not torch.isfinite(cond).all():
            raise ValueError(
                f"the condition encoder produced NaN/Inf features in {self.dtype}: check its weights, "
                "and load it in float32 if it runs in float16")
        return cond, mask

    def _pixel_inputs(self, batches: list[Tensor]) -> dict[str, Tensor]:
        """Runs the folder's image processor on each batch and joins them along the batch axis."""
        processed = [
            self.image_processor(
                images=batch.detach().to("cpu", torch.float32).permute(0, 3, 1, 2).contiguous(),
                do_rescale=False, input_data_format="channels_first", return_tensors="pt")
            for batch in batches
        ]
        joined = {key: torch.cat([p[key] for p in processed]) for key in processed[0].keys()}
        joined["pixel_values"] = joined["pixel_values"].to(self.dtype)
        return {key: value.to(self.device) for key, value in joined.items()}

    def _text_inputs(self, texts: list[str]) -> dict[str, Tensor]:
        if self.family in LOWERCASE_FAMILIES:
            texts = [text.lower() for text in texts]
        encoded = self.tokenizer(texts, padding="max_length", max_length=self.text_length, truncation=True,
                                 return_attention_mask=True, return_tensors="pt")
        return {key: encoded[key].to(self.device) for key in ("input_ids", "attention_mask")}

    def _to_width(self, tokens: Tensor) -> Tensor:
        return F.pad(tokens, (0, self.width - tokens.shape[-1]))


def check_image_batch(images, name: str) -> int:
    """Validates a ComfyUI IMAGE batch (N, H, W, 3) float and returns N."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch tensor (N, H, W, 3), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[-1] != 3:
        hint = " (drop the alpha channel: image[..., :3])" if images.dim() == 4 and images.shape[-1] == 4 else ""
        raise ValueError(f"{name} must have shape (N, H, W, 3) like a ComfyUI IMAGE, got {tuple(images.shape)}{hint}")
    if min(images.shape[:3]) == 0:
        raise ValueError(f"{name} is empty: shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1], got dtype {images.dtype}: divide 8-bit images by 255")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or Inf values: fix the node that produced the image")
    return images.shape[0]


def match_instructions(instructions: str | Sequence[str], count: int) -> list[str]:
    """One instruction per image: a single one broadcasts, N give one each."""
    if isinstance(instructions, str):
        instructions = [instructions]
    instructions = list(instructions)
    for index, text in enumerate(instructions):
        if not isinstance(text, str):
            raise TypeError(f"instruction {index} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"instruction {index} is empty: describe the edit, e.g. 'make the image sharper'")
    if not instructions:
        raise ValueError("no instruction given: describe the edit, e.g. 'make the image sharper'")
    if len(instructions) == 1:
        return instructions * count
    if len(instructions) != count:
        raise ValueError(
            f"got {len(instructions)} instructions for {count} images: give one instruction "
            f"(used for every image) or exactly {count}, one per image")
    return instructions


def match_references(references: Tensor | Sequence[Tensor] | None, count: int) -> list[Tensor]:
    """Reference image batches (multi-image edits), each validated and broadcast to N images."""
    if references is None:
        return []
    if isinstance(references, Tensor):
        references = [references]
    matched = []
    for index, reference in enumerate(references):
        reference_count = check_image_batch(reference, f"references[{index}]")
        if reference_count not in (1, count):
            raise ValueError(
                f"references[{index}] has {reference_count} images but there are {count} source images: "
                f"give 1 reference image (shared by every item) or {count}, one per item")
        matched.append(reference.expand(count, -1, -1, -1))
    return matched


def load_condition_encoder(folder: str | Path, device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32) -> ConditionEncoder:
    """Loads a transformers dual encoder folder (model, tokenizer, image processor) from local files only."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"condition encoder folder {folder} does not exist or is not a folder")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        has_bin = any(folder.glob("*.bin"))
        missing.append("model.safetensors" + (" (only a .bin checkpoint is there; convert it to safetensors)"
                                              if has_bin else ""))
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if not any((folder / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        missing.append(" or ".join(IMAGE_PROCESSOR_FILES))
    if missing:
        raise FileNotFoundError(
            f"condition encoder folder {folder} is missing {', '.join(missing)}: it must be a complete "
            "transformers model folder (the full repository of e.g. google/siglip2-base-patch16-naflex)")

    checks.read_json(folder / "config.json")  # bounded in size and valid JSON before transformers parses it
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if not (hasattr(config, "vision_config") and hasattr(config, "text_config")):
        raise ValueError(
            f"{folder} holds a '{config.model_type}' model, not a dual image+text encoder: "
            f"use one of {', '.join(SUPPORTED_FAMILIES)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"cannot load the tokenizer from {folder}: {error}") from error
    try:
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"cannot load the image processor from {folder}: {error}") from error
    check_weights_fit_config(folder, config)
    model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    model.requires_grad_(False)  # frozen, as the paper's SigLIP2; training unfreezes it when configured
    return ConditionEncoder(model.to(device=device, dtype=dtype), tokenizer, image_processor, folder)


def weight_files(folder: Path) -> list[Path]:
    """The files transformers loads with use_safetensors: model.safetensors, else the shards its index
    names (each confined to the folder, checked before transformers reads the index)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        return checks.index_shards(index)
    raise FileNotFoundError(f"condition encoder folder {folder} has no model.safetensors (or "
                            "model.safetensors.index.json with its shards): download the encoder folder again")


def weight_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from the safetensors headers (no tensor is read); a clear error for broken files."""
    from safetensors import SafetensorError, safe_open

    shapes = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes |= {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
        except (SafetensorError, OSError) as error:
            raise FileNotFoundError(f"{path} is not a readable safetensors file ({error}); it may be truncated "
                                    "(an interrupted download): download the encoder folder again") from error
    return shapes


def check_weights_fit_config(folder: Path, config) -> None:
    """Refuse a config.json that the weights do not back, before transformers builds anything.

    transformers builds the model its config describes and fills every weight the files lack
    with fresh initialised tensors, so config.json alone decides what loading costs. Here each
    tower's num_hidden_layers must equal the encoder layers in the weights (that bounds the
    Python modules of a meta-device build), then the model built on the meta device (no memory)
    must find every tensor of its state dict in the files with the same shape."""
    from transformers import AutoModel

    shapes = weight_shapes(weight_files(folder))
    for tower in ("vision", "text"):
        stated = getattr(config, f"{tower}_config").num_hidden_layers
        pattern = re.compile(rf"{tower}_model\.encoder\.layers\.(\d+)\.")
        present = len({match.group(1) for name in shapes if (match := pattern.match(name))})
        if stated != present:
            raise ValueError(f"{folder}/config.json: the {tower} tower has num_hidden_layers={stated!r} but the "
                             f"weights hold {present} {tower} layer(s); config.json does not belong to these "
                             "weights: download the encoder folder again")
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    needed = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    missing = [name for name in needed if name not in shapes]
    misshapen = [f"{name} {shapes[name]} (config.json needs {shape})"
                 for name, shape in needed.items() if name in shapes and shapes[name] != shape]
    if missing or misshapen:
        problems = "; ".join(f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                             for label, names in (("missing", missing), ("wrong shape", misshapen)) if names)
        raise ValueError(f"{folder}: the weights do not match config.json ({problems}); download the encoder "
                         "folder again")
