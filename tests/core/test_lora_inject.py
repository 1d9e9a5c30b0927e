"""per_row_injection: row i of a batch runs with LoRA rows[i], hooks gone afterwards (§3.3, §3.6)."""
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from hywu_core import lora_inject
from hywu_core.lora import LoRABundle
from hywu_core.lora_inject import PerRowLoRA, per_row_injection
from hywu_core.targets import TargetBlock, TargetModule, TargetSpec


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"a": nn.Linear(8, 12), "b": nn.Linear(12, 8)}) for _ in range(2))
        self.moe = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = block["b"](torch.tanh(block["a"](x)))
        return sum(expert(x) for expert in self.moe)


SPEC = TargetSpec(blocks=(
    TargetBlock("blocks.0", (TargetModule("a", 8, 12), TargetModule("b", 12, 8))),
    TargetBlock("blocks.1", (TargetModule("a", 8, 12), TargetModule("b", 12, 8))),
    TargetBlock("moe", (TargetModule("experts", 8, 8, experts=3, members=("0", "1", "2")),)),
))


def bundle(n: int, seed: int = 0, requires_grad: bool = False) -> LoRABundle:
    g = torch.Generator().manual_seed(seed)
    A, B = {}, {}
    for path, m in SPEC.items():
        lead = (n, m.experts) if m.grouped else (n,)
        A[path] = torch.randn(*lead, 2, m.d_in, generator=g).requires_grad_(requires_grad)
        B[path] = torch.randn(*lead, m.d_out, 2, generator=g).requires_grad_(requires_grad)
    return LoRABundle(SPEC, 2, 3.0, A, B)


def merged_copy(model: Tiny, lora: LoRABundle, i: int, strength: float) -> Tiny:
    copy = Tiny()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block in SPEC.blocks:
            for m in block.modules:
                path = block.path(m.name)
                targets = [(block.path(x), e) for e, x in enumerate(m.members)] if m.grouped else [(path, None)]
                for target, e in targets:
                    a, b = lora.A[path][i], lora.B[path][i]
                    if e is not None:
                        a, b = a[e], b[e]
                    copy.get_submodule(target).weight += strength * lora.scale * b @ a
    return copy


def test_each_row_equals_its_merged_lora_and_hooks_are_removed():
    torch.manual_seed(0)
    model, lora, x = Tiny(), bundle(3), torch.randn(4, 5, 8)
    rows = torch.tensor([2, 0, 2, 1])
    with per_row_injection(model, lora, rows, strength=0.5):
        out = model(x)
    for i, k in enumerate(rows.tolist()):
        torch.testing.assert_close(out[i], merged_copy(model, lora, k, 0.5)(x[i:i + 1])[0], rtol=1e-5, atol=1e-5)
    assert not any(m._forward_hooks for m in model.modules())


def test_hooks_are_removed_when_the_block_raises_and_callable_rows_see_the_batch():
    model, lora = Tiny(), bundle(2)
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with per_row_injection(model, lora, lambda n: seen.append(n) or torch.arange(n) % 2):
            model(torch.randn(3, 8))
            raise RuntimeError("boom")
    assert seen and set(seen) == {3}
    assert not any(m._forward_hooks for m in model.modules())


def test_gradients_reach_the_lora_factors_only_through_the_frozen_model():
    model, lora = Tiny().requires_grad_(False), bundle(2, requires_grad=True)
    with per_row_injection(model, lora, torch.tensor([0, 1])):
        model(torch.randn(2, 8)).square().sum().backward()
    for path in SPEC.module_paths():
        assert lora.A[path].grad is not None and lora.A[path].grad.abs().sum() > 0
        assert lora.B[path].grad is not None and lora.B[path].grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_missing_target_modules_are_named():
    other = TargetSpec(blocks=(TargetBlock("blocks.0", (TargetModule("c", 8, 12),)),))
    lora = LoRABundle(other, 2, 2.0, {"blocks.0.c": torch.zeros(1, 2, 8)}, {"blocks.0.c": torch.zeros(1, 12, 2)})
    with pytest.raises(ValueError, match="blocks.0.c"):
        with per_row_injection(Tiny(), lora, torch.tensor([0])):
            pass


class FactorUse(TorchFunctionMode):
    """Counts the torch calls that take one of the bundle's own factor tensors (or a view of one) outside
    the per-row kernel, and records the (A, B) each hook hands to the kernel, in call order."""

    def __init__(self, lora: LoRABundle, monkeypatch):
        super().__init__()
        self.storages = {t.untyped_storage().data_ptr() for t in (*lora.A.values(), *lora.B.values())}
        self.reads, self.passed, self.in_kernel = 0, [], False

        def counted(kernel):
            def counted_kernel(*args):
                a, b = args[-4], args[-3]          # (..., x, a, b, rows, scale) for both kernels
                self.passed.append((a, b))
                self.in_kernel = True
                try:
                    return kernel(*args)
                finally:
                    self.in_kernel = False
            return counted_kernel

        for name in ("per_row_lora", "per_row_lora_add_"):   # training and sampling paths
            monkeypatch.setattr(lora_inject, name, counted(getattr(lora_inject, name)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.in_kernel and any(isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in self.storages
                                      for t in tree_leaves((args, kwargs))):
            self.reads += 1
        return func(*args, **kwargs)

    def step(self, run) -> tuple[int, list, torch.Tensor]:
        """(bundle reads, factors handed to the kernel, output) of one call of run()."""
        reads, passed = self.reads, len(self.passed)
        out = run()
        return self.reads - reads, self.passed[passed:], out


TARGETS = 7   # Linears the bundle adapts in Tiny: 2 x (a, b) and 3 experts


def test_one_injection_casts_the_factors_at_the_first_step_only(monkeypatch):
    """A sampler calls the model once per step inside the injection: the first call reads A and B of
    every target from the bundle and casts them to the model's dtype; every later call hands the kernel
    the very same cached tensors and reads nothing from the bundle (no per-step copies or casts)."""
    model, lora, x = Tiny().to(torch.bfloat16), bundle(3), torch.randn(4, 5, 8, dtype=torch.bfloat16)
    use = FactorUse(lora, monkeypatch)
    with torch.no_grad(), per_row_injection(model, lora, torch.tensor([2, 0, 2, 1])), use:
        steps = [use.step(lambda: model(x)) for _ in range(4)]
    (first_reads, first, first_out), later = steps[0], steps[1:]
    assert first_reads >= 2 * TARGETS and len(first) == TARGETS
    assert all(a.dtype == b.dtype == torch.bfloat16 for a, b in first)
    for reads, passed, out in later:
        assert reads == 0
        assert all(a is a0 and b is b0 for (a, b), (a0, b0) in zip(passed, first, strict=True))
        torch.testing.assert_close(out, first_out, rtol=0, atol=0)


def test_an_injection_per_step_casts_once_per_device_and_dtype(monkeypatch):
    """ComfyUI's dynamic mode keeps one PerRowLoRA and enters inject() at every step; with models of
    two dtypes taking turns, each dtype's factors are cast at its first step only and reused after."""
    lora = bundle(3)
    injection = PerRowLoRA(lora, 0.5)
    rows = torch.tensor([2, 0, 2, 1])
    base = Tiny()
    models = {dtype: Tiny().to(dtype) for dtype in (torch.float32, torch.bfloat16)}
    for model in models.values():
        model.load_state_dict(base.state_dict())
    use = FactorUse(lora, monkeypatch)

    def sampler_step(dtype):
        with injection.inject(models[dtype], rows):
            return models[dtype](torch.ones(4, 5, 8, dtype=dtype))

    with torch.no_grad(), use:
        steps = [(dtype, *use.step(lambda: sampler_step(dtype))) for _ in range(3) for dtype in models]
    first = {}
    for dtype, reads, passed, out in steps:
        if dtype not in first:
            assert reads >= 2 * TARGETS and len(passed) == TARGETS, dtype
            assert all(a.dtype == b.dtype == dtype for a, b in passed)
            first[dtype] = passed, out
            continue
        assert reads == 0, dtype
        assert all(a is a0 and b is b0 for (a, b), (a0, b0) in zip(passed, first[dtype][0], strict=True)), dtype
        torch.testing.assert_close(out, first[dtype][1], rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device synchronization needs a CUDA device")
def test_hooks_do_not_synchronize_host_and_device():
    """CPU-held factors and rows reach a CUDA input without a stream synchronize: a blocking
    host -> device copy would raise under torch.cuda.set_sync_debug_mode("error")."""
    model, x = Tiny().cuda(), torch.randn(4, 5, 8, device="cuda")
    for rows in (torch.tensor([2, 0, 2, 1]), lambda n: torch.arange(n, device="cuda") % 3):
        with torch.no_grad(), per_row_injection(model, bundle(3), rows):  # warm-up: kernels compile
            model(x)
        lora = bundle(3, seed=1)
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.no_grad(), per_row_injection(model, lora, rows):
                model(x)
                model(x)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
