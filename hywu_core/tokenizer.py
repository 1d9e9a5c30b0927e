"""Parameter tokenization: LoRA factors <-> a token tensor T of shape (N, l, s, r, d) (paper §3.4).

Layer i of T holds the tokens of spec block i; a token is an r x d tile. Layers with fewer
tokens than s = max_i s_i are padded with zero tokens that `mask` marks False. `token_kind`
tells A tokens (0), B tokens (1) and padding (-1) apart. Two layouts share this interface:

rank_anchored (paper §3.4, the default). d divides every adapted dimension (default: the gcd
of all of them). A token keeps the rank axis whole: for A (r, d_in) token t is
A[:, t*d:(t+1)*d]; for B (d_out, r) token t is B[t*d:(t+1)*d, :]^T, i.e. a slice of
B^T (r, d_out). Within a layer, modules follow spec order; each module contributes its
d_in/d A tokens then its d_out/d B tokens; a grouped role does so once per expert, in order.

official_flat (the public HY-WU release's Tokenizer2DBatchedLoRA). Any token width d
(config.json "token_dim"). Within a layer the LoRA matrices are
"<name>.lora_A" (r, d_in) and "<name>.lora_B" (d_out, r) for every module, a grouped role
("<group>.<sub weight>", as the release expands pg_mapping) giving (E, r, d_in) and
(E, d_out, r). They are stably sorted by key order = major * M + minor, where M is the number
of modules, major = 0 if "lora_A" occurs in the key else 1, and minor = the index of the first
module (in spec order, i.e. pg_mapping order) whose name occurs in the key as a substring;
for ordinary names this is all A matrices in module order, then all B matrices in module
order. Each matrix is flattened row-major (expert axis outermost), cut into
ceil(numel / (r*d)) consecutive chunks of r*d elements, the last one padded at its end, and
each chunk viewed row-major as an (r, d) token: flat element f of a matrix whose first token is
t0 sits in token t0 + f // (r*d), at row (f % (r*d)) // d, column f % d. Matrices never share a
token. The release pads with NaN when tokenizing; we pad with 0 (padding is never read back).
Every layer of an official spec holds the same modules, so no layer is padded; for specs whose
blocks differ, each layer is laid out on its own and padded to s with whole tokens.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from hywu_core.lora import LoRABundle, factor_shapes
from hywu_core.targets import TargetBlock, TargetSpec, read_versioned_json

A_TOKEN, B_TOKEN, PAD_TOKEN = 0, 1, -1
_JSON_FORMAT = "hywu.parameter_layout"
_JSON_VERSION = 1


@dataclass(frozen=True)
class _Segment:
    """A run of `count` tokens at [start, start + count) of one layer holding one LoRA matrix."""

    path: str
    factor: str
    expert: int | None
    shape: tuple[int, ...]
    start: int
    count: int


class ParameterLayout:
    """Where every LoRA element sits in the token tensor (N, l, s, r, d); subclasses choose the layout."""

    kind = ""

    def __init__(self, spec: TargetSpec, rank: int, token_dim: int):
        if rank < 1 or token_dim < 1:
            raise ValueError(f"rank and token_dim must be >= 1, got rank={rank}, token_dim={token_dim}")
        self.spec, self.rank, self.token_dim = spec, int(rank), int(token_dim)
        self._layers = []
        for block in spec.blocks:
            segments, start = [], 0
            for path, factor, expert, shape, count in self._matrices(block):
                segments.append(_Segment(path, factor, expert, shape, start, count))
                start += count
            self._layers.append(segments)
        self.num_layers = len(self._layers)
        self.tokens_per_layer = max(seg.start + seg.count for segments in self._layers for seg in segments)
        self.mask = torch.zeros(self.num_layers, self.tokens_per_layer, dtype=torch.bool)
        self.token_kind = torch.full((self.num_layers, self.tokens_per_layer), PAD_TOKEN, dtype=torch.long)
        for i, segments in enumerate(self._layers):
            for seg in segments:
                self.mask[i, seg.start:seg.start + seg.count] = True
                self.token_kind[i, seg.start:seg.start + seg.count] = A_TOKEN if seg.factor == "A" else B_TOKEN

    def _matrices(self, block: TargetBlock):
        """(path, "A"|"B", expert index or None, per-row matrix shape, token count) in token order."""
        raise NotImplementedError

    def _to_tokens(self, matrix: Tensor, factor: str, count: int) -> Tensor:
        """(N, *shape) -> (N, count, r, d)."""
        raise NotImplementedError

    def _from_tokens(self, tokens: Tensor, factor: str, shape: tuple[int, ...]) -> Tensor:
        """(N, count, r, d) -> (N, *shape), the exact inverse of _to_tokens."""
        raise NotImplementedError

    @property
    def token_shape(self) -> tuple[int, int, int, int]:
        """(l, s, r, d)."""
        return self.num_layers, self.tokens_per_layer, self.rank, self.token_dim

    def tokenize(self, bundle: LoRABundle) -> Tensor:
        """LoRA bundle -> tokens (N, l, s, r, d), zero at padding."""
        if bundle.spec != self.spec:
            raise ValueError("the LoRA bundle was made for a different target spec than this layout")
        if bundle.rank != self.rank:
            raise ValueError(f"the LoRA bundle has rank {bundle.rank}, the layout rank {self.rank}")
        first = next(iter(bundle.A.values()))
        tokens = first.new_zeros((bundle.batch_size, *self.token_shape))
        for i, segments in enumerate(self._layers):
            for seg in segments:
                matrix = (bundle.A if seg.factor == "A" else bundle.B)[seg.path]
                if seg.expert is not None:
                    matrix = matrix[:, seg.expert]
                tokens[:, i, seg.start:seg.start + seg.count] = self._to_tokens(matrix, seg.factor, seg.count)
        return tokens

    def detokenize(self, tokens: Tensor, alpha: float) -> LoRABundle:
        """Tokens (N, l, s, r, d) -> LoRA bundle (padding ignored); the bitwise inverse of tokenize."""
        if tokens.dim() != 5 or tuple(tokens.shape[1:]) != self.token_shape:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not fit this layout: expected "
                             f"(N, {', '.join(map(str, self.token_shape))})")
        parts: dict[tuple[str, str], list[tuple[int | None, Tensor]]] = {}
        for i, segments in enumerate(self._layers):
            for seg in segments:
                matrix = self._from_tokens(tokens[:, i, seg.start:seg.start + seg.count], seg.factor, seg.shape)
                parts.setdefault((seg.path, seg.factor), []).append((seg.expert, matrix))
        A, B = {}, {}
        for path in self.spec.module_paths():
            for factor, out in (("A", A), ("B", B)):
                pieces = parts[(path, factor)]
                out[path] = pieces[0][1] if pieces[0][0] is None else torch.stack([m for _, m in pieces], dim=1)
        return LoRABundle(self.spec, self.rank, float(alpha), A, B)

    def to_json(self) -> str:
        return json.dumps({"format": _JSON_FORMAT, "version": _JSON_VERSION, "kind": self.kind,
                           "rank": self.rank, "token_dim": self.token_dim,
                           "num_layers": self.num_layers, "tokens_per_layer": self.tokens_per_layer})

    @staticmethod
    def from_json(s: str, spec: TargetSpec) -> "ParameterLayout":
        data = read_versioned_json(s, _JSON_FORMAT, _JSON_VERSION, "parameter layout")
        layout = make_layout(spec, data["rank"], data["kind"], data["token_dim"])
        if (layout.num_layers, layout.tokens_per_layer) != (data["num_layers"], data["tokens_per_layer"]):
            raise ValueError(f"the layout was saved as (l={data['num_layers']}, s={data['tokens_per_layer']}) "
                             f"but this target spec gives (l={layout.num_layers}, s={layout.tokens_per_layer}): "
                             "the spec and layout come from different generators")
        return layout


class RankAnchoredLayout(ParameterLayout):
    """§3.4: r x d tokens that keep the rank axis whole; per module A tokens then B tokens."""

    kind = "rank_anchored"

    def __init__(self, spec: TargetSpec, rank: int, token_dim: int):
        for path, module in spec.items():
            for axis, dim in (("d_in", module.d_in), ("d_out", module.d_out)):
                if dim % token_dim:
                    raise ValueError(f"token_dim {token_dim} does not divide {axis}={dim} of {path}; use a "
                                     f"divisor of {spec.gcd()} (the gcd of all adapted dimensions) or leave "
                                     "token_dim unset")
        super().__init__(spec, rank, token_dim)

    def _matrices(self, block):
        for module in block.modules:
            path = block.path(module.name)
            for expert in range(module.experts) if module.grouped else [None]:
                yield path, "A", expert, (self.rank, module.d_in), module.d_in // self.token_dim
                yield path, "B", expert, (module.d_out, self.rank), module.d_out // self.token_dim

    def _to_tokens(self, matrix, factor, count):
        """A (N, r, d_in) or B (N, d_out, r) -> (N, count, r, d): token t holds channels [t*d, (t+1)*d) of every rank row."""
        rank_major = matrix if factor == "A" else rearrange(matrix, "n o r -> n r o")
        return rearrange(rank_major, "n r (t d) -> n t r d", t=count)

    def _from_tokens(self, tokens, factor, shape):
        rank_major = rearrange(tokens, "n t r d -> n r (t d)")
        return (rank_major if factor == "A" else rearrange(rank_major, "n r o -> n o r")).contiguous()


class OfficialFlatLayout(ParameterLayout):
    """The public release's layout: each matrix flattened into r x d tiles, A matrices before B."""

    kind = "official_flat"

    def _matrices(self, block):
        names = [m.name for m in block.modules]

        def order(key: str) -> int:
            major = 0 if "lora_A" in key else 1
            minor = next(i for i, name in enumerate(names) if name in key)
            return major * len(names) + minor

        keyed = []
        for module in block.modules:
            shape_a, shape_b = factor_shapes(module, self.rank)
            keyed.append((f"{module.name}.lora_A", module, "A", shape_a))
            keyed.append((f"{module.name}.lora_B", module, "B", shape_b))
        for _, module, factor, shape in sorted(keyed, key=lambda item: order(item[0])):
            yield block.path(module.name), factor, None, shape, -(-math.prod(shape) // (self.rank * self.token_dim))

    def _to_tokens(self, matrix, factor, count):
        flat = matrix.reshape(matrix.shape[0], -1)
        flat = F.pad(flat, (0, count * self.rank * self.token_dim - flat.shape[1]))
        return flat.reshape(matrix.shape[0], count, self.rank, self.token_dim)

    def _from_tokens(self, tokens, factor, shape):
        flat = tokens.reshape(tokens.shape[0], -1)[:, :math.prod(shape)]
        return flat.reshape(tokens.shape[0], *shape).contiguous()


LAYOUT_KINDS = {cls.kind: cls for cls in (RankAnchoredLayout, OfficialFlatLayout)}


def make_layout(spec: TargetSpec, rank: int, kind: str = "rank_anchored", token_dim: int | None = None
                ) -> ParameterLayout:
    """The layout `kind` for a spec at LoRA rank `rank`; token_dim defaults to the gcd of all adapted dims."""
    if kind not in LAYOUT_KINDS:
        raise ValueError(f"unknown parameter layout {kind!r}; choose one of {sorted(LAYOUT_KINDS)}")
    return LAYOUT_KINDS[kind](spec, rank, spec.gcd() if token_dim is None else token_dim)
