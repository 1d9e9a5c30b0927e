"""The experiments' statistics on inputs whose answers are known (no models, no ComfyUI)."""
import torch

from hywu_core.experiments.geometry import neighbour_rates, update_cosines
from hywu_core.experiments.gradients import task_statistics
from hywu_core.lora import LoRABundle
from hywu_core.targets import TargetBlock, TargetModule, TargetSpec


def test_update_cosines_equal_the_cosines_of_the_dense_updates():
    spec = TargetSpec(blocks=(TargetBlock(prefix="b0", modules=(TargetModule("q", 6, 5), TargetModule("o", 5, 7))),
                              TargetBlock(prefix="b1", modules=(TargetModule("q", 6, 5),))))
    generator = torch.Generator().manual_seed(0)
    n, r = 4, 3
    A = {p: torch.randn(n, r, m.d_in, generator=generator) for p, m in spec.items()}
    B = {p: torch.randn(n, m.d_out, r, generator=generator) for p, m in spec.items()}
    bundle = LoRABundle(spec, r, 2.0, A, B)
    dense = torch.cat([(B[p] @ A[p]).flatten(1) for p in spec.module_paths()], dim=1).double()
    dense = torch.nn.functional.normalize(dense, dim=1)
    assert torch.allclose(update_cosines(bundle).double(), dense @ dense.T, atol=1e-6)


def test_task_statistics_separate_agreeing_and_opposing_tasks():
    # blur and deblur gradients point opposite ways, brighten is orthogonal to both
    base = {"blur": torch.tensor([1.0, 0.0]), "deblur": torch.tensor([-1.0, 0.0]), "brighten": torch.tensor([0.0, 1.0])}
    labels = ["blur", "blur", "deblur", "deblur", "brighten", "brighten"]
    grads = torch.stack([base[t] + 0.01 * k for k, t in enumerate(labels)])
    unit = torch.nn.functional.normalize(grads, dim=1)
    stats = task_statistics(unit @ unit.T, labels, ["blur", "deblur", "brighten"])
    assert stats["groups"]["intra-task"].min() > 0.99
    assert stats["groups"]["conflicting pair"].max() < -0.99
    assert float(stats["conflict"][0, 1]) == 1.0 and float(stats["conflict"][0, 0]) == 0.0
    assert abs(float(stats["mean"][0, 2])) < 0.05


def test_neighbour_rates_against_random_pairs():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    similarity = (labels[:, None] == labels[None, :]).float() + 0.01 * torch.arange(6.0)
    same = labels[:, None] == labels[None, :]
    rates, knn = neighbour_rates(similarity, {"same": same}, k=2)
    assert rates["same"]["knn"] == 1.0
    assert abs(rates["same"]["random"] - 0.4) < 1e-6   # 2 of the 5 other items share the label
    assert not (knn == torch.arange(6)[:, None]).any()   # an item is never its own neighbour
