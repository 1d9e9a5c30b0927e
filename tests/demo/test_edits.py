"""The demo edit suite (hywu_core.demo.images / edits, paper §5.1): offline source images in three
disjoint splits by source image, the image-dependent pairs and same-source conflicts and their
scores, PSNR/SSIM and the artefact metrics, and the dataset folders the trainer reads."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hywu_core.demo import edits as E
from hywu_core.demo import images as I
from hywu_core.tiny_editor.encoders import EDIT_WORDS
from hywu_core.train.data import read_manifest

REPO = Path(__file__).resolve().parents[2]


def folder_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """64x64 images gain nothing from intra-op threads, and on the shared 2-core test machine
    OpenMP's spin-waiting made this module 3x slower with two (27 s vs 9 s measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def heldout_pool():
    return I.crop_pool("test")


def test_skimage_samples_are_read_offline_from_the_wheel():
    import skimage
    import skimage.data

    wheel = Path(skimage.__file__).parent
    for name in I.SKIMAGE_FILES:
        path = Path(str(I.skimage_file(name)))
        assert path.is_file() and wheel in path.parents, path
        ours = I._skimage_array(name)
        theirs = skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skimage.data, name)()
        assert ours.dtype == np.uint8 and np.array_equal(ours, theirs), name
    assert set(I.SKIMAGE_TRAIN) | set(I.SKIMAGE_VAL) | set(I.SKIMAGE_TEST) == set(I.SKIMAGE_FILES)


def test_the_three_splits_are_fixed_and_share_no_source_image(heldout_pool):
    train, val = I.crop_pool("train"), I.crop_pool("val")
    splits = (I.TRAIN_SOURCES, I.VAL_SOURCES, I.TEST_SOURCES)
    assert len(set().union(*splits)) == sum(len(s) for s in splits)
    for pool, names in ((train, I.TRAIN_SOURCES), (val, I.VAL_SOURCES), (heldout_pool, I.TEST_SOURCES)):
        assert {c.source for c in pool} == set(names)
        assert len(pool) == I.PER_SOURCE * len(names)
    sources = {name: I.load_source(name) for name in I.TRAIN_SOURCES + I.VAL_SOURCES + I.TEST_SOURCES}
    canvases = list(sources.values())
    for i, a in enumerate(canvases):  # no source image is another one under a second name
        assert all(a.shape != b.shape or not torch.equal(a, b) for b in canvases[i + 1:])
    for crop in train + val + heldout_pool:
        assert crop.image.dtype == torch.float32 and crop.image.shape == (64, 64, 3)
        assert 0 <= crop.image.min() and crop.image.max() <= 1 and I.crop_is_usable(crop.image)
        assert torch.equal(crop.image, sources[crop.source][crop.top:crop.top + 64, crop.left:crop.left + 64])
    I._crop_pool.cache_clear()
    I._load_source.cache_clear()
    again = I.crop_pool("test")
    assert [(c.source, c.top, c.left) for c in again] == [(c.source, c.top, c.left) for c in heldout_pool]
    assert all(torch.equal(a.image, b.image) for a, b in zip(again, heldout_pool))


def test_every_edit_moves_its_score_the_right_way_on_every_heldout_image(heldout_pool):
    clean = torch.stack([c.image for c in heldout_pool])
    for task, spec in E.DIRECTIONS.items():
        source, target = E.edit_pair(task, clean, torch.Generator().manual_seed(0))
        assert torch.equal(source, E.put_in_state(spec.source_state, clean, torch.Generator().manual_seed(0)))
        assert torch.equal(clean, source if spec.source_state == "clean" else target)
        for stored in (False, True):  # as computed, and as the 8-bit PNGs of a dataset hold it
            s, t = (E.quantize(source), E.quantize(target)) if stored else (source, target)
            gain = E.directional_gain(task, s, t)
            assert gain.shape == (len(heldout_pool),)
            assert (gain > 0).all(), (task, stored, [heldout_pool[i].source for i in torch.nonzero(gain <= 0)])


def test_pairs_are_image_dependent_or_same_source_conflicts(heldout_pool):
    """An image-dependent pair shares its phrasings and its target (the clean crop) and differs in
    its source; a conflict shares its (clean) source and asks opposite things of it."""
    clean = torch.stack([c.image for c in heldout_pool[:8]])
    assert {t for pair in E.PAIRS.values() for t in pair.members} == set(E.DIRECTIONS)
    kinds = {pair.kind for pair in E.PAIRS.values()}
    assert kinds == {"image-dependent", "conflict"}
    for pair in E.PAIRS.values():
        a, b = (E.DIRECTIONS[t] for t in pair.members)
        assert a.pair == b.pair == pair.name
        assert (a.score, a.sign) == (b.score, -b.sign) or pair.name == "restore"  # restore: sharpness up, noise down
        (source_a, target_a), (source_b, target_b) = (E.edit_pair(t, clean, torch.Generator().manual_seed(0))
                                                      for t in pair.members)
        if pair.kind == "image-dependent":
            assert a.phrasings == b.phrasings and torch.equal(target_a, target_b)
            assert not torch.equal(source_a, source_b)
        else:
            assert not set(a.phrasings) & set(b.phrasings) and torch.equal(source_a, source_b)
            assert not torch.equal(target_a, target_b)


def test_artefact_metrics_see_grain_and_the_patch_grid(heldout_pool):
    clean = torch.stack([c.image for c in heldout_pool[:16]])
    noisy = E.put_in_state("noisy", clean, torch.Generator().manual_seed(0))
    assert (E.noise_sigma(noisy) > E.noise_sigma(clean) + 0.01).all()
    blocky = clean.reshape(16, 16, 4, 16, 4, 3).mean((2, 4), keepdim=True).expand(16, 16, 4, 16, 4, 3)
    blocky = blocky.reshape(clean.shape)
    assert (E.patch_artefact(blocky) > 1.0).all()
    assert E.patch_artefact(clean).abs().median() < 0.2
    flat = torch.full((2, 32, 32, 3), 0.5)
    assert torch.equal(E.patch_artefact(flat), torch.full((2,), -1.0))


def test_patch_lattice_sees_a_texture_inside_the_patches_that_patch_artefact_does_not(heldout_pool):
    clean = torch.stack([c.image for c in heldout_pool[:16]])
    mark = torch.zeros(4, 4, 1)
    mark[1, 2] = mark[2, 1] = 0.02       # two pixels 5 levels brighter in every patch, none on a grid line
    textured = clean * 0.9 + mark.repeat(16, 16, 1)
    assert (E.patch_artefact(textured) - E.patch_artefact(clean)).abs().max() < 0.05
    expected = 0.02 * math.sqrt(2 / 16 - (2 / 16) ** 2)      # RMS of the mark pattern, its mean removed
    assert torch.allclose(E.patch_lattice(textured, clean * 0.9), torch.full((16,), expected), atol=1e-6)
    darker = E.patch_lattice(clean * 0.9, clean)            # a smooth edit error: well under the marks
    assert (darker < expected / 4).all()
    assert (E.patch_lattice(textured, clean) > darker + expected / 2).all()
    assert E.patch_lattice(clean, clean).eq(0).all()
    with pytest.raises(E.EditSuiteError, match="smaller than one 4x4 patch"):
        E.patch_lattice(torch.zeros(1, 3, 3, 3), torch.zeros(1, 3, 3, 3))
    with pytest.raises(E.EditSuiteError, match="differ in shape"):
        E.patch_lattice(clean, clean[:, :32])


def test_scores_and_filters_have_known_values():
    from scipy.ndimage import gaussian_filter

    g = torch.Generator().manual_seed(1)
    flat = torch.full((2, 40, 40, 3), 0.5)
    gray_noise = torch.randn(2, 40, 40, 1, generator=g)
    assert torch.allclose(E.noise_sigma(flat + 0.05 * gray_noise), torch.tensor([0.05, 0.05]), rtol=0.06)
    colour_noise = torch.randn(flat.shape, generator=g)  # independent per channel: luma sees 0.668 sigma
    assert torch.allclose(E.noise_sigma(flat + 0.05 * colour_noise), torch.tensor([0.0334, 0.0334]), rtol=0.06)
    ramp = torch.linspace(0, 1, 40)[:, None, None].expand(40, 40, 3)
    assert E.noise_sigma(ramp) < 1e-6 and E.sharpness(ramp) < 1e-10 and E.sharpness(flat).abs().max() == 0
    red = torch.zeros(8, 8, 3)
    red[..., 0] = 0.8
    assert E.saturation(red) == 1 and E.saturation(E.to_grayscale(red)) == 0
    assert torch.equal(E.scale_chroma(red, 0.0), E.to_grayscale(red)) and torch.equal(E.scale_chroma(red, 1.0), red)
    assert torch.allclose(E.sharpen(flat), flat, atol=1e-6)
    assert torch.allclose(E.brightness(red), torch.tensor(0.299 * 0.8))
    assert E.brightness(torch.ones(8, 8, 3)) == pytest.approx(1.0)
    assert torch.allclose(E.brighten(flat), torch.full_like(flat, 0.7)) and torch.allclose(E.darken(flat), 0.6 * flat)
    image = torch.rand(30, 34, 3, generator=g)
    reference = gaussian_filter(image.numpy(), sigma=(E.BLUR_SIGMA, E.BLUR_SIGMA, 0), mode="mirror", truncate=3.0)
    assert np.abs(E.gaussian_blur(image).numpy() - reference).max() < 1e-6
    assert torch.allclose(E.gaussian_blur(flat), flat)


def test_psnr_and_ssim_known_values_and_skimage_agreement():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(2)
    a = torch.rand(3, 40, 48, 3, generator=g)
    assert torch.isinf(E.psnr(a, a)).all() and torch.equal(E.ssim(a, a), torch.ones(3))
    zeros, tenth = torch.zeros(16, 16, 3), torch.full((16, 16, 3), 0.1)
    assert E.psnr(zeros, tenth) == pytest.approx(20.0, abs=1e-4)
    assert E.psnr(zeros, tenth, data_range=255.0) == pytest.approx(20.0 + 20 * np.log10(255), abs=1e-3)
    c1 = 0.01 ** 2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5 ** 2 + 0.25 ** 2 + c1)  # constant images: luminance term only
    assert E.ssim(torch.full((16, 16, 3), 0.5), torch.full((16, 16, 3), 0.25)) == pytest.approx(expected, rel=1e-6)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    c = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    for i in range(3):
        x, y = a[i].numpy(), b[i].numpy()
        assert E.psnr(a[i], b[i]) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-4)
        assert E.ssim(a[i], b[i]) == pytest.approx(structural_similarity(
            x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1),
            abs=1e-5)
    assert torch.equal(E.ssim(a, b), E.ssim(b, a)) and (E.ssim(a, c) < E.ssim(a, b)).all()
    assert (E.psnr(a, c) < E.psnr(a, b)).all()


def test_phrasings_vary_within_the_tiny_tokenizer_vocabulary(heldout_pool):
    seen = {}
    for task, spec in E.DIRECTIONS.items():
        assert len(set(spec.phrasings)) == len(spec.phrasings) >= 4
        for phrasing in spec.phrasings:
            assert set(phrasing.split()) <= set(EDIT_WORDS), (task, phrasing)
            assert len(phrasing.encode()) <= 64 and len(phrasing.split()) <= 15
            owner = seen.setdefault(phrasing, spec.pair if E.PAIRS[spec.pair].kind == "image-dependent" else task)
            assert owner in (task, spec.pair), f"{phrasing!r} labels two directions"
    edits = E.make_edits("test", 16, seed=0)
    for task in E.DIRECTIONS:
        assert len(set(edits.by_task(task).instructions)) >= 3, task


WRITE = ("import sys; from hywu_core.demo.edits import write_edit_dataset; "
         "write_edit_dataset(sys.argv[1], 'test', 2, seed=3)")


def test_written_dataset_is_bitwise_reproducible_and_the_trainer_reads_it(tmp_path, heldout_pool):
    from PIL import Image

    manifest = E.write_edit_dataset(tmp_path / "a", "test", 2, seed=3)
    env = dict(os.environ, PYTHONHASHSEED="12345", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", WRITE, str(tmp_path / "b")], cwd=REPO, env=env, check=True, timeout=120)
    E.write_edit_dataset(tmp_path / "c", "test", 2, seed=4)
    first = folder_bytes(tmp_path / "a")
    assert first == folder_bytes(tmp_path / "b")  # another process and hash salt: same bytes
    n = 2 * len(E.DIRECTIONS)
    assert len(first) == 2 * n + 2 and first != folder_bytes(tmp_path / "c")

    lines = manifest.read_text().splitlines()
    labels = [json.loads(line) for line in (tmp_path / "a" / E.LABELS).read_text().splitlines()]
    assert len(lines) == len(labels) == n
    for line, label in zip(lines, labels):
        record = json.loads(line)
        assert set(record) == {"source", "target", "instruction"}
        assert {k: label[k] for k in record} == record
        spec = E.DIRECTIONS[label["task"]]
        assert record["instruction"] in spec.phrasings and label["pair"] == spec.pair
        assert label["image"] in I.TEST_SOURCES and label["split"] == "test" and label["seed"] == 3
        for key in ("source", "target"):
            with Image.open(tmp_path / "a" / record[key]) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
    assert sorted(label["task"] for label in labels) == sorted(list(E.DIRECTIONS) * 2)
    for pair in E.PAIRS.values():  # both directions of a pair at one index share the crop
        for index in range(2):
            a, b = (next(lab for lab in labels[n // 2 * index:n // 2 * (index + 1)] if lab["task"] == t)
                    for t in pair.members)
            assert (a["image"], a["top"], a["left"]) == (b["image"], b["top"], b["left"])
    records = read_manifest(tmp_path / "a")
    assert [(r.source.name, r.target.name, r.instruction) for r in records] == \
        [(Path(x["source"]).name, Path(x["target"]).name, x["instruction"]) for x in labels]

    loaded = E.load_edit_dataset(tmp_path / "a")
    made = E.make_edits("test", 2, seed=3)
    assert loaded.source.dtype == torch.float32 and loaded.source.shape == (n, 64, 64, 3)
    assert torch.equal(loaded.source, made.source) and torch.equal(loaded.target, made.target)
    assert (loaded.instructions, loaded.tasks, loaded.pairs, loaded.images, loaded.boxes) == \
        (made.instructions, made.tasks, made.pairs, made.images, made.boxes)
    blur = loaded.by_task("blur")
    assert blur.tasks == ["blur", "blur"] and (E.directional_gain("blur", blur.source, blur.target) > 0).all()


def test_bad_input_names_the_problem(tmp_path):
    for call, words in [(lambda: E.make_edits("heldout", 1), "use one of train, val, test"),
                        (lambda: E.make_edits("train", 0), "positive integer"),
                        (lambda: E.make_edits("train", 1, tasks=("deblur",)), "unknown edit direction 'deblur'"),
                        (lambda: E.edit_pair("restore_noisy", torch.rand(8, 8, 3)), "torch.Generator"),
                        (lambda: E.put_in_state("foggy", torch.rand(8, 8, 3)), "unknown image state 'foggy'"),
                        (lambda: E.psnr(torch.rand(8, 8, 3), torch.rand(8, 9, 3)), "one shape"),
                        (lambda: E.ssim(torch.rand(8, 8, 3), torch.rand(8, 8, 3)), "at least 11x11"),
                        (lambda: E.gaussian_blur(torch.rand(3, 8, 8)), "(..., H, W, 3)"),
                        (lambda: I.load_source("skimage:eagle"), "unknown source image"),
                        (lambda: I.source_crops("skimage:page", size=200), "does not fit"),
                        (lambda: E.load_edit_dataset(tmp_path), "no edits.jsonl")]:
        with pytest.raises(ValueError) as error:
            call()
        assert words in str(error.value), (words, str(error.value))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(E.EditSuiteError, match="not an empty folder"):
        E.write_edit_dataset(tmp_path, "train", 1)
    folder = tmp_path / "set"
    E.write_edit_dataset(folder, "test", 1, tasks=("blur", "sharpen"))
    (folder / "tgt" / "00002.png").unlink()
    with pytest.raises(E.EditSuiteError, match="line 2: image .*00002.png does not exist"):
        E.load_edit_dataset(folder)
