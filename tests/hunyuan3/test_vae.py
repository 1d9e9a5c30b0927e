"""The VAE against the reference's recorded encode / posterior sample / decode on the tiny checkpoint."""
import types

import pytest
import torch
from safetensors import safe_open
from torch import nn

from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.vae import HunyuanVAE
from tests.hunyuan3.helpers import DATA


def reference(*names):
    with safe_open(DATA / "reference.safetensors", framework="pt") as f:
        return [f.get_tensor(n) for n in names]


def assert_close(ours, ref, rel=1e-5):
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= rel * max(1.0, ref.abs().max().item()), diff


@pytest.fixture(autouse=True)
def one_thread():
    """The reference was recorded on one CPU thread; conv reductions over more threads round differently."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folder():
    return open_folder(DATA / "tiny_model")


@pytest.fixture(scope="module")
def vae(folder):
    model = HunyuanVAE.from_config(folder.config["vae"]).eval()
    model.load_state_dict(folder.state_dict("vae."), strict=True)
    return model


def test_every_checkpoint_key_loads(folder, vae):
    assert set(vae.state_dict()) == set(folder.state_dict("vae."))


@torch.no_grad()
def test_encode_and_seeded_sample_match_reference(vae):
    generator = torch.Generator().manual_seed(42)    # the release: one generator, images in order
    for name in ("a", "b"):
        pixels, mean, logvar, sample, latent = reference(
            *(f"vae.encode.{name}.{k}" for k in ("image_uint8", "mean", "logvar", "sample", "latent")))
        posterior = vae.encode((pixels.float() / 255 - 0.5) / 0.5)
        assert_close(posterior.mean, mean.squeeze(2))
        assert_close(posterior.logvar, logvar.squeeze(2))
        z = vae.sample(posterior, generator)
        assert_close(z, sample.squeeze(2))
        assert_close(vae.to_model_latent(z), latent)


@torch.no_grad()
def test_decode_matches_reference(vae):
    z, image = reference("vae.decode.input", "vae.decode.output")
    assert_close(vae.decode(z.squeeze(2)), image.squeeze(2))


def test_shift_and_scale_are_the_config_fields(vae):
    z = torch.randn(1, 8, 2, 2)
    assert torch.equal(vae.to_model_latent(z), (z - 0.1) * 0.75)
    assert torch.equal(vae.from_model_latent(z), z / 0.75 + 0.1)
    unscaled = HunyuanVAE(latent_channels=8, block_out_channels=[32, 32], layers_per_block=1, ffactor_spatial=2,
                          ffactor_temporal=2, scaling_factor=None, shift_factor=None)
    assert torch.equal(unscaled.to_model_latent(z), z)


def test_layers_come_from_ops_and_device_passes_through(folder):
    made = []

    class Conv3d(nn.Conv3d):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    ops = types.SimpleNamespace(Conv3d=Conv3d, GroupNorm=nn.GroupNorm)
    model = HunyuanVAE.from_config(folder.config["vae"], ops=ops, device="meta")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(type(m) is Conv3d for m in convs) and len(made) == len(convs)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_image_size_not_a_multiple_of_the_downsample_factor_is_refused(vae):
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.encode(torch.zeros(1, 3, 40, 48))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        vae.encode(torch.zeros(3, 32, 32))


def test_config_with_too_few_levels_is_refused(folder):
    config = dict(folder.config["vae"], block_out_channels=[32, 32, 32])
    with pytest.raises(ValueError, match="downsamples at most 4x"):
        HunyuanVAE.from_config(config)
