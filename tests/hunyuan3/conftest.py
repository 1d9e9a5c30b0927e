"""Fixtures of the HunyuanImage-3 tests: the reference tensors, the tiny checkpoint folder and its transformer."""
import pytest
from safetensors.torch import load_file

from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.model import DIFFUSION_PREFIXES, HunyuanImage3Transformer
from tests.hunyuan3.helpers import DATA


@pytest.fixture(scope="session")
def reference():
    return load_file(str(DATA / "reference.safetensors"))


@pytest.fixture(scope="session")
def tiny_model():
    return open_folder(str(DATA / "tiny_model"))


@pytest.fixture(scope="session")
def transformer(tiny_model):
    model = HunyuanImage3Transformer(tiny_model.config)
    model.load_weights(tiny_model.state_dict(DIFFUSION_PREFIXES, strip=False))
    return model.eval()
