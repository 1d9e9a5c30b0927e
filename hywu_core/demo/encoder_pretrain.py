"""Pretraining the demo family's tiny SigLIP2 condition encoder, and a linear probe of what it sees.

The paper's condition encoder is "a pretrained SigLIP2, frozen" (§3.3): its image tokens already
say what state an image is in, which is what lets one instruction ("fix the exposure") route to
opposite edits. A tiny encoder with random weights knows nothing, so the demo family pretrains
its own with SigLIP's sigmoid image-text loss on the edit suite's training crops
(hywu_core.demo.images, split "train" only), each put into one of the suite's eight states
(hywu_core.demo.edits.STATES) and paired with a caption of that state (CAPTIONS).

Loss (SigLIP, Zhai et al. 2023), over every image i and caption j of a batch:

    loss = -mean_ij log sigmoid(z_ij (exp(t) <x_i, y_j> + b))

x, y are the model's own pooled, L2-normalised image and text embeddings (Siglip2Model's forward),
t and b its logit_scale and logit_bias. Many images of a batch share a state, so the labels are
multi-positive: z_ij = +1 when image i and caption j describe the same state, -1 otherwise.

Images reach the model through the folder's own image processor exactly as at inference
(hywu_core.encoders.ConditionEncoder), 8-bit quantised as PNG files hold them. Two choices make
the few CPU minutes enough: the patch embedding is trained in whitened DCT coordinates
(FrequencyBasis; without it blur, noise and sharpening were barely learnt), and the training crops
are varied (more crops per source, 1.5x zoomed-out crops, flips, quarter turns, RGB channel orders).

`state_probe` measures the result: a multinomial logistic regression on the mean image token of
U (what the generator reads), fitted on one split and scored on another.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils import parametrize

from hywu_core.demo.edits import (
    DIRECTIONS,
    PAIRS,
    STATES,
    direction,
    put_in_state,
    quantize,
)
from hywu_core.demo.images import crop_pool
from hywu_core.encoders import ConditionEncoder, load_condition_encoder
from hywu_core.tiny_editor.encoders import build_tiny_siglip2
from hywu_core.train.loop import WarmupCosine

# Short enough for the tiny tokenizer's 16 tokens; no caption is shared by two states.
CAPTIONS = {
    "clean": ("a clean photo", "a natural photo", "a normal picture", "a clean natural image"),
    "dark": ("a dark photo", "an underexposed picture", "a very dark image", "a darker photo"),
    "bright": ("a bright photo", "an overexposed picture", "a very bright image", "a brighter photo"),
    "muted": ("a photo with muted colours", "a muted picture", "a picture with weak colors", "a faded image"),
    "vivid": ("a photo with vivid colours", "a very colorful picture", "a picture with strong colors",
              "a vivid image"),
    "blurred": ("a blurry photo", "a blurred picture", "an image with blur", "a blurry image"),
    "noisy": ("a noisy photo", "a picture with noise", "a noisy image", "a photo with strong noise"),
    "sharpened": ("a sharpened photo", "a strongly sharpened picture", "a sharpened image",
                  "a photo sharpened too strongly"),
}
SOURCE_STATES = tuple(state for state in STATES if any(d.source_state == state for d in DIRECTIONS.values()))
CAPTION_STATE = {caption: list(STATES).index(state) for state, captions in CAPTIONS.items() for caption in captions}
PROBE_INSTRUCTION = "edit the image"


class EncoderPretrainError(ValueError):
    """Pretraining diverged or was asked for something impossible; the message says what to change."""


@dataclass(frozen=True)
class EncoderRecipe:
    """Every number that decides the pretrained encoder's weights (the architecture, then the run)."""

    width: int = 64
    layers: int = 2
    patch_size: int = 8
    max_patches: int = 64       # 8x8 patches of 8 pixels: a 64x64 crop is seen at full resolution
    max_length: int = 16
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 1e-4
    per_source: int = 64        # training crops per training source image (crop_pool's per_source)
    zoom_per_source: int = 32   # and crops of 1.5x the side, area-downscaled (finer detail, the same states)
    permute_channels: bool = True
    whiten: bool = True
    seed: int = 0


def _text_inputs(encoder: ConditionEncoder, texts: list[str]) -> dict[str, Tensor]:
    """Tokenised captions exactly as ConditionEncoder.encode passes them to the model."""
    text = encoder._text_inputs(texts)
    mask = text.pop("attention_mask")
    if encoder.text_tower_uses_mask:
        text["attention_mask"] = mask
    return text


def _state_batch(crops: Tensor, states: list[int], generator: torch.Generator) -> Tensor:
    """crops (N, H, W, 3) each put into STATES[states[n]], 8-bit quantised."""
    names = list(STATES)
    out = torch.empty_like(crops)
    index = torch.tensor(states)
    for code in sorted(set(states)):
        chosen = (index == code).nonzero().flatten()
        out[chosen] = put_in_state(names[code], crops[chosen], generator)
    return quantize(out)


def training_crops(recipe: EncoderRecipe) -> Tensor:
    """The clean training crops (N, 64, 64, 3), all from the "train" split's source images."""
    crops = [crop.image for crop in crop_pool("train", per_source=recipe.per_source)]
    if recipe.zoom_per_source:
        side = crops[0].shape[0]
        wide = torch.stack([crop.image for crop in crop_pool("train", side * 3 // 2, recipe.zoom_per_source)])
        wide = F.interpolate(wide.permute(0, 3, 1, 2), size=(side, side), mode="area").permute(0, 2, 3, 1)
        crops.extend(wide.clamp(0, 1))
    return torch.stack(crops).contiguous()


def _augment(images: Tensor, generator: torch.Generator, permute_channels: bool) -> Tensor:
    """Each clean crop (N, H, W, 3) mirrored or not, turned by a random multiple of 90 degrees and,
    with permute_channels, its RGB channels shuffled: new content, the same state."""
    flips = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flips[:, None, None, None], images.flip(-2), images)
    turns = torch.randint(4, (len(images),), generator=generator).tolist()
    orders = [torch.randperm(3, generator=generator) if permute_channels else torch.arange(3) for _ in images]
    return torch.stack([image.rot90(k, (0, 1))[..., order] for image, k, order in zip(images, turns, orders)])


def sigmoid_loss(logits: Tensor, image_states: Tensor, caption_states: Tensor) -> Tensor:
    """SigLIP's sigmoid loss with multi-positive labels: logits (N_images, N_captions)."""
    z = (image_states[:, None] == caption_states[None, :]).to(logits.dtype) * 2 - 1
    return -F.logsigmoid(z * logits).mean()


def pretrain_condition_encoder(folder: str | Path, recipe: EncoderRecipe = EncoderRecipe(),
                               log: Callable[[str], None] | None = print) -> list[float]:
    """Build a tiny random SigLIP2 in `folder`, pretrain it on the training crops, save it there.

    Deterministic for recipe.seed (crops, augmentations, states, captions and noise all come from
    one generator). The trained weights replace model.safetensors, so load_condition_encoder(folder)
    reads them. Returns the loss of every step; a non-finite loss raises EncoderPretrainError.
    """
    if recipe.steps < 1 or recipe.batch_size < 2 or not (math.isfinite(recipe.lr) and recipe.lr > 0):
        raise EncoderPretrainError(f"need steps >= 1, batch_size >= 2 and a finite lr > 0, got {recipe.steps}, "
                                   f"{recipe.batch_size} and {recipe.lr}")
    folder = build_tiny_siglip2(folder, seed=recipe.seed, width=recipe.width, layers=recipe.layers,
                                patch_size=recipe.patch_size, max_patches=recipe.max_patches,
                                max_length=recipe.max_length)
    encoder = load_condition_encoder(folder)
    model = encoder.model
    crops = training_crops(recipe)
    names = list(STATES)
    generator = torch.Generator().manual_seed(recipe.seed)
    losses: list[float] = []
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model.requires_grad_(True).train()
        patches = model.vision_model.embeddings.patch_embedding
        scale = _coefficient_scale(encoder, crops, recipe.patch_size) if recipe.whiten else None
        parametrize.register_parametrization(patches, "weight", FrequencyBasis(recipe.patch_size, scale=scale))
        with torch.no_grad():  # SigLIP's initial temperature 10; the bias at the prior log-odds of a
            model.logit_scale.fill_(math.log(10.0))  # positive pair (1 in 8 here) instead of SigLIP's -10
            model.logit_bias.fill_(-math.log(len(names) - 1))
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(recipe.warmup_steps, recipe.steps, 0.0))
        for step in range(recipe.steps):
            picks = torch.randint(len(crops), (recipe.batch_size,), generator=generator)
            images = _augment(crops[picks], generator, recipe.permute_channels)
            states = torch.randint(len(names), (recipe.batch_size,), generator=generator)
            images = _state_batch(images, states.tolist(), generator)
            # one caption drawn per image; each distinct caption is encoded once
            captions = list(dict.fromkeys(_pick(CAPTIONS[names[s]], generator) for s in states.tolist()))
            caption_states = torch.tensor([CAPTION_STATE[caption] for caption in captions])
            output = model(**_text_inputs(encoder, captions), **encoder._pixel_inputs([images]), return_dict=True)
            loss = sigmoid_loss(output.logits_per_image, states, caption_states)
            if not torch.isfinite(loss):
                raise EncoderPretrainError(f"the encoder's pretraining loss became {loss.item()} at step {step + 1}: "
                                           f"lower the learning rate (lr={recipe.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if log is not None and (step + 1) % max(1, recipe.steps // 10) == 0:
                log(f"encoder pretrain step {step + 1}/{recipe.steps} loss {sum(losses[-20:]) / len(losses[-20:]):.4f} "
                    f"t {model.logit_scale.exp().item():.1f} b {model.logit_bias.item():.2f} "
                    f"({time.perf_counter() - started:.0f}s)")
    parametrize.remove_parametrizations(patches, "weight", leave_parametrized=True)
    model.requires_grad_(False).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return losses


class FrequencyBasis(torch.nn.Module):
    """Trains the patch embedding in 2-D DCT coordinates: weight = W_freq @ basis.

    The same linear map, only its coordinates change, and it is back in pixel coordinates after
    training. In pixel coordinates Adam's steps follow the strong low-frequency content, and fine
    detail (blur, noise, sharpening) is learnt very slowly; per DCT coefficient every frequency
    gets its own step. With `scale` (the std of each coefficient over the training patches) the
    coefficients are also whitened, so the faint high frequencies move as fast as the rest.
    """

    def __init__(self, patch_size: int, channels: int = 3, scale: Tensor | None = None):
        super().__init__()
        n = torch.arange(patch_size, dtype=torch.float64)
        dct = torch.cos(math.pi / patch_size * (n[None, :] + 0.5) * n[:, None]) * math.sqrt(2 / patch_size)
        dct[0] /= math.sqrt(2)
        # SigLIP2 flattens a patch as (row, column, channel)
        orthonormal = torch.kron(torch.kron(dct, dct), torch.eye(channels, dtype=torch.float64))
        scale = torch.ones(len(orthonormal), dtype=torch.float64) if scale is None else scale.double()
        self.register_buffer("basis", (orthonormal / scale[:, None]).float())
        self.register_buffer("inverse", (orthonormal.T * scale[None, :]).float())

    @staticmethod
    def coefficients(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
        """DCT coefficients of flattened patches (..., patch_size² channels)."""
        return patches @ FrequencyBasis(patch_size, channels).basis.T

    def forward(self, weight_freq: Tensor) -> Tensor:
        return weight_freq @ self.basis

    def right_inverse(self, weight: Tensor) -> Tensor:
        return weight @ self.inverse


@torch.no_grad()
def _coefficient_scale(encoder: ConditionEncoder, crops: Tensor, patch_size: int, floor: float = 1e-2) -> Tensor:
    """The std of every DCT coefficient of the model's input patches over the clean training crops."""
    pixels = torch.cat([encoder._pixel_inputs([crops[i:i + 256]])["pixel_values"] for i in range(0, len(crops), 256)])
    return FrequencyBasis.coefficients(pixels.flatten(0, 1), patch_size).std(0).clamp_min(floor)


def _pick(options: tuple[str, ...], generator: torch.Generator) -> str:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


@torch.no_grad()
def image_token_features(encoder: ConditionEncoder, images: Tensor, instruction: str = PROBE_INSTRUCTION,
                         chunk: int = 128) -> Tensor:
    """The mean of each image's real image tokens in U (the rows before the text tokens), (N, D)."""
    features = []
    for start in range(0, len(images), chunk):
        cond, mask = encoder.encode(images[start:start + chunk], instruction)
        image_rows = cond.shape[1] - encoder.text_length
        tokens, real = cond[:, :image_rows].float(), mask[:, :image_rows, None].float()
        features.append((tokens * real).sum(1) / real.sum(1).clamp_min(1))
    return torch.cat(features)


def _states_of(split: str, per_state: int | None, seed: int, encoder: ConditionEncoder) -> tuple[Tensor, Tensor]:
    """Features and state labels of `per_state` crops of `split` (all when None) in every state."""
    pool = crop_pool(split)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=generator)[:per_state]
    crops = torch.stack([pool[i].image for i in order.tolist()])
    features, labels = [], []
    for code, state in enumerate(STATES):
        features.append(image_token_features(encoder, quantize(put_in_state(state, crops, generator))))
        labels.append(torch.full((len(crops),), code))
    return torch.cat(features), torch.cat(labels)


def fit_linear_probe(features: Tensor, labels: Tensor, classes: int, weight_decay: float = 1e-3,
                     iterations: int = 200) -> Callable[[Tensor], Tensor]:
    """Multinomial logistic regression fitted by full-batch L-BFGS in float64 (deterministic) on features
    standardised with their own mean and std; returns a function from features to predicted classes."""
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=iterations, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return lambda f: (((f.double() - mean) / std) @ weight + bias).argmax(-1)


def state_probe(folder: str | Path, fit_split: str = "train", eval_split: str = "test",
                per_state: int | None = None, seed: int = 0) -> dict:
    """How well a linear probe reads each crop's state from the encoder's image tokens.

    Crops of `fit_split` and `eval_split` (`per_state` of each, every crop when None) are put into
    every state of STATES and encoded with a fixed instruction; the mean real image token is the
    feature. Returns {"states": 8-way accuracy on eval_split, "sources": accuracy of a probe over
    only the states an edit's source arrives in (SOURCE_STATES; "sharpened" is only ever a target),
    "pairs": {name: accuracy of a binary probe between the two source states of each
    image-dependent pair}, "n_fit", "n_eval"}.
    """
    encoder = load_condition_encoder(folder)
    fit_x, fit_y = _states_of(fit_split, per_state, seed, encoder)
    eval_x, eval_y = _states_of(eval_split, per_state, seed + 1, encoder)
    predict = fit_linear_probe(fit_x, fit_y, len(STATES))
    result = {"states": (predict(eval_x) == eval_y).double().mean().item(), "pairs": {},
              "n_fit": len(fit_y), "n_eval": len(eval_y)}
    codes = {state: code for code, state in enumerate(STATES)}
    source_codes = torch.tensor([codes[state] for state in SOURCE_STATES])
    fit_in, eval_in = torch.isin(fit_y, source_codes), torch.isin(eval_y, source_codes)
    relabel = torch.full((len(STATES),), -1, dtype=torch.long)
    relabel[source_codes] = torch.arange(len(source_codes))
    sources = fit_linear_probe(fit_x[fit_in], relabel[fit_y[fit_in]], len(source_codes))
    result["sources"] = (sources(eval_x[eval_in]) == relabel[eval_y[eval_in]]).double().mean().item()
    for name, pair in PAIRS.items():
        if pair.kind != "image-dependent":
            continue
        first, second = (codes[direction(member).source_state] for member in pair.members)
        fit_in = (fit_y == first) | (fit_y == second)
        eval_in = (eval_y == first) | (eval_y == second)
        binary = fit_linear_probe(fit_x[fit_in], (fit_y[fit_in] == second).long(), 2)
        correct = binary(eval_x[eval_in]) == (eval_y[eval_in] == second).long()
        result["pairs"][name] = correct.double().mean().item()
    return result
