"""LoRA tools: update norms, Average / Shuffle PG (§5.3), blend, norm bound (§7.6)."""
import pytest
import torch

from hywu_core import lora_tools
from hywu_core.lora import LoRABundle

from .helpers import uneven_spec


def random_bundle(n: int, seed: int, rank: int = 4, alpha: float = 8.0) -> LoRABundle:
    g = torch.Generator().manual_seed(seed)
    spec = uneven_spec()
    A = {p: torch.randn(n, rank, m.d_in, generator=g, dtype=torch.float64) for p, m in spec.items()}
    B = {p: torch.randn(n, m.d_out, rank, generator=g, dtype=torch.float64) for p, m in spec.items()}
    return LoRABundle(spec, rank, alpha, A, B)


def delta(bundle: LoRABundle, path: str, i: int) -> torch.Tensor:
    return bundle.scale * bundle.B[path][i] @ bundle.A[path][i]


def test_update_norms_are_the_frobenius_norms_of_each_update():
    bundle = random_bundle(3, 0)
    per_module = lora_tools.module_update_norms(bundle)
    for path in bundle.spec.module_paths():
        for i in range(3):
            assert per_module[path][i].item() == pytest.approx(delta(bundle, path, i).norm().item(), rel=1e-9)
    layers = lora_tools.update_norms(bundle)
    assert layers.shape == (3, 2)
    block0 = [block.path(m.name) for block in bundle.spec.blocks[:1] for m in block.modules]
    expected = torch.stack([delta(bundle, p, 1).norm() ** 2 for p in block0]).sum().sqrt()
    assert layers[1, 0].item() == pytest.approx(expected.item(), rel=1e-9)


def test_average_parameters_is_the_mean_of_the_factors():
    bundle = random_bundle(4, 1)
    mean = lora_tools.average(bundle, "parameters")
    assert mean.batch_size == 1 and mean.rank == bundle.rank
    for path in bundle.spec.module_paths():
        torch.testing.assert_close(mean.A[path][0], bundle.A[path].mean(0))
        torch.testing.assert_close(mean.B[path][0], bundle.B[path].mean(0))


def test_average_update_is_the_exact_mean_update():
    bundle = random_bundle(3, 2)
    mean = lora_tools.average(bundle, "update")
    assert mean.rank == 3 * bundle.rank
    for path in bundle.spec.module_paths():
        expected = sum(delta(bundle, path, i) for i in range(3)) / 3
        torch.testing.assert_close(delta(mean, path, 0), expected)


def test_shuffle_moves_every_lora_and_is_seeded():
    bundle = random_bundle(5, 3)
    shuffled, order = lora_tools.shuffle(bundle, seed=7)
    assert sorted(order) == list(range(5)) and all(order[i] != i for i in range(5))
    assert lora_tools.shuffle(bundle, seed=7)[1] == order
    path = bundle.spec.module_paths()[0]
    for i, j in enumerate(order):
        assert torch.equal(shuffled.A[path][i], bundle.A[path][j])
        assert torch.equal(shuffled.B[path][i], bundle.B[path][j])
    with pytest.raises(ValueError, match="at least 2"):
        lora_tools.shuffle(random_bundle(1, 0), seed=0)


def test_blend_interpolates_and_broadcasts_a_single_lora():
    a, b = random_bundle(2, 4), random_bundle(1, 5)
    path = a.spec.module_paths()[1]
    at_zero = lora_tools.blend(a, b, 0.0)
    assert torch.equal(at_zero.A[path], a.A[path])
    half = lora_tools.blend(a, b, 0.25, "update")
    for i in range(2):
        expected = 0.75 * delta(a, path, i) + 0.25 * delta(b, path, 0)
        torch.testing.assert_close(delta(half, path, i), expected)
    with pytest.raises(ValueError, match="sizes"):
        lora_tools.blend(random_bundle(2, 0), random_bundle(3, 1), 0.5)


def test_bound_clamps_only_updates_above_the_limit():
    bundle = random_bundle(2, 6)
    norms = lora_tools.module_update_norms(bundle)
    limit = float(torch.cat(list(norms.values())).median())
    bounded, clamped = lora_tools.bound(bundle, limit)
    after = lora_tools.module_update_norms(bounded)
    above = sum(int((n > limit).sum()) for n in norms.values())
    assert clamped == above > 0
    for path, before in norms.items():
        for i in range(2):
            if before[i] > limit:
                assert after[path][i].item() == pytest.approx(limit, rel=1e-9)
            else:
                assert torch.equal(bounded.B[path][i], bundle.B[path][i])
    with pytest.raises(ValueError, match="positive"):
        lora_tools.bound(bundle, 0.0)
