"""`./hywu demo-family`: the one command that retrains the demo family (here on its --quick budget)."""
import json

from hywu_core.demo.run import FAMILY_FILES
from hywu_core.encoders import load_condition_encoder
from hywu_core.generator_files import load_generator
from hywu_core.tiny_editor.backbone import load_demo_checkpoint, read_demo_checkpoint


def test_demo_family_retrains_every_member_into_comfyui_model_folders(hywu, comfy_lib, tmp_path):
    out = tmp_path / "models"
    result = hywu("demo-family", "--quick", "--out", out, "--work", tmp_path / "work", "--set", "source_pixelate=0.25",
                  "--set", "pretrain_steps=4", "--set", "prediction=x0",
                  "--set", "high_frequency=2", "--set", "patch_lattice=30", "--set", "pretrain_patch_lattice=20")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in FAMILY_FILES:
        assert (out / name).is_file(), name
    family = json.loads((out / "family.json").read_text())
    assert family["recipe"]["generator_steps"] == 3 and family["generator_loss"]["steps"] == 3
    assert family["backbone_pretrain_loss"]["steps"] == 4 and family["encoder_loss"]["steps"] == 3
    assert family["recipe"]["source_pixelate"] == 0.25 and family["recipe"]["pretrain_steps"] == 4
    assert family["encoder_recipe"]["steps"] == 3 and len(family["generator_loss"]["curve"]) == 3
    assert family["recipe"]["prediction"] == "x0" and family["recipe"]["high_frequency"] == 2
    assert family["recipe"]["patch_lattice"] == 30 and family["recipe"]["pretrain_patch_lattice"] == 20
    train = json.loads((tmp_path / "work" / "generator_run" / "config.json").read_text())["train"]
    assert train["high_frequency"] == 2 and train["patch_lattice"] == 30
    from hywu_core.experiments.context import QUICK, ExperimentContext

    experiments = ExperimentContext(out, tmp_path / "experiments", QUICK, "val")    # its baselines: the same loss
    assert experiments.recipe.high_frequency == 2 and experiments._schedule(4, 1e-3).high_frequency == 2
    assert experiments.recipe.patch_lattice == 30 and experiments._schedule(4, 1e-3).patch_lattice == 30
    assert read_demo_checkpoint(out / "checkpoints" / "hywu_demo.safetensors")[1].prediction == "x0"
    model, _, _ = load_demo_checkpoint(out / "checkpoints" / "hywu_demo.safetensors")
    generator = load_generator(out / "hywu" / "hywu_demo.safetensors")
    generator.spec.verify(model.model.diffusion_model)
    assert generator.config.cond_dim == load_condition_encoder(out / "hywu_encoders" / "hywu_demo").width


def test_the_pretraining_loss_takes_the_recipes_pretraining_weights():
    from hywu_core.demo.retrain import FamilyRecipe, pretrain_schedule, recipe_with

    shipped = pretrain_schedule(FamilyRecipe())      # the shipped backbone: both terms in its pretraining loss
    assert (shipped.high_frequency, shipped.patch_lattice, shipped.steps, shipped.lr) == (4.0, 400.0, 4000, 1e-3)
    plain = pretrain_schedule(recipe_with(FamilyRecipe(), ["pretrain_high_frequency=0", "pretrain_patch_lattice=0"]))
    assert (plain.high_frequency, plain.patch_lattice) == (0.0, 0.0)


def test_the_shipped_family_was_made_by_the_default_recipe():
    """`./hywu demo-family` with no --set is the command that made demo_models/: its family.json
    records the recipe, and it must be FamilyRecipe's defaults (and the encoder's)."""
    from dataclasses import asdict

    from hywu_core.demo.retrain import FamilyRecipe
    from hywu_core.demo.run import DEMO_MODELS

    family = json.loads((DEMO_MODELS / "family.json").read_text())
    assert family["recipe"] == asdict(FamilyRecipe())
    assert family["encoder_recipe"] == asdict(FamilyRecipe().encoder())


def test_demo_family_set_names_the_bad_field_or_value_and_stops_before_training(hywu, tmp_path):
    for setting, named in (("pretrain_step=10", "FIELD=VALUE with FIELD one of seed"),
                           ("pretrain_steps=1e4", "pretrain_steps takes an integer"),
                           ("source_pixelate=nan", "finite number >= 0"), ("pretrain_lr=-1", "finite number >= 0"),
                           ("source_pixelate=0.8", "source_pixelate is 1.05 (a share of the clean crops)"),
                           ("free_text=2", "free_text 2"), ("high_frequency=inf", "finite number >= 0"),
                           ("prediction=eps", "prediction 'eps' is not one of velocity, x0, source_residual")):
        result = hywu("demo-family", "--quick", "--out", tmp_path / "models", "--work", tmp_path / "work",
                      "--set", setting)
        assert result.returncode == 2 and named in result.stderr, (setting, result.stderr[-1500:])
    assert not (tmp_path / "work").exists() and not (tmp_path / "models").exists()


def test_the_backbone_pretrains_on_copies_and_on_dropped_shifted_or_pixelated_sources_of_clean_crops(tmp_path):
    """Every suite image is reproduced from itself; a share of the clean crops is also asked for from
    a mid-grey (dropped) source, from the crop shifted by a few pixels or from the crop pixelated in
    PIXELATE x PIXELATE blocks (a denoiser, not a copier)."""
    import torch

    from hywu_core.demo.edits import DIRECTIONS, LABELS, load_png, write_edit_dataset
    from hywu_core.demo.retrain import PIXELATE, SHIFT_PIXELS, FamilyRecipe, write_pretraining_manifest

    folder = tmp_path / "train"
    write_edit_dataset(folder, "train", 8, seed=0)
    recipe = FamilyRecipe(per_direction=8, source_dropout=0.25, source_shift=0.25, source_pixelate=0.25)
    records = [json.loads(line) for line in write_pretraining_manifest(folder, recipe).read_text().splitlines()]
    labels = [json.loads(line) for line in (folder / LABELS).read_text().splitlines()]
    copies = [r for r in records if r["source"] == r["target"]]
    assert len(copies) == 2 * len(labels)
    clean = {lab[key] for lab in labels for key, state in (("source", DIRECTIONS[lab["task"]].source_state),
                                                           ("target", DIRECTIONS[lab["task"]].target_state))
             if state == "clean"}
    others = [r for r in records if r["source"] != r["target"]]
    assert {r["target"] for r in others} <= clean
    dropped = [r for r in others if r["source"] == "pre/blank.png"]
    shifted = [r for r in others if r["source"].startswith("pre/shift_")]
    pixelated = [r for r in others if r["source"].startswith("pre/pixelated_")]
    assert len(dropped) + len(shifted) + len(pixelated) == len(others)
    assert all(0.12 * len(clean) < len(share) < 0.38 * len(clean) for share in (dropped, shifted, pixelated))
    assert torch.equal(load_png(folder / "pre/blank.png"), torch.full((64, 64, 3), 128 / 255))
    for record in shifted[:5]:
        moved, target = load_png(folder / record["source"]), load_png(folder / record["target"])
        assert any(torch.equal(moved, torch.roll(target, (dy, dx), (0, 1)))
                   for dy in range(-SHIFT_PIXELS, SHIFT_PIXELS + 1) for dx in range(-SHIFT_PIXELS, SHIFT_PIXELS + 1)
                   if (dy, dx) != (0, 0))
    for record in pixelated[:5]:
        blocky, target = load_png(folder / record["source"]), load_png(folder / record["target"])
        assert not torch.equal(blocky, target)
        corners = blocky[::PIXELATE, ::PIXELATE]
        assert torch.equal(blocky, corners.repeat_interleave(PIXELATE, 0).repeat_interleave(PIXELATE, 1))
        blocks = 64 // PIXELATE
        means = target.reshape(blocks, PIXELATE, blocks, PIXELATE, 3).mean((1, 3))
        assert (corners - means).abs().max() <= 0.5 / 255 + 1e-6


def test_a_share_of_the_pretraining_records_reads_free_text_no_edit_uses(tmp_path):
    """The free_text share of records (any of them: copies, dropped and shifted sources) carries an
    instruction that is none of the suite's phrasings; the rest keep their own; records keep their
    images either way, and the draw is the seed's (the same manifest twice)."""
    from hywu_core.demo.edits import DIRECTIONS, write_edit_dataset
    from hywu_core.demo.retrain import FamilyRecipe, write_pretraining_manifest

    folder = tmp_path / "train"
    write_edit_dataset(folder, "train", 8, seed=0)
    phrasings = {p for spec in DIRECTIONS.values() for p in spec.phrasings}
    plain = [json.loads(line) for line in
             write_pretraining_manifest(folder, FamilyRecipe(free_text=0.0)).read_text().splitlines()]
    assert all(r["instruction"] in phrasings for r in plain)
    text = write_pretraining_manifest(folder, FamilyRecipe(free_text=0.4)).read_text()
    assert write_pretraining_manifest(folder, FamilyRecipe(free_text=0.4)).read_text() == text
    records = [json.loads(line) for line in text.splitlines()]
    assert [(r["source"], r["target"]) for r in records] == [(r["source"], r["target"]) for r in plain]
    free = [r["instruction"] for r in records if r["instruction"] not in phrasings]
    assert 0.3 * len(records) < len(free) < 0.5 * len(records)
    assert all(isinstance(s, str) and 0 < len(s) <= 200 and s == s.strip() for s in free)
    assert len(set(free)) > 0.9 * len(free)
