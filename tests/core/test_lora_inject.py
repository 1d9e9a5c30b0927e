"""per_row_injection: row i of a batch runs with LoRA rows[i], hooks gone afterwards (§3.3, §3.6)."""
import pytest
import torch
from torch import nn

from hywu_core.lora import LoRABundle
from hywu_core.lora_inject import per_row_injection
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
