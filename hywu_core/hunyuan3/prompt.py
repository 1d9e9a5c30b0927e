"""How a HunyuanImage-3.0-Instruct request becomes the model's token sequence, and the tables that go with it.

A request (system prompt, user prompt, up to three input images, CoT text, output size) is laid out the way the
release lays it out for its "instruct" template:

    <bos>{system}\\n\\nUser: {image block}...{prompt}\\n\\nAssistant: {CoT}<answer>{output block}</answer>\\n\\n

Each piece of text is tokenized on its own (the release encodes section by section, so token boundaries never
cross a piece) and a bos token is prepended; no eos follows. An input image is one block
`<boi><img_size_B><img_ratio_k><timestep>` + VAE tokens + `<joint_img_sep>` + ViT tokens + `<eoi>`; the output
image is `<boi><img_size_B><img_ratio_k><timestep>` + its latent tokens + `<eoi>`. Every `<img>` slot and every
`<timestep>` slot is later overwritten by an embedding; the tables here say where.

Three sequences are built from one request:
- `image`: the diffusion prompt, with the unconditional twin that classifier-free guidance uses (the user prompt
  and the CoT text replaced by `<cfg>` tokens of equal length; template text, images and tags stay).
- `cot`: the prompt the model continues to write its CoT (ends with "Assistant: <think>").
- `ratio`: the prompt the model continues to choose the output's aspect-ratio token (ends with
  "<answer><boi><img_size_B>"); HY-WU reads its condition from this prefill.

Positions: text tokens get the 2D RoPE position (n, n); the first h*w tokens of an image block at offset L get
(L + (hw-h)//2 + i, L + (hw-w)//2 + j) row-major, and every other token keeps (n, n), as the release does.
Attention is causal, and bidirectional inside each input image's VAE and ViT blocks and the output block.
"""
import json
import os
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from .rope import rope_positions

MAX_IMAGES = 3
RATIO_TOKENS = 37
SPECIAL = {
    "boi": "<boi>", "eoi": "<eoi>", "img": "<img>", "cfg": "<cfg>", "timestep": "<timestep>",
    "timestep_r": "<timestep_r>", "guidance": "<guidance>", "joint_img_sep": "<joint_img_sep>",
    "answer": "<answer>", "end_of_answer": "</answer>", "think": "<think>", "end_of_think": "</think>",
    "recaption": "<recaption>", "end_of_recaption": "</recaption>",
}
REQUIRED = ["boi", "eoi", "img", "cfg", "timestep", "joint_img_sep", "answer", "end_of_answer", "think", "end_of_think",
            "recaption", "end_of_recaption"]
# Role prefixes and separators of the two templates a generation config can name.
TEMPLATES = {
    "instruct": {"user": "User: ", "assistant": "Assistant: ", "sep": "\n\n", "answer": True},
    "pretrain": {"user": "", "assistant": "", "sep": "", "answer": False},
}
# Which input-image blocks attend bidirectionally and get 2D positions, per `cond_token_attn_type`.
COND_ATTENTION = {
    "full": {"full": ("cond_vae", "cond_vit"), "joint": False, "rope": ("cond_vae", "cond_vit")},
    "joint_full": {"full": (), "joint": True, "rope": ("cond_vae", "cond_vit")},
    "full_causal": {"full": ("cond_vae",), "joint": False, "rope": ("cond_vae",)},
    "causal": {"full": (), "joint": False, "rope": ()},
}
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class TokenizerError(ValueError):
    """The folder's tokenizer files cannot serve this model; the message names the file and what is missing."""


def _token_name(value):
    return value.get("content") if isinstance(value, dict) else value


def _read_settings(folder, name):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot read {path}: {e}; download the tokenizer files again") from e
    if not isinstance(settings, dict):
        raise TokenizerError(f"{path} holds no JSON object; download the tokenizer files again")
    return settings


class HunyuanTokenizer:
    """The folder's tokenizer.json, encoding and decoding as the release's tokenizer class does.

    bos/eos names and the decode clean-up flag come from tokenizer_config.json (and special_tokens_map.json
    for an older save without `added_tokens_decoder`, which is how transformers reads them).
    Text is encoded without added special tokens; special tokens written in the text are matched as tokens.
    """

    def __init__(self, folder):
        self.folder = folder
        path = os.path.join(folder, "tokenizer.json")
        try:
            self.backend = Tokenizer.from_file(path)
        except Exception as e:  # the tokenizers library raises a bare Exception on a bad file
            raise TokenizerError(f"cannot read {path}: {e}; download the tokenizer files again") from e
        self.backend.no_truncation()
        self.backend.no_padding()
        settings = _read_settings(folder, "tokenizer_config.json")
        if "added_tokens_decoder" not in settings:  # an older save: transformers lets this file override
            settings.update(_read_settings(folder, "special_tokens_map.json"))
        for role in ("bos_token", "eos_token"):
            if not _token_name(settings.get(role)):
                raise TokenizerError(f"{folder} has no {role} in tokenizer_config.json or special_tokens_map.json; "
                                     "download the tokenizer files with the model")
        self.bos_id = self.id(_token_name(settings["bos_token"]))
        self.eos_id = self.id(_token_name(settings["eos_token"]))
        self.clean_up_spaces = bool(settings.get("clean_up_tokenization_spaces", False))

    def id(self, token):
        """The id of one token string; TokenizerError if this tokenizer lacks it."""
        found = self.backend.token_to_id(token)
        if found is None:
            raise TokenizerError(f"the tokenizer in {self.folder} has no token {token!r}, which HunyuanImage-3 "
                                 "sequences need; use the tokenizer.json of the HunyuanImage-3.0-Instruct release")
        return found

    def special(self, name):
        """The id of a named special token (a key of SPECIAL, e.g. "cfg" -> `<cfg>`)."""
        if name not in SPECIAL:
            raise KeyError(f"no special token is named {name!r}; known names: {', '.join(SPECIAL)}")
        return self.id(SPECIAL[name])

    def size_id(self, base_size):
        return self.id(f"<img_size_{base_size}>")

    def ratio_id(self, index):
        return self.id(f"<img_ratio_{index}>")

    @property
    def ratio_ids(self):
        """Ids of `<img_ratio_0>` .. `<img_ratio_36>`: the choices when the model picks the output's ratio."""
        return [self.ratio_id(i) for i in range(RATIO_TOKENS)]

    def encode(self, text):
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        """Text of `ids`, special tokens kept (how the release turns generated CoT tokens back into text)."""
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=False)
        if self.clean_up_spaces:
            for old, new in _CLEANUP:
                text = text.replace(old, new)
        return text


@dataclass(frozen=True)
class InputImage:
    """What the sequence needs of one input image; the image side computes every number.

    vae_grid:    (h, w) VAE latent tokens: the bucketed image's pixel height and width // 16.
    ratio_index: its bucket's index in the resolution group (nearest height/width ratio), for `<img_ratio_k>`.
    vit_grid:    (h, w) ViT patches in use: the naflex processor's `spatial_shapes`.
    vit_tokens:  the ViT block's length: the processor's `max_num_patches` (the tower's padded output length).
    """
    vae_grid: tuple
    ratio_index: int
    vit_grid: tuple
    vit_tokens: int


@dataclass(frozen=True)
class OutputImage:
    """The image to generate: its (h, w) latent token grid (pixels // 16) and its bucket's ratio index."""
    grid: tuple
    ratio_index: int


@dataclass(frozen=True)
class ImageBlock:
    """One run of `<img>` slots. kind: "cond_vae", "cond_vit" or "gen"; image: input image index (0 for "gen").

    The first h*w slots of the run hold the (h, w) grid row-major; a ViT run is padded past its grid to `length`.
    `timestep` is the position of the block's `<timestep>` slot (the VAE run carries its input image's);
    `guidance` and `timestep_r` are the output block's extra slots when the model has them.
    """
    kind: str
    start: int
    length: int
    grid: tuple
    image: int
    timestep: int = None
    guidance: int = None
    timestep_r: int = None

    @property
    def stop(self):
        return self.start + self.length


@dataclass
class Sequence:
    """A built sequence. Rows of `ids()` are [cond, uncond]; both share blocks, positions and mask."""
    input_ids: torch.Tensor                 # (L,) int64
    uncond_ids: torch.Tensor | None         # (L,) int64, only for the diffusion prompt
    blocks: list
    rope_yx: torch.Tensor                   # (L, 2) int64: the (y, x) RoPE position of every token
    full_spans: list = field(repr=False)    # (start, stop) spans that attend bidirectionally

    def __len__(self):
        return self.input_ids.shape[0]

    def ids(self, uncond=True):
        """(B, L) ids: the cond row, then the uncond row when there is one and `uncond`."""
        rows = [self.input_ids] + ([self.uncond_ids] if uncond and self.uncond_ids is not None else [])
        return torch.stack(rows)

    def attention_mask(self, batch=None, device=None):
        """(batch, 1, L, L) bool, True = may attend: causal, plus every full span attending to itself.

        `batch` defaults to the rows of `ids()`. The rows are one expanded tensor (they are identical): clone
        before writing into it.
        """
        n = len(self)
        batch = batch or (1 if self.uncond_ids is None else 2)
        mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        for start, stop in self.full_spans:
            mask[start:stop, start:stop] = True
        return mask.expand(batch, 1, n, n)

    def blocks_of(self, kind):
        return [b for b in self.blocks if b.kind == kind]

    def positions(self, kind):
        """Token positions of every `kind` block's slots, blocks in sequence order: where its embeddings go."""
        spans = [torch.arange(b.start, b.stop) for b in self.blocks_of(kind)]
        return torch.cat(spans) if spans else torch.zeros(0, dtype=torch.long)

    def slot_mask(self, kind):
        """(L,) bool: True at `kind` slots (the release's image masks)."""
        mask = torch.zeros(len(self), dtype=torch.bool)
        mask[self.positions(kind)] = True
        return mask

    def timestep_positions(self, kind):
        """Positions of the `<timestep>` slots of `kind` blocks ("cond_vae": one per input image; "gen")."""
        return torch.tensor([b.timestep for b in self.blocks_of(kind)], dtype=torch.long)


@dataclass
class _Text:
    text: str
    droppable: bool = False   # replaced by <cfg> tokens in the unconditional twin


@dataclass
class _Image:
    kind: str                 # "cond" or "gen"
    spec: object
    index: int


class PromptBuilder:
    """Builds the three sequences of a request for one model folder's tokenizer and config.

    base_size: the resolution group's base size (`image_base_size`), for every `<img_size_B>` token.
    template: "instruct" or "pretrain" (`sequence_template`; the release falls back to "pretrain").
    cond_attention: `cond_token_attn_type` (a key of COND_ATTENTION).
    guidance_token / timestep_r_token: the output block's extra slots (`cfg_distilled` / `use_meanflow`).
    drop_think: leave the CoT's <think> part out of the sequence (generation config `drop_think`).
    max_length: refuse longer sequences, as the release does (generation config `max_length`; None: no limit).
    """

    def __init__(self, tokenizer, base_size, template="instruct", cond_attention="full", guidance_token=False,
                 timestep_r_token=False, drop_think=False, max_length=None):
        if template not in TEMPLATES:
            raise ValueError(f"unknown sequence template {template!r}; expected one of {', '.join(TEMPLATES)}")
        if cond_attention not in COND_ATTENTION:
            raise ValueError(f"unknown cond_token_attn_type {cond_attention!r}; "
                             f"expected one of {', '.join(COND_ATTENTION)}")
        self.tok = tokenizer
        self.base_size = base_size
        self.template = TEMPLATES[template]
        self.cond_attention = COND_ATTENTION[cond_attention]
        self.guidance_token = guidance_token
        self.timestep_r_token = timestep_r_token
        self.drop_think = drop_think
        self.max_length = max_length
        extras = [name for name, wanted in (("guidance", guidance_token), ("timestep_r", timestep_r_token)) if wanted]
        for token in ([SPECIAL[name] for name in REQUIRED + extras] + [f"<img_size_{base_size}>"]
                      + [f"<img_ratio_{i}>" for i in range(RATIO_TOKENS)]):
            tokenizer.id(token)

    @classmethod
    def from_config(cls, tokenizer, config, generation):
        """A builder set up from a folder's config.json and generation_config.json dicts."""
        if config.get("cond_image_type", "vae_vit") != "vae_vit":
            raise ValueError(f"cond_image_type {config['cond_image_type']!r} is not supported: input images are "
                             "laid out as joint VAE + ViT blocks, as HunyuanImage-3.0-Instruct does")
        return cls(tokenizer, config["image_base_size"], template=generation.get("sequence_template", "pretrain"),
                   cond_attention=config.get("cond_token_attn_type", "full"),
                   guidance_token=bool(config.get("cfg_distilled", False)),
                   timestep_r_token=bool(config.get("use_meanflow", False)),
                   drop_think=bool(generation.get("drop_think", False)), max_length=generation.get("max_length"))

    @property
    def ratio_prefix(self):
        """What precedes the ratio token: `<answer><boi><img_size_B>` (no `<answer>` in the pretrain template)."""
        answer = SPECIAL["answer"] if self.template["answer"] else ""
        return f"{answer}{SPECIAL['boi']}<img_size_{self.base_size}>"

    @property
    def ratio_prefix_ids(self):
        """The ratio prefix as ids: what CoT generation appends after `</recaption>` when it goes on to the ratio."""
        return self.tok.encode(self.ratio_prefix)

    # -- the three sequences ------------------------------------------------------------------------------------

    def image(self, prompt, images, output, system_prompt=None, cot=None):
        """The diffusion prompt (cond and uncond) that generates `output` (an OutputImage)."""
        if not isinstance(output, OutputImage):
            raise TypeError("image() needs `output`, an OutputImage with the generated image's grid and ratio")
        answer = self._answer_tags()
        tail = [_Text(answer[0]), _Image("gen", output, 0), _Text(answer[1])]
        return self._build(self._parts(prompt, images, system_prompt, cot, tail, suffix=None), uncond=True)

    def cot(self, prompt, images=(), system_prompt=None, mode="think"):
        """The prompt the model continues to write its CoT; `mode` "think" or "recaption" names the opening tag."""
        if mode not in ("think", "recaption"):
            raise ValueError(f"CoT mode must be 'think' or 'recaption', not {mode!r}")
        return self._build(self._parts(prompt, images, system_prompt, None, [], suffix=SPECIAL[mode]))

    def ratio(self, prompt, images=(), system_prompt=None, cot=None):
        """The prompt the model continues with its ratio token: ... CoT, then the ratio prefix."""
        return self._build(self._parts(prompt, images, system_prompt, cot, [], suffix=self.ratio_prefix))

    # -- layout ---------------------------------------------------------------------------------------------------

    def _answer_tags(self):
        if self.template["answer"]:
            return SPECIAL["answer"], SPECIAL["end_of_answer"]
        return "", ""

    def _parts(self, prompt, images, system_prompt, cot, tail, suffix):
        """The request as text pieces and image blocks, in the release's section order.

        `tail` is what the assistant turn holds after the CoT (the output block); `suffix`, when given, ends the
        sequence at the assistant's continuation point instead of closing the turn.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt is empty: give the edit instruction or image description as the prompt")
        images = list(images)
        if len(images) > MAX_IMAGES:
            raise ValueError(f"{len(images)} input images given; HunyuanImage-3.0-Instruct takes at most {MAX_IMAGES}")
        for image in images:
            if not isinstance(image, InputImage):
                raise TypeError(f"input images must be InputImage records, not {type(image).__name__}")
        t = self.template
        parts = []
        system_prompt = (system_prompt or "").strip()
        if system_prompt:
            parts += [_Text(system_prompt), _Text(t["sep"])]
        parts += [_Text(t["user"]), *(_Image("cond", im, i) for i, im in enumerate(images)),
                  _Text(prompt, droppable=True), _Text(t["sep"])]
        turn = self._cot_parts(cot) + tail
        if turn:
            parts += [_Text(t["assistant"]), *turn, _Text(t["sep"] if suffix is None else suffix)]
        elif suffix is not None:
            parts.append(_Text(t["assistant"] + suffix))
        return parts

    def _cot_parts(self, cot):
        """CoT text as pieces: tagged <think>/<recaption> bodies are droppable, their tags are not.

        Text with neither complete tag pair is taken as a plain answer, wrapped in answer tags, all droppable.
        """
        if cot is None:
            return []
        if not any(SPECIAL[o] in cot and SPECIAL["end_of_" + o] in cot for o in ("think", "recaption")):
            opening, closing = self._answer_tags()
            return [_Text(opening + cot + closing, droppable=True)]
        return self._tagged(cot)

    def _tagged(self, text):
        """Split at the first complete tag pair (think before recaption), recursing on the text around it.

        As in the release, the body runs from the opening tag to the next opening or closing tag, and the text
        after it runs from the first closing tag to the next one; anything past a repeated tag is dropped.
        """
        if not text:
            return []
        for name in ("think", "recaption"):
            opening, closing = SPECIAL[name], SPECIAL["end_of_" + name]
            if opening in text and closing in text:
                head = text.split(opening)[0]
                body = text.split(opening)[1].split(closing)[0]
                rest = text.split(closing)[1]
                keep = not (name == "think" and self.drop_think)
                middle = [_Text(opening), _Text(body, droppable=True), _Text(closing)] if keep else []
                return self._tagged(head) + middle + self._tagged(rest)
        return [_Text(text, droppable=True)]

    # -- tokens, blocks, positions --------------------------------------------------------------------------------

    def _build(self, parts, uncond=False):
        tok = self.tok
        cond, drop, blocks, joints = [tok.bos_id], [False], [], []
        for part in parts:
            if isinstance(part, _Text):
                ids = tok.encode(part.text) if part.text else []
            else:
                ids, new_blocks = self._image_tokens(part, len(cond))
                blocks += new_blocks
                if part.kind == "cond":
                    joints.append((new_blocks[0].start, new_blocks[1].stop))
            cond += ids
            drop += [isinstance(part, _Text) and part.droppable] * len(ids)
        if self.max_length is not None and len(cond) > self.max_length:
            raise ValueError(f"the sequence has {len(cond)} tokens, more than the model's max_length "
                             f"{self.max_length}: use fewer or smaller input images, a smaller output or a shorter "
                             "prompt / CoT")
        input_ids = torch.tensor(cond, dtype=torch.long)
        uncond_ids = input_ids.masked_fill(torch.tensor(drop), tok.special("cfg")) if uncond else None
        rule = self.cond_attention
        full = [(b.start, b.stop) for b in blocks if b.kind == "gen" or b.kind in rule["full"]]
        if rule["joint"]:
            full += joints
        rope_blocks = [(b.start, *b.grid) for b in blocks if b.kind == "gen" or b.kind in rule["rope"]]
        return Sequence(input_ids, uncond_ids, blocks, rope_positions(len(cond), rope_blocks), sorted(full))

    def _image_tokens(self, part, offset):
        """Token ids of one image block starting at `offset`, and its ImageBlock records."""
        tok = self.tok
        ratio = part.spec.ratio_index
        if not 0 <= ratio < RATIO_TOKENS:
            raise ValueError(f"ratio index {ratio} is outside the {RATIO_TOKENS} ratio buckets")
        ids = [tok.special("boi"), tok.size_id(self.base_size), tok.ratio_id(ratio), tok.special("timestep")]
        timestep = offset + 3
        img = tok.special("img")
        if part.kind == "gen":
            extra = {}
            for name, wanted in (("guidance", self.guidance_token), ("timestep_r", self.timestep_r_token)):
                if wanted:
                    extra[name] = offset + len(ids)
                    ids.append(tok.special(name))
            grid = _grid(part.spec.grid, "output grid")
            n = grid[0] * grid[1]
            blocks = [ImageBlock("gen", offset + len(ids), n, grid, 0, timestep=timestep, **extra)]
            return ids + [img] * n + [tok.special("eoi")], blocks
        spec = part.spec
        vae, vit = _grid(spec.vae_grid, "vae_grid"), _grid(spec.vit_grid, "vit_grid")
        if vit[0] * vit[1] > spec.vit_tokens:
            raise ValueError(f"input image {part.index}: vit_grid {vit} holds more patches than its "
                             f"{spec.vit_tokens} ViT tokens")
        n_vae = vae[0] * vae[1]
        start = offset + len(ids)
        blocks = [ImageBlock("cond_vae", start, n_vae, vae, part.index, timestep=timestep),
                  ImageBlock("cond_vit", start + n_vae + 1, spec.vit_tokens, vit, part.index)]
        body = [img] * n_vae + [tok.special("joint_img_sep")] + [img] * spec.vit_tokens
        return ids + body + [tok.special("eoi")], blocks


def _grid(grid, what):
    h, w = (int(v) for v in grid)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be two positive token counts (h, w), got {tuple(grid)}")
    return h, w

