"""The experiments' statistics on inputs whose answers are known (no models, no ComfyUI)."""
import pytest
import torch

from hywu_core.demo.edits import make_edits
from hywu_core.demo.run import FAMILY_WORKFLOWS
from hywu_core.experiments import stats
from hywu_core.experiments.context import edit_metrics
from hywu_core.experiments.geometry import neighbour_rates, update_cosines
from hywu_core.experiments.gradients import CONFLICTING, INTRA, OTHER, group_masks, task_statistics
from hywu_core.experiments.verdicts import VERDICTS, claim, line, verdict
from hywu_core.lora import LoRABundle
from hywu_core.lora_tools import average
from hywu_core.targets import TargetBlock, TargetModule, TargetSpec

SPEC = TargetSpec(blocks=(TargetBlock(prefix="b0", modules=(TargetModule("q", 6, 5), TargetModule("o", 5, 7))),
                          TargetBlock(prefix="b1", modules=(TargetModule("q", 6, 5),
                                                            TargetModule("experts", 4, 3, experts=2)))))


def random_bundle(n: int, r: int = 3, seed: int = 0, dtype=torch.float32) -> LoRABundle:
    generator = torch.Generator().manual_seed(seed)
    lead = {p: (m.experts,) if m.grouped else () for p, m in SPEC.items()}
    A = {p: torch.randn(n, *lead[p], r, m.d_in, generator=generator, dtype=dtype) for p, m in SPEC.items()}
    B = {p: torch.randn(n, *lead[p], m.d_out, r, generator=generator, dtype=dtype) for p, m in SPEC.items()}
    return LoRABundle(SPEC, r, 2.0, A, B)


def dense(bundle: LoRABundle, i: int) -> torch.Tensor:
    """Row i's whole update, every module (each expert separately) flattened: scale * B A."""
    return torch.cat([(bundle.scale * bundle.B[p][i].double() @ bundle.A[p][i].double()).flatten()
                      for p in SPEC.module_paths()])


# ---- bootstrap intervals (stats) ----------------------------------------------------------------


def test_a_constant_sample_has_a_zero_width_interval():
    interval = stats.mean_interval(torch.full((17,), 3.25))
    assert interval.estimate == interval.low == interval.high == 3.25 and interval.n == 17


def test_identical_methods_differ_by_exactly_zero():
    values = torch.randn(40, generator=torch.Generator().manual_seed(1))
    groups = ["a"] * 15 + ["b"] * 25
    interval = stats.paired_difference(values, values.clone(), groups)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_the_interval_holds_the_sample_mean_and_is_seeded():
    values = torch.randn(50, generator=torch.Generator().manual_seed(2)).exp()
    interval = stats.mean_interval(values)
    assert interval.low < float(values.double().mean()) < interval.high
    assert interval.estimate == pytest.approx(float(values.double().mean()))
    assert stats.mean_interval(values) == interval
    assert stats.mean_interval(values, seed=5) != interval


def test_a_two_point_sample_gives_the_binomial_interval():
    # resampled means of 100 fair coin flips are Binomial(100, 1/2) / 100: 95% of them in about [0.40, 0.60]
    interval = stats.mean_interval(torch.tensor([0.0, 1.0] * 50))
    assert interval.estimate == 0.5
    assert 0.39 <= interval.low <= 0.41 and 0.59 <= interval.high <= 0.61


def test_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    generator = torch.Generator().manual_seed(3)
    covered = 0
    for trial in range(200):
        interval = stats.mean_interval(torch.randn(40, generator=generator), resamples=400, seed=trial)
        covered += interval.low <= 0.0 <= interval.high
    assert 0.88 <= covered / 200 <= 0.99


def test_stratified_resampling_keeps_every_groups_count_and_members():
    groups = ["x"] * 3 + ["y"] * 7 + ["z"] * 2
    draws = stats.stratified_indices(groups, resamples=50, seed=0)
    assert [d.shape for d in draws] == [(50, 3), (50, 7), (50, 2)]
    assert set(draws[0].flatten().tolist()) <= {0, 1, 2}
    assert set(draws[1].flatten().tolist()) <= set(range(3, 10))
    assert set(draws[2].flatten().tolist()) <= {10, 11}


def test_the_macro_average_weighs_directions_equally_whatever_their_size_or_scale():
    # direction a: 2 edits on a scale of 1000, direction b: 8 edits on a scale of 1
    values = torch.tensor([1000.0, 1000.0] + [1.0] * 8)
    groups = ["a"] * 2 + ["b"] * 8
    assert stats.macro_interval(values, groups).estimate == pytest.approx(500.5)
    assert stats.mean_interval(values).estimate == pytest.approx(200.8)   # the pooled mean: not what we report
    interval = stats.macro_interval(values, groups)
    assert interval.low == interval.high == 500.5   # every resample keeps both groups


def test_bootstrap_applies_any_statistic_of_per_group_means_to_the_same_resamples():
    a = torch.tensor([1.0, 1.0, 5.0, 5.0])
    b = torch.tensor([0.0, 0.0, 5.0, 5.0])
    groups = ["p", "p", "q", "q"]
    gap = stats.bootstrap({"a": a, "b": b}, groups, lambda m: (m["a"] - m["b"]).max(1).values)
    assert gap.estimate == gap.low == gap.high == 1.0


def test_pair_means_resample_units_and_never_pair_a_unit_with_itself():
    labels = ["a"] * 4 + ["b"] * 4
    values = torch.randn(8, 8, generator=torch.Generator().manual_seed(4))
    values = values + values.T
    same = torch.tensor([[x == y for y in labels] for x in labels])
    result = stats.pair_mean_interval(values, {"same": same, "other": ~same}, labels, [("same", "other")])
    off = ~torch.eye(8, dtype=torch.bool)
    assert result["same"].estimate == pytest.approx(float(values[same & off].double().mean()))
    assert result["other"].estimate == pytest.approx(float(values[~same].double().mean()))
    assert result["same - other"].estimate == pytest.approx(result["same"].estimate - result["other"].estimate)
    assert result["same"].n == 24 and result["other"].n == 32
    assert result["same"].low <= result["same"].estimate <= result["same"].high
    # the diagonal never counts: a matrix that is 1 off the diagonal has a zero-width interval at 1
    ones = stats.pair_mean_interval(torch.eye(8) * 100 + 1, {"same": same}, labels)
    assert ones["same"].estimate == ones["same"].low == ones["same"].high == 1.0


def test_a_direction_of_one_edit_has_no_interval_and_no_verdict():
    interval = stats.macro_interval(torch.tensor([1.0, 2.0, 3.0]), ["a", "a", "b"])
    assert interval.estimate == pytest.approx(2.25) and interval.low != interval.low and interval.high != interval.high
    assert verdict(interval) == "inconclusive"
    pairs = stats.pair_mean_interval(torch.ones(3, 3), {"all": torch.ones(3, 3, dtype=torch.bool)}, ["a", "a", "b"])
    assert pairs["all"].estimate == 1.0 and pairs["all"].low != pairs["all"].low


# ---- verdicts -----------------------------------------------------------------------------------


def test_verdicts_follow_the_interval_and_the_papers_side():
    above, below, across = (stats.Interval(0.5, 0.1, 0.9, 10), stats.Interval(-0.5, -0.9, -0.1, 10),
                            stats.Interval(0.1, -0.2, 0.4, 10))
    assert [verdict(i) for i in (above, below, across)] == ["reproduced", "not reproduced", "inconclusive"]
    assert [verdict(i, -1) for i in (above, below, across)] == ["not reproduced", "reproduced", "inconclusive"]
    assert verdict(stats.Interval(0.0, float("nan"), float("nan"), 0)) == "inconclusive"
    record = claim("§5.3", "PG wins", "PG - base", above)
    assert record["verdict"] in VERDICTS and line(record).startswith("- **reproduced** · §5.3: PG wins")


# ---- per-edit metrics ---------------------------------------------------------------------------


def test_edit_metrics_of_the_target_and_of_the_source():
    edits = make_edits("val", 1, seed=1)
    at_target = edit_metrics(edits, edits.target)
    assert torch.allclose(at_target["progress"], torch.ones(len(edits), dtype=torch.float64))
    overshoot = edit_metrics(edits, edits.source + 3 * (edits.target - edits.source))
    assert overshoot["progress"].le(1).all() and overshoot["progress"].ge(-1).all()   # clipped to [-1, 1]
    assert at_target["right_way"].eq(1).all() and at_target["grain"].eq(0).all()
    assert at_target["patch_artefact"].eq(0).all() and at_target["ssim"].sub(1).abs().max() < 1e-6
    assert at_target["patch_lattice"].eq(0).all()
    base_psnr = edit_metrics(edits, edits.source)["psnr"]
    unchanged = edit_metrics(edits, edits.source, base_psnr=base_psnr)
    assert unchanged["progress"].eq(0).all() and unchanged["right_way"].eq(0).all()
    assert unchanged["win_vs_base"].eq(0.5).all()   # a tie with the base on every edit counts half


# ---- LoRA geometry, Average PG in update space --------------------------------------------------


def test_update_cosines_equal_the_cosines_of_the_dense_updates_also_per_expert():
    bundle = random_bundle(4)
    flat = torch.nn.functional.normalize(torch.stack([dense(bundle, i) for i in range(4)]), dim=1)
    assert torch.allclose(update_cosines(bundle).double(), flat @ flat.T, atol=1e-6)


def test_average_pg_in_update_space_applies_the_mean_of_the_updates():
    bundle = random_bundle(5, seed=1)
    mean = average(bundle, "update")   # what routing gives every edit as "(d) Average PG (update)"
    assert mean.batch_size == 1 and mean.rank == 5 * bundle.rank
    expected = torch.stack([dense(bundle, i) for i in range(5)]).mean(0)
    assert (dense(mean, 0) - expected).abs().max() < 1e-5
    in_parameters = average(bundle, "parameters")   # the mean of A and of B: a different update
    assert (dense(in_parameters, 0) - expected).abs().max() > 1e-2


def test_group_masks_and_task_statistics_separate_agreeing_and_opposing_tasks():
    # "up" and "down" are one pair whose gradients point opposite ways; "side" is orthogonal to both
    base = {"up": torch.tensor([1.0, 0.0]), "down": torch.tensor([-1.0, 0.0]), "side": torch.tensor([0.0, 1.0])}
    labels = ["up", "up", "down", "down", "side", "side"]
    grads = torch.stack([base[t] + 0.01 * k for k, t in enumerate(labels)])
    unit = torch.nn.functional.normalize(grads, dim=1)
    cosines = unit @ unit.T
    masks = group_masks(labels, {"vertical": ("up", "down"), "lateral": ("side", "other")},
                        {"vertical": "conflict", "lateral": "image-dependent"})
    assert int(masks[INTRA].sum()) == 12 and int(masks[CONFLICTING].sum()) == 8 and int(masks[OTHER].sum()) == 16
    assert torch.equal(masks[f"{CONFLICTING} (conflict)"], masks[CONFLICTING])
    assert not masks[f"{CONFLICTING} (image-dependent)"].any()
    off = ~torch.eye(6, dtype=torch.bool)
    assert cosines[masks[INTRA] & off].min() > 0.99 and cosines[masks[CONFLICTING]].max() < -0.99
    result = stats.pair_mean_interval(cosines, masks, labels, [(INTRA, CONFLICTING)])
    assert result[f"{INTRA} - {CONFLICTING}"].low > 1.9
    matrices = task_statistics(cosines, labels, ["up", "down", "side"])
    assert float(matrices["conflict"][0, 1]) == 1.0 and float(matrices["conflict"][0, 0]) == 0.0
    assert abs(float(matrices["mean"][0, 2])) < 0.05


def test_neighbour_rates_per_query_against_all_other_items():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    similarity = (labels[:, None] == labels[None, :]).float() + 0.01 * torch.arange(6.0)
    same = labels[:, None] == labels[None, :]
    rates, knn = neighbour_rates(similarity, {"same": same}, k=2)
    assert rates["same"]["knn"].eq(1).all()
    assert torch.allclose(rates["same"]["random"], torch.full((6,), 0.4, dtype=torch.float64))  # 2 of 5 others
    assert not (knn == torch.arange(6)[:, None]).any()   # an item is never its own neighbour
    interval = stats.paired_difference(rates["same"]["knn"], rates["same"]["random"], labels.tolist())
    assert interval.estimate == pytest.approx(0.6) and verdict(interval) == "reproduced"


def test_a_direction_is_showable_when_right_every_time_far_enough_and_free_of_grain_and_patch_marks():
    """The demo's edits are chosen on val by family.showable: right way on every edit, progress at least
    SHOWABLE_PROGRESS, the grain HY-WU adds to the source net of what the base backbone adds on the
    same edits under SHOWABLE_GRAIN, its patch artefact at most SHOWABLE_PATCH beyond the base's and its
    patch lattice under SHOWABLE_LATTICE."""
    from hywu_core.experiments.family import (
        BASE,
        HYWU,
        SHOWABLE_GRAIN,
        SHOWABLE_LATTICE,
        SHOWABLE_PATCH,
        SHOWABLE_PROGRESS,
        showable,
    )

    tasks = ["brighten"] * 2 + ["darken"] * 2 + ["blur"] * 2 + ["sharpen"] * 2
    right_way = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1], dtype=torch.float64)

    def table(metric: str, values: dict) -> dict:
        return {"per_direction": {t: {metric: {"estimate": v}} for t, v in values.items()}}

    against_source = {
        BASE: table("grain", {"brighten": 0.010, "darken": 0.001, "blur": 0.0, "sharpen": 0.0}),
        # brighten: grainy in absolute terms, but no grainier than the base on the same sources
        HYWU: table("grain", {"brighten": 0.012, "darken": 0.001 + SHOWABLE_GRAIN, "blur": 0.0, "sharpen": 0.004})}
    clean = {"progress": 0.5, "patch_artefact": 0.1, "patch_lattice": 0.001}
    summaries = {name: {"per_direction": {t: {m: {"estimate": v} for m, v in clean.items()} for t in set(tasks)}}
                 for name in (BASE, HYWU)}
    hywu = summaries[HYWU]["per_direction"]
    assert showable(tasks, right_way, against_source, summaries) == ["brighten", "sharpen"]
    hywu["brighten"]["patch_artefact"]["estimate"] = 0.1 + SHOWABLE_PATCH + 0.01      # steps on the patch grid
    assert showable(tasks, right_way, against_source, summaries) == ["sharpen"]
    hywu["brighten"]["patch_artefact"]["estimate"] = 0.1 + SHOWABLE_PATCH
    hywu["sharpen"]["patch_lattice"]["estimate"] = SHOWABLE_LATTICE                   # a texture in every patch
    assert showable(tasks, right_way, against_source, summaries) == ["brighten"]
    hywu["sharpen"]["patch_lattice"]["estimate"] = 0.001
    hywu["sharpen"]["progress"]["estimate"] = SHOWABLE_PROGRESS - 0.01                 # right, barely moves
    assert showable(tasks, right_way, against_source, summaries) == ["brighten"]


@pytest.mark.parametrize("name", FAMILY_WORKFLOWS)
def test_the_experiments_sample_as_the_demo_family_workflows_do(name):
    """The reported figures are of what users run: every KSampler of the workflows on the demo family
    uses the experiments' sampler settings (FULL: steps and cfg, euler / simple)."""
    import json

    from hywu_core.demo.run import REPO
    from hywu_core.experiments.context import FULL

    graph = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    samplers = [node["inputs"] for node in graph.values() if node["class_type"] == "KSampler"]
    assert samplers
    for inputs in samplers:
        assert (inputs["steps"], inputs["cfg"], inputs["sampler_name"], inputs["scheduler"]) == (
            FULL.sample_steps, FULL.cfg, "euler", "simple"), inputs


def test_the_baseline_cache_is_keyed_by_the_family_files_and_the_recipe_they_train_on(tmp_path):
    """Baselines train on the recipe's loss: a family whose files are the same but whose recipe weighs
    the loss differently must not reuse them."""
    from dataclasses import replace

    from hywu_core.demo.retrain import FamilyRecipe
    from hywu_core.experiments.context import family_fingerprint

    files = [tmp_path / "backbone.safetensors", tmp_path / "generator.safetensors"]
    files[0].write_bytes(b"backbone")
    files[1].write_bytes(b"generator")
    recipe = FamilyRecipe()
    key = family_fingerprint(files, recipe)
    assert family_fingerprint(files, FamilyRecipe()) == key
    assert family_fingerprint(files, replace(recipe, patch_lattice=recipe.patch_lattice + 1)) != key
    assert family_fingerprint(files, replace(recipe, high_frequency=recipe.high_frequency + 1)) != key
    files[1].write_bytes(b"another generator")
    assert family_fingerprint(files, recipe) != key
