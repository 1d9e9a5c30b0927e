"""Ratio buckets, conditioning-image preparation and naflex patches against the reference's recorded inputs."""
import io
import json

import pytest
import torch
from PIL import Image

from hywu_core.hunyuan3.images import (
    Bucket,
    NaflexPreprocessor,
    RatioBuckets,
    as_rgb,
    fit_to_bucket,
    image_from_tensor,
    naflex_size,
    output_bucket,
    prepare_cond_image,
    restore_aspect,
    vae_pixels,
)
from tests.hunyuan3.helpers import DATA

NAMES = ("a", "b")


@pytest.fixture(scope="module")
def manifest():
    return json.loads((DATA / "reference.json").read_text())


@pytest.fixture(scope="module")
def config():
    return json.loads((DATA / "tiny_model" / "config.json").read_text())


def _cond_images(config, crop=True):
    buckets = RatioBuckets.from_config(config)
    naflex = NaflexPreprocessor.from_config(config["vit_processor"])
    return [prepare_cond_image(Image.open(DATA / f"input_{n}.png"), buckets, naflex, crop=crop) for n in NAMES]


def test_cond_images_match_the_reference_exactly(config, reference, manifest):
    """Image size "256x256" (an explicit size): nearest-ratio bucket, LANCZOS cover + center crop, naflex."""
    conds = _cond_images(config)
    recorded = manifest["sequences"]["inputs"]["cond_images"]
    for j, (cond, rec) in enumerate(zip(conds, recorded)):
        assert list(cond.original_size) == rec["original_size_wh"] == manifest["inputs"]["image_sizes_wh"][j]
        assert cond.bucket_index == rec["vae"]["ratio_index"]
        assert tuple(cond.vae.shape) == (3, rec["vae"]["height"], rec["vae"]["width"])
        pixels = reference[f"vae.encode.{NAMES[j]}.image_uint8"][0]
        assert torch.equal(cond.vae, (pixels.float() / 255 - 0.5) / 0.5)
        assert torch.equal(cond.vit.pixel_values, reference["inputs.cond_vit_images"][j])
        assert torch.equal(cond.vit.attention_mask.long(), reference["inputs.cond_vit_image_kwargs.attention_mask"][0, j])
        assert torch.equal(cond.vit.spatial_shape, reference["inputs.cond_vit_image_kwargs.spatial_shapes"][0, j])
        assert cond.vit.spatial_shape.tolist() == [rec["vit"]["token_height"], rec["vit"]["token_width"]]
        assert cond.vit.pixel_values.shape[0] == rec["vit"]["token_length"]
        assert cond.vit.attention_mask.dtype == torch.int32


def test_auto_size_stretches_onto_the_same_buckets(config):
    cropped, stretched = _cond_images(config), _cond_images(config, crop=False)
    for c, s, name in zip(cropped, stretched, NAMES):
        assert s.bucket_index == c.bucket_index and s.vae.shape == c.vae.shape
        assert torch.equal(s.vit.pixel_values, c.vit.pixel_values)
        image = Image.open(DATA / f"input_{name}.png").convert("RGB")
        expected = image.resize((s.vae.shape[2], s.vae.shape[1]), resample=Image.Resampling.LANCZOS)
        assert torch.equal(s.vae, vae_pixels(expected))


def test_generated_image_size_matches_the_reference(config, reference):
    buckets = RatioBuckets.from_config(config)
    index, bucket = output_bucket("256x256", buckets)
    for key in ("inputs.gen_image_info", "t2i.inputs.gen_image_info"):
        assert reference[key].tolist() == [bucket.height, bucket.width, bucket.height // 16, bucket.width // 16,
                                           buckets.base_size, index]


def test_the_released_bucket_list():
    buckets = RatioBuckets(1024)
    assert len(buckets) == 37
    assert buckets[0] == (512, 2048) and buckets[8] == (512, 1536) and buckets[9] == (576, 1472)
    assert buckets[16] == (1024, 1024) and buckets[24] == (1536, 512) and buckets[32] == (2048, 512)
    assert list(buckets.buckets[33:]) == [(1024, 768), (1280, 720), (768, 1024), (720, 1280)]
    assert [b.ratio for b in buckets.buckets[:33]] == sorted(b.ratio for b in buckets.buckets[:33])
    small = RatioBuckets(256)
    assert len(small) == 37 and small[16] == (256, 256) and small[0] == (128, 512)
    assert small.nearest(320, 256) == 14 and small[14] == (224, 288)
    assert buckets.nearest(1920, 1080) == 36 and buckets.nearest(1000, 1000) == 16


@pytest.mark.parametrize("size, expected", [
    ("auto", None), ("1024x768", (33, (1024, 768))), (" 768 x 1024 ", (35, (768, 1024))),
    ("16:9", (36, (720, 1280))), ("1:1", (16, (1024, 1024))), ("<img_ratio_0>", (0, (512, 2048))),
    ((1000, 1010), (16, (1024, 1024))), ("300x7000", (0, (512, 2048))),
])
def test_output_sizes_snap_to_a_bucket(size, expected):
    assert output_bucket(size, RatioBuckets(1024)) == expected


@pytest.mark.parametrize("size, message", [
    ("big", "not understood"), ("1024*768", "not understood"), ("<img_ratio_37>", "there are 37"),
    ("0x512", "zero side"), ((512,), "pair of ints"), ((512.0, 512.0), "pair of ints"), (None, "pair of ints"),
])
def test_bad_output_sizes_are_refused(size, message):
    with pytest.raises(ValueError, match=message):
        output_bucket(size, RatioBuckets(1024))


def test_base_sizes_without_buckets_are_refused():
    for base in (200, 250, 1000):
        with pytest.raises(ValueError, match="image_base_size"):
            RatioBuckets(base)


def test_images_are_read_as_rgb_with_their_exif_orientation():
    rgba = Image.new("RGBA", (40, 30), (10, 200, 30, 0))
    assert as_rgb(rgba).mode == "RGB" and as_rgb(rgba).getpixel((0, 0)) == (10, 200, 30)
    for image in (Image.new("L", (40, 30), 77), Image.new("P", (40, 30)), Image.new("I;16", (40, 30))):
        assert as_rgb(image).mode == "RGB"
    exif = Image.Exif()
    exif[0x0112] = 6        # stored sideways: the viewer rotates it upright
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buffer, format="PNG", exif=exif)
    assert as_rgb(Image.open(buffer)).size == (30, 40)


def test_small_images_are_upsampled_and_too_small_or_empty_ones_refused():
    buckets, naflex = RatioBuckets(256), NaflexPreprocessor(max_patches=32)
    cond = prepare_cond_image(Image.new("RGB", (16, 16), (255, 0, 0)), buckets, naflex)
    assert cond.bucket_index == 16 and tuple(cond.vae.shape) == (3, 256, 256)
    assert cond.vit.spatial_shape.tolist() == [5, 5] and int(cond.vit.attention_mask.sum()) == 25
    with pytest.raises(ValueError, match="8x20 pixels, too small"):
        prepare_cond_image(Image.new("RGB", (8, 20)), buckets, naflex)
    with pytest.raises(ValueError, match="empty"):
        prepare_cond_image(Image.new("RGB", (0, 5)), buckets, naflex)
    with pytest.raises(TypeError, match="PIL image"):
        prepare_cond_image(torch.zeros(5, 5, 3), buckets, naflex)


def test_naflex_grid_keeps_the_ratio_within_the_patch_budget():
    assert naflex_size(256, 320, 16, 32) == (80, 96)
    assert naflex_size(10, 10000, 16, 256) == (16, 4096)
    for h, w in ((480, 640), (900, 100), (1, 1), (4000, 3000)):
        rows, cols = (s // 16 for s in naflex_size(h, w, 16, 729))
        assert 1 <= rows * cols <= 729


def test_unsupported_naflex_configs_are_refused():
    with pytest.raises(ValueError, match="resample"):
        NaflexPreprocessor.from_config({"resample": 1})
    with pytest.raises(ValueError, match="normalising"):
        NaflexPreprocessor.from_config({"do_normalize": False})


def test_comfy_image_tensors_round_trip_exactly():
    pixels = torch.randint(0, 256, (1, 7, 9, 3), dtype=torch.uint8)
    image = image_from_tensor(pixels.float() / 255)
    assert image.size == (9, 7)
    assert torch.equal(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(7, 9, 3), pixels[0])
    assert image_from_tensor(torch.ones(4, 4, 1)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError, match="one at a time"):
        image_from_tensor(torch.zeros(2, 4, 4, 3))


def test_center_crop_and_stretch_geometry():
    image = Image.new("RGB", (300, 100))
    assert fit_to_bucket(image, Bucket(256, 256)).size == (256, 256)
    assert fit_to_bucket(image, Bucket(128, 512), crop=False).size == (512, 128)


def test_auto_outputs_get_the_first_matching_input_aspect_back():
    buckets = RatioBuckets(256)
    output = Image.new("RGB", (256, 256))
    assert restore_aspect(output, [(300, 1000), (260, 250)], buckets).size == (261, 251)
    assert restore_aspect(output, [(256, 256), (260, 250)], buckets).size == (256, 256)
    assert restore_aspect(output, [(100, 400)], buckets).size == (256, 256)
