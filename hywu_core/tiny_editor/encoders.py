"""Tiny randomly initialised condition encoders (SigLIP2, SigLIP, CLIP) with a small offline vocabulary.

What the demo family, tests and examples load through hywu_core.encoders like any downloaded
folder: transformers model + tokenizer + image processor files, built here with no hub access.
"""
from __future__ import annotations

from pathlib import Path

import torch

EDIT_WORDS = (
    "a an the this that it its image photo picture of to in on with and or but more less very "
    "slightly strongly make turn add remove keep change use take from as into like same "
    "blur blurry deblur sharp sharpen sharper denoise noise noisy clean colorize color colour "
    "grayscale black white brighten brighter darken darker light dark contrast saturation "
    "warm cool red green blue yellow sky background foreground person face hair outfit style "
    "base first second image1 image2 edit restore old vintage sketch painting cartoon "
    "fix correct right normal natural colours colors exposure repair give boost stronger weaker fade mute "
    "muted vivid colorful saturate desaturate blurred sharpened underexposed overexposed bright"
).split()
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # Gemma's order, as in SigLIP2
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()"
WORD_START = "\u2581"


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
