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

Also here: tiny randomly initialised SigLIP2 / SigLIP / CLIP folders with a small offline
vocabulary, for tests and examples (no hub access).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SUPPORTED_FAMILIES = ("siglip2", "siglip", "clip")
LOWERCASE_FAMILIES = ("siglip2", "siglip")  # trained on lowercased text

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")

EDIT_WORDS = (
    "a an the this that it its image photo picture of to in on with and or but more less very "
    "slightly strongly make turn add remove keep change use take from as into like same "
    "blur blurry deblur sharp sharpen sharper denoise noise noisy clean colorize color colour "
    "grayscale black white brighten brighter darken darker light dark contrast saturation "
    "warm cool red green blue yellow sky background foreground person face hair outfit style "
    "base first second image1 image2 edit restore old vintage sketch painting cartoon"
).split()
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # Gemma's order, as in SigLIP2
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()"
WORD_START = "\u2581"


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

    @torch.no_grad()
    def encode(self, images: Tensor, instructions: str | Sequence[str],
               references: Tensor | Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """U (N, L, D) in the encoder's dtype and device, and its mask (N, L) bool, True = real.

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
    check_safetensors_files(folder)
    model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    return ConditionEncoder(model.to(device=device, dtype=dtype), tokenizer, image_processor, folder)


def check_safetensors_files(folder: Path) -> None:
    """Every weight file of the folder opens as safetensors (header and size): a clear error otherwise."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as error:
            raise FileNotFoundError(f"{path} is not a readable safetensors file ({error}); it may be truncated "
                                    "(an interrupted download): download the encoder folder again") from error


def build_tiny_tokenizer(max_length: int):
    """A small offline Gemma-style BPE tokenizer (the SigLIP2 tokenizer format), trained on the
    edit-instruction words so each is one token; other text falls back to single characters."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", WORD_START)])
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous")
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=list(CHARACTERS + WORD_START))
    backend.train_from_iterator([form for word in dict.fromkeys(EDIT_WORDS) for form in (word, " " + word)], trainer)
    eos = backend.token_to_id("<eos>")
    backend.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", eos)])
    backend.decoder = decoders.Sequence([decoders.Replace(WORD_START, " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_length,
                                   pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
                                   mask_token="<mask>", model_input_names=["input_ids", "attention_mask"])


def _tiny_text_config(tokenizer, width: int, layers: int, max_length: int) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=max_length,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)


def _save_tiny(folder: str | Path, seed: int, model_class, config, tokenizer, image_processor) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


def build_tiny_siglip2(folder: str | Path, seed: int = 0, width: int = 32, layers: int = 2,
                       patch_size: int = 8, max_patches: int = 16, max_length: int = 16) -> Path:
    """Saves a tiny random SigLIP2 (NaFlex) encoder folder: at most `max_patches` image tokens."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    tokenizer = build_tiny_tokenizer(max_length)
    config = Siglip2Config(
        text_config=_tiny_text_config(tokenizer, width, layers, max_length),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                           num_attention_heads=2, patch_size=patch_size, num_patches=max_patches))
    image_processor = Siglip2ImageProcessor(patch_size=patch_size, max_num_patches=max_patches)
    return _save_tiny(folder, seed, Siglip2Model, config, tokenizer, image_processor)


def build_tiny_siglip(folder: str | Path, seed: int = 0, width: int = 32, layers: int = 2,
                      image_size: int = 32, patch_size: int = 8, max_length: int = 16) -> Path:
    """Saves a tiny random SigLIP encoder folder: (image_size / patch_size)² image tokens."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tokenizer = build_tiny_tokenizer(max_length)
    config = SiglipConfig(
        text_config=_tiny_text_config(tokenizer, width, layers, max_length),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size))
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    return _save_tiny(folder, seed, SiglipModel, config, tokenizer, image_processor)


def build_tiny_clip(folder: str | Path, seed: int = 0, vision_width: int = 48, text_width: int = 32,
                    layers: int = 2, image_size: int = 32, patch_size: int = 8, max_length: int = 16) -> Path:
    """Saves a tiny random CLIP encoder folder whose towers differ in width (U is zero-padded)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = build_tiny_tokenizer(max_length)
    config = CLIPConfig(
        text_config=_tiny_text_config(tokenizer, text_width, layers, max_length),
        vision_config=dict(hidden_size=vision_width, intermediate_size=2 * vision_width,
                           num_hidden_layers=layers, num_attention_heads=2, image_size=image_size,
                           patch_size=patch_size),
        projection_dim=text_width)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return _save_tiny(folder, seed, CLIPModel, config, tokenizer, image_processor)
