"""Operations on generated LoRA batches: the paper's diagnostics and controls.

    update_norms   ||scale * B_i A_i||_F per item and layer (what the Generate node shows)
    average        Average PG (§5.3, Table 7 (d)): the mean LoRA over the batch, for every item
    shuffle        Shuffle PG (§5.3, Table 7 (e)): LoRAs permuted across items, no item keeps its own
    blend          interpolation between two generated LoRAs
    bound          the §7.6 safety control: each module's update norm clamped to a maximum

`average` and `blend` work in one of two spaces:
    "parameters"  the factors A and B are averaged separately (what the paper's Average PG does:
                  "the mean LoRA parameter"); the result keeps the rank r
    "update"      the updates themselves: sum_i w_i B_i A_i is written exactly as one LoRA of rank
                  k*r by stacking the factors, A' = [A_1; ...; A_k], B' = [w_1 B_1, ..., w_k B_k]

Norms use ||B A||_F^2 = sum((B^T B) * (A A^T)) (both r x r and symmetric): no d_out x d_in product.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hywu_core.checks import finite
from hywu_core.lora import LoRABundle

SPACES = ("parameters", "update")


def module_update_norms(bundle: LoRABundle) -> dict[str, Tensor]:
    """||scale * B A||_F for every module path: (N,) per path, (N, E) for expert groups."""
    norms = {}
    for path in bundle.spec.module_paths():
        dtype = torch.promote_types(bundle.A[path].dtype, torch.float32)
        a, b = bundle.A[path].to(dtype), bundle.B[path].to(dtype)
        gram_a = a @ a.transpose(-1, -2)
        gram_b = b.transpose(-1, -2) @ b
        squared = (gram_a * gram_b).sum(dim=(-1, -2)).clamp_min(0)
        norms[path] = squared.sqrt() * bundle.scale
    return norms


def update_norms(bundle: LoRABundle) -> Tensor:
    """(N, l): per item, the Frobenius norm of each layer's whole update (all its modules)."""
    per_module = module_update_norms(bundle)
    layers = []
    for block in bundle.spec.blocks:
        squares = [per_module[block.path(m.name)].pow(2).reshape(bundle.batch_size, -1).sum(-1)
                   for m in block.modules]
        layers.append(torch.stack(squares).sum(0).sqrt())
    return torch.stack(layers, dim=1)


def _combine(bundles: list[LoRABundle], weights: list[float], space: str) -> LoRABundle:
    """sum_k weights[k] * bundles[k] (each of batch N or 1, broadcast) in the given space."""
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}: use one of {', '.join(SPACES)}")
    first = bundles[0]
    for other in bundles[1:]:
        if other.spec != first.spec:
            raise ValueError("the LoRAs were generated for different backbones (their target specs differ)")
        if (other.rank, other.alpha) != (first.rank, first.alpha) and space == "parameters":
            raise ValueError(f"averaging parameters needs one rank and alpha, got rank {first.rank} "
                             f"alpha {first.alpha} and rank {other.rank} alpha {other.alpha}; use the 'update' space")
    sizes = {b.batch_size for b in bundles} - {1}
    if len(sizes) > 1:
        raise ValueError(f"cannot pair LoRA batches of sizes {sorted(b.batch_size for b in bundles)}: "
                         "give batches of the same size, or a single LoRA")
    n = sizes.pop() if sizes else 1
    A, B = {}, {}
    if space == "parameters":
        for path in first.spec.module_paths():
            A[path] = sum(w * b.A[path].expand(n, *b.A[path].shape[1:]) for w, b in zip(weights, bundles))
            B[path] = sum(w * b.B[path].expand(n, *b.B[path].shape[1:]) for w, b in zip(weights, bundles))
        return LoRABundle(first.spec, first.rank, first.alpha, A, B)
    # update space: fold each bundle's own scale into B, so the stacked LoRA has alpha = rank (scale 1)
    for path in first.spec.module_paths():
        A[path] = torch.cat([b.A[path].expand(n, *b.A[path].shape[1:]) for b in bundles], dim=-2)
        B[path] = torch.cat([(w * b.scale) * b.B[path].expand(n, *b.B[path].shape[1:])
                             for w, b in zip(weights, bundles)], dim=-1)
    rank = sum(b.rank for b in bundles)
    return LoRABundle(first.spec, rank, float(rank), A, B)


def average(bundle: LoRABundle, space: str = "parameters") -> LoRABundle:
    """Average PG: one LoRA, the mean of the batch (returned with batch size 1)."""
    n = bundle.batch_size
    return _combine([bundle.item(i) for i in range(n)], [1.0 / n] * n, space)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) that moves every item (a random n-cycle, Sattolo's algorithm)."""
    generator = torch.Generator().manual_seed(seed)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(torch.randint(0, i, (), generator=generator))
        order[i], order[j] = order[j], order[i]
    return order


def shuffle(bundle: LoRABundle, seed: int) -> tuple[LoRABundle, list[int]]:
    """Shuffle PG: item i gets the LoRA generated for item permutation[i], never its own."""
    n = bundle.batch_size
    if n < 2:
        raise ValueError("shuffling needs a batch of at least 2 LoRAs (one per image): "
                         "encode several images or instructions together")
    order = derangement(n, seed)
    index = torch.tensor(order)
    A = {p: t.index_select(0, index.to(t.device)) for p, t in bundle.A.items()}
    B = {p: t.index_select(0, index.to(t.device)) for p, t in bundle.B.items()}
    return LoRABundle(bundle.spec, bundle.rank, bundle.alpha, A, B), order


def blend(first: LoRABundle, second: LoRABundle, t: float, space: str = "parameters") -> LoRABundle:
    """(1 - t) * first + t * second, item by item (a batch of 1 pairs with every item)."""
    t = finite(t, "t")
    return _combine([first, second], [1.0 - t, t], space)


def bound(bundle: LoRABundle, max_norm: float) -> tuple[LoRABundle, int]:
    """Scale down each module update whose ||scale * B A||_F exceeds max_norm (§7.6); returns the
    bounded bundle and how many (item, module) updates were scaled."""
    if not finite(max_norm, "max_norm") > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norms = module_update_norms(bundle)
    B, clamped = {}, 0
    for path, norm in norms.items():
        factor = (max_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp(max=1.0)
        clamped += int((factor < 1).sum())
        b = bundle.B[path]
        B[path] = b * factor.reshape(*factor.shape, 1, 1).to(b.dtype)
    return LoRABundle(bundle.spec, bundle.rank, bundle.alpha, dict(bundle.A), B), clamped

