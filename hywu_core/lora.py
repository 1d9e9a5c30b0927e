"""A batch of generated LoRAs, one per condition, over a target spec (paper §3.4: {A, B} = detokenize(T)).

For the adapted module at path p, row i of the batch adds scale * B[p][i] @ A[p][i] to its
weight, scale = alpha / rank. Grouped roles carry an expert axis after the batch axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hywu_core.targets import TargetModule, TargetSpec, bind_expert_groups


@dataclass
class LoRABundle:
    """N LoRAs over one spec: A[path] (N, [E,] r, d_in), B[path] (N, [E,] d_out, r)."""

    spec: TargetSpec
    rank: int
    alpha: float
    A: dict[str, Tensor]
    B: dict[str, Tensor]

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        expected = self.spec.module_paths()
        for name, factors in (("A", self.A), ("B", self.B)):
            missing = [p for p in expected if p not in factors]
            extra = [p for p in factors if p not in set(expected)]
            if missing or extra:
                raise ValueError(f"LoRA bundle {name} does not match its target spec: "
                                 f"missing {missing[:3]}, unexpected {extra[:3]}")
        sizes = set()
        for path, module in self.spec.items():
            a, b = self.A[path], self.B[path]
            want_a, want_b = factor_shapes(module, self.rank)
            if tuple(a.shape[1:]) != want_a or tuple(b.shape[1:]) != want_b or a.shape[0] != b.shape[0]:
                raise ValueError(f"LoRA factors of {path}: A {tuple(a.shape)}, B {tuple(b.shape)}; expected "
                                 f"A (N, {', '.join(map(str, want_a))}) and B (N, {', '.join(map(str, want_b))})")
            sizes.add(a.shape[0])
        if len(sizes) != 1:
            raise ValueError(f"LoRA factors disagree on the batch size: {sorted(sizes)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def batch_size(self) -> int:
        return next(iter(self.A.values())).shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.A.values())).dtype

    def item(self, i: int) -> "LoRABundle":
        """Batch row i as a bundle with N = 1."""
        n = self.batch_size
        if not -n <= i < n:
            raise IndexError(f"LoRA bundle row {i} out of range for batch size {n}")
        i %= n
        return LoRABundle(self.spec, self.rank, self.alpha,
                          {p: t[i:i + 1] for p, t in self.A.items()}, {p: t[i:i + 1] for p, t in self.B.items()})

    def repeat(self, n: int) -> "LoRABundle":
        """A bundle of one LoRA as n identical rows (views: no copy, gradients flow back to the row)."""
        if self.batch_size != 1:
            raise ValueError(f"repeat needs a bundle of one LoRA, this one has {self.batch_size}")
        return LoRABundle(self.spec, self.rank, self.alpha, {p: t.expand(n, *t.shape[1:]) for p, t in self.A.items()},
                          {p: t.expand(n, *t.shape[1:]) for p, t in self.B.items()})

    def bound(self, slots) -> "LoRABundle":
        """The same factors over the spec with its expert groups bound to a model's expert Linears
        (targets.bind_expert_groups; `slots` is what the model declares); self when there is none to bind."""
        spec = bind_expert_groups(self.spec, slots)
        return self if spec is self.spec else LoRABundle(spec, self.rank, self.alpha, self.A, self.B)

    def to(self, *args, **kwargs) -> "LoRABundle":
        """A copy with every factor moved by Tensor.to(*args, **kwargs) (device and/or dtype)."""
        return LoRABundle(self.spec, self.rank, self.alpha,
                          {p: t.to(*args, **kwargs) for p, t in self.A.items()},
                          {p: t.to(*args, **kwargs) for p, t in self.B.items()})

    def to_comfy_state_dict(self, i: int, prefix: str = "diffusion_model.") -> dict[str, Tensor]:
        """Row i in ComfyUI's LoRA format (comfy.lora.load_lora, "Load LoRA Model").

        Keys "<prefix><path>.lora_up.weight" (d_out, r), ".lora_down.weight" (r, d_in) and
        ".alpha" (scalar); grouped roles are written once per member module. Roles that write only
        some output rows of a Linear (out_slice) are written as one LoRA per Linear: the roles'
        down factors stacked, their up factors placed at their rows (zeros elsewhere), rank the sum
        of theirs and alpha scaled to keep alpha / rank, so up @ down is exactly their updates.
        """
        row = self.item(i)
        per_linear: dict[str, list[tuple[Tensor, Tensor, tuple[int, int] | None]]] = {}
        for block in self.spec.blocks:
            for m in block.modules:
                path = block.path(m.name)
                a, b = row.A[path][0], row.B[path][0]
                if m.grouped and not m.members:
                    raise ValueError(f"expert group {path} has no member module paths; ComfyUI's LoRA format "
                                     "needs one module per expert")
                factors = [(a[e], b[e]) for e in range(m.experts)] if m.grouped else [(a, b)]
                for linear, (down, up) in zip(m.linears, factors):
                    per_linear.setdefault(block.path(linear), []).append((down, up, m.out_slice))
        out = {}
        for target, parts in per_linear.items():
            if len(parts) == 1 and parts[0][2] is None:
                down, up = parts[0][0].clone(), parts[0][1].clone()
            else:
                down, up = _fused_factors(target, parts)
            out[f"{prefix}{target}.lora_up.weight"] = up
            out[f"{prefix}{target}.lora_down.weight"] = down
            alpha = self.alpha * down.shape[0] / self.rank if down.shape[0] != self.rank else self.alpha
            out[f"{prefix}{target}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
        return out

    @classmethod
    def from_comfy_state_dicts(cls, state_dicts: list[dict[str, Tensor]], spec: TargetSpec,
                               prefix: str = "diffusion_model.") -> "LoRABundle":
        """Stack ComfyUI-format LoRAs (one per batch row) into a bundle: the inverse of to_comfy_state_dict.

        A LoRA without ".alpha" keys means scale 1 in ComfyUI, i.e. alpha = rank.
        """
        if not state_dicts:
            raise ValueError("from_comfy_state_dicts needs at least one state dict")
        targets = []
        for block in spec.blocks:
            for m in block.modules:
                if m.out_slice is not None:
                    raise ValueError(f"{block.path(m.name)} writes only some output rows of its Linear; such LoRAs "
                                     "are not read back from ComfyUI's LoRA format")
                if m.grouped and not m.members:
                    raise ValueError(f"expert group {block.path(m.name)} has no member module paths; "
                                     "it cannot be read from ComfyUI's LoRA format")
                names = [block.path(x) for x in m.members] if m.grouped else [block.path(m.name)]
                targets.append((block.path(m.name), m, names))
        keys = {f"{prefix}{n}{suffix}" for _, _, names in targets for n in names
                for suffix in (".lora_up.weight", ".lora_down.weight", ".alpha")}
        ranks, alphas = set(), set()
        for row, sd in enumerate(state_dicts):
            unknown = sorted(k for k in sd if k not in keys)
            if unknown:
                raise ValueError(f"LoRA {row} has keys outside the target spec: {unknown[:3]}"
                                 f"{' ...' if len(unknown) > 3 else ''}; check the prefix ({prefix!r}) and the spec")
            for _, _, names in targets:
                for n in names:
                    down = sd.get(f"{prefix}{n}.lora_down.weight")
                    if down is None or f"{prefix}{n}.lora_up.weight" not in sd:
                        raise ValueError(f"LoRA {row} lacks {prefix}{n}.lora_down.weight / .lora_up.weight")
                    ranks.add(down.shape[0])
                    alpha = sd.get(f"{prefix}{n}.alpha")
                    alphas.add(None if alpha is None else float(alpha.item()))
        if len(ranks) != 1:
            raise ValueError(f"the LoRAs mix ranks {sorted(ranks)}; a bundle has one rank")
        rank = ranks.pop()
        if len(alphas) != 1:
            raise ValueError(f"the LoRAs mix alphas {sorted(alphas, key=str)}; a bundle has one alpha")
        alpha = alphas.pop()
        A, B = {}, {}
        for path, m, names in targets:
            downs = [torch.stack([sd[f"{prefix}{n}.lora_down.weight"] for n in names]) for sd in state_dicts]
            ups = [torch.stack([sd[f"{prefix}{n}.lora_up.weight"] for n in names]) for sd in state_dicts]
            A[path] = torch.stack(downs) if m.grouped else torch.stack(downs)[:, 0]
            B[path] = torch.stack(ups) if m.grouped else torch.stack(ups)[:, 0]
        return cls(spec, rank, float(rank) if alpha is None else alpha, A, B)


def _fused_factors(target: str, parts: list[tuple[Tensor, Tensor, tuple[int, int] | None]]) -> tuple[Tensor, Tensor]:
    """One (down, up) for LoRAs that write disjoint output rows of one Linear: down stacks theirs, up holds each
    one's up factor at its rows and rank columns."""
    rows = [s if s is not None else (0, up.shape[0]) for _, up, s in parts]
    spans = sorted(rows)
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise ValueError(f"two LoRAs write overlapping output rows {spans} of {target}; the target spec is broken")
    down = torch.cat([d for d, _, _ in parts])
    up = down.new_zeros(max(stop for _, stop in rows), down.shape[0])
    col = 0
    for (d, u, _), (start, stop) in zip(parts, rows):
        up[start:stop, col:col + d.shape[0]] = u
        col += d.shape[0]
    return down, up


def factor_shapes(module: TargetModule, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-row shapes of (A, B) for a module: (r, d_in), (d_out, r), with a leading E for groups."""
    lead = (module.experts,) if module.grouped else ()
    return lead + (rank, module.d_in), lead + (module.d_out, rank)
