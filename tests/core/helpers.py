"""Small target specs, layouts and generators shared by the hywu_core NNT / generator-file tests."""
import torch

from hywu_core.generator import Generator
from hywu_core.nnt import NNTConfig
from hywu_core.targets import TargetBlock, TargetModule, TargetSpec
from hywu_core.tokenizer import make_layout


def uneven_spec() -> TargetSpec:
    """Two blocks whose token counts differ (block 1 is padded), d = gcd = 16 -> s = 6."""
    return TargetSpec(blocks=(
        TargetBlock(prefix="blocks.0", modules=(TargetModule("attn.qkv", 16, 48), TargetModule("attn.proj", 16, 16))),
        TargetBlock(prefix="blocks.1", modules=(TargetModule("attn.qkv", 16, 32),)),
    ))


def small_generator(seed: int = 0, cond_dim: int = 12, **config) -> Generator:
    torch.manual_seed(seed)
    layout = make_layout(uneven_spec(), 4)
    options = dict(cond_dim=cond_dim, width=24, depth=2, heads=2) | config
    return Generator(NNTConfig(**options), layout, alpha=8.0)


def randomize_b_head(generator: Generator, seed: int = 1) -> None:
    """Give the zero-initialised B head random weights (as training would), so B != 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in generator.nnt.head_B.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
