"""HunyuanImage-3.0-Instruct as the frozen backbone of on-the-fly training (§3.6), and its own condition (§3.3).

    backbone.kind = "hunyuan3"     the model folder loaded as the loader node loads it (MODEL, request side, VAE)
    encoder.backbone = "hunyuan3"  U = the official generator's input: the last decoder layer's hidden states
                                   over the request's img_ratio prefill, computed without any LoRA

An edit is laid out exactly as the HunyuanImage-3 Conditioning node lays it out (default system prompt,
output size "auto": the source's ratio bucket, no CoT text, seed 0 for the input images' VAE sampling),
and U is what HYWU Encode Condition (HunyuanImage-3) computes from that node's output, so a generator
trained here reads in ComfyUI the condition it was trained on. Targets are resized (stretched, as the
release does for size "auto") onto the ratio bucket nearest to their own shape: give sources and targets
the same size.

The training forward runs the whole sequence every step (no prefix K/V cache outside a sampling run), so
the generated LoRA acts on every token and its gradient flows through all of them.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy
import torch
from torch import Tensor

from hywu_core.comfyui.hunyuan3 import (
    Hunyuan3Encoder,
    conditioning,
    encode_condition,
    load_model,
    load_vae,
)
from hywu_core.condition import image_digest
from hywu_core.hunyuan3.config import FolderError, open_folder
from hywu_core.hunyuan3.images import fit_to_bucket, image_from_tensor
from hywu_core.train.backbone import Backbone, BackboneError

RECENT = 16   # requests, conditions and target latents kept per kind (see Recent)


class Recent:
    """The last `size` results by key. An optimizer step asks for each edit's request twice (the objective's
    model inputs and the condition), and a small dataset is revisited every epoch; at full size a request
    with its image embeddings is tens of MB, so only a few are kept."""

    def __init__(self, size: int = RECENT):
        self.size = size
        self.entries: OrderedDict = OrderedDict()

    def get(self, key, make):
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        value = self.entries[key] = make()
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value


def _image_tensor(image) -> Tensor:
    """A PIL RGB image as one ComfyUI IMAGE item (H, W, 3) in [0, 1]."""
    return torch.from_numpy(numpy.array(image, dtype=numpy.uint8)).float().div(255)


class Hunyuan3Backbone(Backbone):
    """MODEL, request side and VAE of a HunyuanImage-3 folder; its edit conditioning is the Conditioning node's."""

    block_lists = ["model.layers"]

    def __init__(self, model, requests: Hunyuan3Encoder, vae, folder: Path):
        super().__init__(model, None, vae, edit="hunyuan3")
        self.requests = requests
        self.folder = folder
        self.recent_requests, self.recent_latents = Recent(), Recent()

    def request(self, source: Tensor, instruction: str, references: list[Tensor] = ()):
        """The Prepared request of one edit (source then references as input images), as the Conditioning node
        prepares it."""
        if len(references) > 2:
            raise BackboneError(f"HunyuanImage-3 takes the source and at most 2 references, got {len(references)}")
        inputs = [image[:1, ..., :3] for image in (source, *references)]
        key = (instruction, *(image_digest(image[0]) for image in inputs))
        return self.recent_requests.get(
            key, lambda: self.requests.prepare(instruction, [image_from_tensor(image) for image in inputs]))

    @torch.no_grad()
    def conditioning(self, source: Tensor, instruction: str, references: list[Tensor] = ()) -> tuple:
        """(positive, negative, empty latent) of the edit's request."""
        positive, negative, latent = conditioning(self.request(source, instruction, references))
        return positive, negative, latent["samples"]

    @torch.no_grad()
    def latents(self, images: Tensor) -> Tensor:
        """Targets stretched onto their ratio bucket (what size "auto" generates for a source of their shape),
        then VAE-encoded into the model's latent space."""
        latents = [self.recent_latents.get(image_digest(image), lambda: self._latent(image)) for image in images]
        if len({tuple(t.shape) for t in latents}) > 1:
            raise BackboneError("the targets of one batch fall into different HunyuanImage-3 ratio buckets; give "
                                "every image the same size (data.resolution)")
        return torch.cat(latents)

    def _latent(self, image: Tensor) -> Tensor:
        buckets = self.requests.requests.buckets
        image = image_from_tensor(image[..., :3])
        bucket = buckets[buckets.nearest(image.width, image.height)]
        resized = _image_tensor(fit_to_bucket(image, (bucket.height, bucket.width), crop=False))
        return super().latents(resized[None])

    def condition_encoder(self) -> "BackboneCondition":
        return BackboneCondition(self)


class BackboneCondition:
    """The condition encoder `encode_condition` calls, reading U off the frozen backbone (no LoRA is applied
    outside the objective's forward). Items of different lengths are padded; the mask marks real tokens."""

    def __init__(self, backbone: Hunyuan3Backbone):
        self.backbone = backbone
        self.folder = backbone.folder
        self.width = int(backbone.requests.folder.config["hidden_size"])
        self.recent = Recent()

    def encode(self, images: Tensor, instructions, references=None) -> tuple[Tensor, Tensor]:
        rows = []
        for i, instruction in enumerate(instructions):
            refs = [r[i:i + 1] for r in references or ()]
            key = (instruction, image_digest(images[i]), *(image_digest(r[0]) for r in refs))
            rows.append(self.recent.get(key, lambda: self._tokens(images[i:i + 1], instruction, refs)))
        length = max(row.shape[0] for row in rows)
        tokens = rows[0].new_zeros(len(rows), length, self.width)
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=tokens.device)
        for i, row in enumerate(rows):
            tokens[i, :row.shape[0]] = row
            mask[i, :row.shape[0]] = True
        return tokens, mask

    def _tokens(self, source: Tensor, instruction: str, references: list[Tensor]) -> Tensor:
        positive, _, _ = self.backbone.conditioning(source, instruction, references)
        return encode_condition(self.backbone.model, positive).tokens[0]


def load_hunyuan3_backbone(folder: Path, weight_dtype: str) -> Hunyuan3Backbone:
    """The folder's MODEL (weight_dtype as the loader node's), request side and VAE, frozen."""
    try:
        opened = open_folder(str(folder))
        model = load_model(opened, weight_dtype)
    except (FolderError, ValueError) as error:
        raise BackboneError(f"backbone.folder = {str(folder)!r}: {error}") from error
    return Hunyuan3Backbone(model, Hunyuan3Encoder(opened), load_vae(opened), Path(folder)).load()
