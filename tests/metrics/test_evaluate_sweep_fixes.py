"""Fixes from a sweep of `sl.evaluate`, `EvalReport` and `saliencelab evaluate`: the reference maps
are scored on the class the maps explain (not the predicted one), to_json writes whole with one
sentence, --masks is ignored when no metric reads masks, mask suffixes match in any case (two
masks for one image are refused), and a NaN mean prints as "n/a" everywhere.

The bundled shapes CNN on four 64x64 images of its test bed keeps each test to a second or two;
every number is checked against a direct metric call or `sl.evaluate` run on its own.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from rich.console import Console

import saliencelab as sl
from saliencelab.cli import app
from saliencelab.metrics.commands import results_table

NAMES = ["img0", "img1", "img2", "img3"]
REFS = ("random", "center_gaussian", "sobel")


@pytest.fixture(scope="module")
def model() -> sl.Model:
    return sl.load_model("shapes_cnn")


@pytest.fixture(scope="module")
def data():
    return sl.data.shapes.make(4, seed=0)


@pytest.fixture(scope="module")
def x(model, data) -> torch.Tensor:
    return model.preprocess(data)


@pytest.fixture
def bed(write_bed, data):
    """The four images as PNGs (imgs/) and their object masks, 0/255 (masks/)."""
    return write_bed(NAMES, data)


def predicted(model: sl.Model, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model.module(x).argmax(1).tolist()


def deletion_on(model, x, maps: torch.Tensor, target) -> torch.Tensor:
    """The deletion values of `maps` on class `target`, from the metric itself."""
    return sl.metrics.get("deletion")(steps=8)(maps, x=x, model=model, target=target).values


def lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


def cli_evaluate(runner, imgs: Path, out: Path, *extra: str):
    args = ["evaluate", str(imgs), "--model", "shapes_cnn", "--out", str(out), *extra]
    return runner.invoke(app, args)


# -- 1. the reference maps are scored on the class the maps explain ------------------------------


def test_references_are_scored_on_the_class_the_explanation_records(model, x):
    """Maps of class 2 (no image's predicted class): the references were scored on each image's
    predicted class, so their row compared another class's deletion with the method's."""
    assert 2 not in predicted(model, x)  # else the test could not tell the classes apart
    ex = sl.explain(model, x, methods="gradcam", target=2)
    rep = sl.evaluate(model, x, ex, metrics={"deletion": {"steps": 8}})
    refs = sl.explain(model, x, methods=list(REFS))
    for name in REFS:
        want = deletion_on(model, x, refs[name].maps, 2)
        torch.testing.assert_close(rep[name]["deletion"].values, want)
        on_predicted = deletion_on(model, x, refs[name].maps, predicted(model, x))
        assert not torch.allclose(rep[name]["deletion"].values, on_predicted)
    given = sl.evaluate(model, x, ex, metrics={"deletion": {"steps": 8}}, target=2)
    for name in ("gradcam", *REFS):
        torch.testing.assert_close(rep[name]["deletion"].values, given[name]["deletion"].values)
    assert rep.params["targets"] == {name: [2, 2, 2, 2] for name in ("gradcam", *REFS)}


def test_references_are_scored_on_the_predicted_class_when_no_map_records_one(model, x):
    """Maps given as a tensor record no class: they and the references get the predicted one."""
    maps = sl.explain(model, x, methods="gradcam")["gradcam"].maps
    rep = sl.evaluate(model, x, {"mine": maps}, metrics={"deletion": {"steps": 8}})
    refs = sl.explain(model, x, methods=list(REFS))
    want = predicted(model, x)
    assert rep.params["targets"] == {name: want for name in ("mine", *REFS)}
    for name in REFS:
        torch.testing.assert_close(
            rep[name]["deletion"].values, deletion_on(model, x, refs[name].maps, want)
        )


def test_maps_of_different_classes_score_the_references_on_the_first_ones_with_a_warning(model, x):
    """The rule for maps that explain different classes: the references are scored on the
    classes of the first map, and a warning says so (where a metric reads the class)."""
    ex = {
        "saliency": sl.explain(model, x, methods="saliency", target=1)["saliency"],
        "gradcam": sl.explain(model, x, methods="gradcam", target=2)["gradcam"],
    }
    metrics = {"deletion": {"steps": 8}}
    with pytest.warns(UserWarning, match="'saliency' and 'gradcam' explain different classes"):
        rep = sl.evaluate(model, x, ex, metrics=metrics, references="random")
    random = sl.explain(model, x, methods="random")["random"].maps
    torch.testing.assert_close(rep["random"]["deletion"].values, deletion_on(model, x, random, 1))
    torch.testing.assert_close(
        rep["gradcam"]["deletion"].values, deletion_on(model, x, ex["gradcam"].maps, 2)
    )
    assert rep.params["targets"]["random"] == [1, 1, 1, 1]
    with warnings.catch_warnings():  # the class does not matter to a map-only metric
        warnings.simplefilter("error")
        sl.evaluate(model, x, ex, metrics="sparseness", references="random")
        sl.evaluate(model, x, ex, metrics=metrics, references=False)


def test_a_target_other_than_the_maps_class_is_scored_with_a_warning(model, x):
    """target=k scores maps that explain other classes on k (as documented: it may be meant),
    and says so once; the classes they explain, or no target, say nothing."""
    explained = [0, 3, 1, 2]
    ex = sl.explain(model, x, ["gradcam", "saliency"], target=explained)
    metrics = {"deletion": {"steps": 8}}
    for target in (1, model.labels[1], [0, 3, 1, 1]):
        with pytest.warns(UserWarning, match=r"'gradcam' explain the classes \[0, 3, 1, 2\]") as w:
            rep = sl.evaluate(model, x, ex, metrics=metrics, target=target, references=False)
        assert len(w) == 1
    assert rep.params["targets"]["gradcam"] == [0, 3, 1, 1]
    with pytest.warns(UserWarning, match="scores them on class 1"):
        rep = sl.evaluate(model, x, ex, metrics=metrics, target=1, references=False)
    want = deletion_on(model, x, ex["gradcam"].maps, 1)
    torch.testing.assert_close(rep["gradcam"]["deletion"].values, want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for target in (explained, torch.tensor(explained), None):
            sl.evaluate(model, x, ex, metrics=metrics, target=target, references=False)
        sl.evaluate(model, x, ex, metrics="sparseness", target=1, references=False)


def test_the_command_scores_the_references_on_the_target_given(runner, bed, tmp_path, monkeypatch):
    """`--target 2`: metrics.json's reference values are those of sl.evaluate with target=2, and
    the target reaches sl.evaluate itself."""
    imgs, _ = bed
    seen = []
    real = sl.evaluate

    def recording(*args, **kwargs):
        seen.append(kwargs.get("target"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sl, "evaluate", recording)
    out = tmp_path / "out"
    args = ["-m", "gradcam", "--metrics", "deletion", "--steps", "8", "--target", "2"]
    result = cli_evaluate(runner, imgs, out, *args)
    assert result.exit_code == 0, result.output
    assert seen == [2]
    data = json.loads((out / "metrics.json").read_text())
    assert [e["class"] for e in data["params"]["explained"]] == [2, 2, 2, 2]
    model = sl.load_model("shapes_cnn")
    x = model.preprocess([sl.load_image(imgs / f"{n}.png") for n in NAMES])
    refs = sl.explain(model, x, methods=list(REFS))
    for name in REFS:
        got = torch.tensor(data["results"][name]["deletion"]["values"], dtype=torch.double)
        want = deletion_on(model, x, refs[name].maps, 2).double()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# -- 2. to_json writes whole, or says in one sentence why it cannot -------------------------------


def test_to_json_is_written_whole_and_a_bad_path_is_one_sentence(model, x, tmp_path):
    ex = sl.explain(model, x, methods="saliency")
    rep = sl.evaluate(model, x, ex, metrics="sparseness", references=False)
    folder = tmp_path / "dir.json"
    folder.mkdir()
    (tmp_path / "afile").write_text("")
    for bad in (folder, tmp_path / "afile" / "m.json"):  # as to_csv: one sentence, no file
        with pytest.raises(sl.SaliencelabError, match="the metrics") as raised:
            rep.to_json(bad)
        said = str(raised.value)  # the path, or the file in the way of its folder
        assert "\n" not in said and (str(bad) in said or f"{tmp_path / 'afile'}' is a file" in said)
        with pytest.raises(sl.SaliencelabError, match="the metrics table"):
            rep.to_csv(bad)
    assert list(folder.iterdir()) == []
    path = tmp_path / "new" / "m.json"
    path.parent.mkdir()
    path.write_text("an older, longer file " * 1000)
    assert rep.to_json(path) == path
    assert json.loads(path.read_text())["results"]["saliency"]["sparseness"]["values"] == [
        pytest.approx(v) for v in rep["saliency"]["sparseness"].values.tolist()
    ]
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]  # no temporary left


# -- 3. --masks with no metric that reads masks ---------------------------------------------------


def test_masks_no_metric_reads_are_ignored_with_a_note(runner, bed, tmp_path, model):
    """A mask for one image of four and --metrics sparseness: every image is scored (three were
    dropped as 'no mask'), as sl.evaluate scores them without masks."""
    imgs, masks = bed
    for name in NAMES[1:]:
        (masks / f"{name}.png").unlink()
    out = tmp_path / "out"
    result = cli_evaluate(
        runner, imgs, out, "-m", "saliency", "--metrics", "sparseness", "--masks", str(masks)
    )
    assert result.exit_code == 0, result.output
    assert not lines(result.stderr, "error:")
    notes = lines(result.stderr, "note:")
    assert len(notes) == 1 and "--masks is ignored" in notes[0] and "sparseness" in notes[0]
    data = json.loads((out / "metrics.json").read_text())
    assert data["images"] == [str(imgs / f"{n}.png") for n in NAMES]
    x = model.preprocess([sl.load_image(imgs / f"{n}.png") for n in NAMES])
    want = sl.evaluate(model, x, sl.explain(model, x, methods="saliency"), metrics="sparseness")
    got = data["results"]["saliency"]["sparseness"]["values"]
    assert got == pytest.approx(want["saliency"]["sparseness"].values.tolist(), rel=1e-5)


# -- 4. mask file names ---------------------------------------------------------------------------


def test_mask_suffixes_match_in_any_case(runner, bed, tmp_path, model):
    imgs, masks = bed
    for name, suffix in zip(NAMES, (".TIF", ".Png", ".BMP", ".png"), strict=True):
        with Image.open(masks / f"{name}.png") as m:
            m.load()
        (masks / f"{name}.png").unlink()
        m.save(masks / f"{name}{suffix}")
    out = tmp_path / "out"
    args = ["-m", "saliency", "--metrics", "relevance_mass", "--masks", str(masks)]
    result = cli_evaluate(runner, imgs, out, "--no-references", *args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["images"] == [str(imgs / f"{n}.png") for n in NAMES]
    x = model.preprocess([sl.load_image(imgs / f"{n}.png") for n in NAMES])
    truth = sl.data.shapes.make(4, seed=0).masks > 0
    want = sl.evaluate(
        model,
        x,
        sl.explain(model, x, methods="saliency"),
        metrics="relevance_mass",
        masks=truth,
        references=False,
    )
    got = data["results"]["saliency"]["relevance_mass"]["values"]
    assert got == pytest.approx(want["saliency"]["relevance_mass"].values.tolist(), rel=1e-5)


def test_two_masks_for_one_image_and_a_missing_one_are_reported(runner, bed, tmp_path):
    imgs, masks = bed
    with Image.open(masks / "img0.png") as m:
        m.save(masks / "img0.bmp")  # two masks for img0
    (masks / "img1.png").unlink()  # none for img1
    out = tmp_path / "out"
    args = ["-m", "saliency", "--metrics", "relevance_mass", "--masks", str(masks)]
    result = cli_evaluate(runner, imgs, out, "--no-references", *args)
    assert result.exit_code == 2, result.output
    errors = lines(result.stderr, "error:")
    assert len(errors) == 2
    assert "img0.png" in errors[0] and "2 masks for img0 (img0.bmp and img0.png)" in errors[0]
    assert "no mask img1.png" in errors[1] and ".tif" in errors[1] and "any case" in errors[1]
    data = json.loads((out / "metrics.json").read_text())
    assert data["images"] == [str(imgs / f"{n}.png") for n in NAMES[2:]]


# -- 5. a NaN mean prints as n/a ------------------------------------------------------------------


def test_a_nan_mean_prints_as_n_a_as_in_the_command_table(model, x):
    ex = sl.explain(model, x, methods="saliency")
    empty = torch.zeros(4, 64, 64, dtype=torch.bool)
    with pytest.warns(sl.metrics.EmptyMaskWarning):
        rep = sl.evaluate(model, x, ex, metrics="relevance_mass", masks=empty, references=False)
    row = str(rep).splitlines()[1].split()
    assert row[:5] == ["saliency", "relevance_mass", "n/a", "n/a", "0"]
    console = Console(width=120, record=True)
    console.print(results_table(rep))
    assert "nan" not in str(rep) and "nan" not in console.export_text()
    from saliencelab.metrics.evaluate import format_value  # the one formatter of both

    assert format_value(float("nan")) == "n/a" and format_value(0.123456) == "0.1235"


# -- explanations recomputed with the tensor options they were made with --------------------------


def _linear():
    torch.manual_seed(11)
    return torch.nn.Sequential(torch.nn.Linear(6, 2)).eval(), torch.randn(3, 6)


@pytest.mark.parametrize(
    "method, options",
    [
        ("kernelshap", {"feature_mask": torch.tensor([0, 0, 0, 1, 1, 1])}),  # shared groups
        ("integrated_gradients", {"baselines": torch.full((6,), 2.0)}),  # one for all
        ("integrated_gradients", {"baselines": torch.arange(18.0).view(3, 6)}),  # per sample
        ("feature_ablation", {"feature_mask": torch.tensor([[0, 0, 1, 1, 2, 2]] * 3)}),
    ],
)
def test_robustness_recomputes_maps_with_their_tensor_options(method, options):
    """Tensor options were left out of Attribution.params, so the maps were recomputed with the
    defaults (no groups, a zero baseline): max-sensitivity of a linear model under noise of
    radius 1e-6 was 0.7-1.0 instead of ~0. Per-sample tensors need the batch's rows in order:
    the noisy copies are explained one draw at a time."""
    net, x = _linear()
    ex = sl.explain(net, x, methods={method: options}, target=1)
    assert set(ex[method].tensor_params) == set(options)
    rep = sl.evaluate(net, x, ex, metrics={"max_sensitivity": {"radius": 1e-6}}, target=1)
    values = rep[method]["max_sensitivity"].values
    assert values.abs().max() < 1e-4 * ex[method].maps.abs().max()


def test_noisy_rows_explained_per_draw_are_put_back_in_sample_order():
    """Per-sample baselines: each noisy row is explained with its own sample's baseline (a
    linear model's IG is (x + δ − b_i)·W[c] exactly), rows back in sample-major order."""
    from saliencelab.metrics.base import EvalBatch, Explainer
    from saliencelab.metrics.robustness._noisy import explain_noisy

    net, x = _linear()
    base = torch.arange(18.0).view(3, 6)
    explainer = Explainer("integrated_gradients", {"baselines": base})
    n = 4
    delta = torch.randn(3 * n, 6, generator=torch.Generator().manual_seed(0)) * 0.1
    noisy = x.repeat_interleave(n, 0) + delta
    batch = EvalBatch(
        x=x, maps=x, target=torch.ones(3, dtype=torch.long), model=sl.Model(net),
        explainer=explainer,
    )  # fmt: skip
    out = explain_noisy(batch, noisy, n, "maps")
    want = (noisy - base.repeat_interleave(n, 0)) * net[0].weight[1]
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)


def test_random_logit_recomputes_with_per_sample_baselines(model, data):
    """The random-logit maps of the other class are IG's with the same per-sample baselines
    as the maps it compares them with (they were recomputed from zero baselines)."""
    x = data.images
    base = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    options = {"baselines": base, "n_steps": 8}
    ex = sl.explain(model, x, methods={"integrated_gradients": options})
    rep = sl.evaluate(
        model, x, ex, metrics={"random_logit": {"similarity": "spearman"}}, references=False
    )
    result = rep["integrated_gradients"]["random_logit"]
    other = sl.explain(
        model, x, methods={"integrated_gradients": options}, target=result.extras["random_class"]
    )["integrated_gradients"]
    from saliencelab.metrics.randomisation.similarity import similarity_to

    want = similarity_to("spearman", ex["integrated_gradients"].maps)(other.maps)
    torch.testing.assert_close(result.values.double(), want.double(), atol=1e-6, rtol=0)


def test_attribution_to_moves_its_tensor_options_too():
    """`Attribution.to(device)` moved the maps but left the tensor options behind, which a
    recomputation on the new device would then mix with its inputs."""
    net, x = _linear()
    a = sl.explain(net, x, methods={"integrated_gradients": {"baselines": torch.ones(6)}})[
        "integrated_gradients"
    ]
    moved = a.to("meta")  # a device every machine has
    assert moved.maps.device.type == moved.tensor_params["baselines"].device.type == "meta"


# -- a sweep of `saliencelab evaluate` (2026-11-25) ------------------------------------------------


def test_an_image_given_twice_is_scored_once_with_a_note(runner, bed, tmp_path):
    """img0 as a file, again inside its folder and again by another path: it counted 3 times
    (n = 6 for 4 images, its values thrice in the mean and CI)."""
    imgs, _ = bed
    out = tmp_path / "out"
    again = imgs / ".." / imgs.name / "img0.png"
    args = ["evaluate", str(imgs / "img0.png"), str(imgs), str(again), "--model", "shapes_cnn"]
    args += ["-m", "saliency", "--metrics", "sparseness", "--no-references", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "metrics.json").read_text())
    assert sorted(Path(p).name for p in data["images"]) == [f"{n}.png" for n in NAMES]
    assert data["results"]["saliency"]["sparseness"]["n"] == 4
    notes = lines(result.stderr, "note:")
    assert len(notes) == 2 and all("given more than once; it is used once" in n for n in notes)


def test_options_naming_no_metric_or_given_twice_are_refused(runner, bed, tmp_path):
    imgs, _ = bed
    for options, words in [
        (["nope.steps=3"], "names no metric: there is no metric 'nope'"),
        (["deletion.steps=7", "deletion.steps=9"], "deletion.steps is given twice (7 and 9)"),
    ]:
        out = tmp_path / "out"
        extra = [a for o in options for a in ("--option", o)]
        result = cli_evaluate(runner, imgs, out, "--metrics", "deletion", *extra)
        assert result.exit_code == 2 and words in result.stderr, result.output
        assert not out.exists()
    out = tmp_path / "same"  # the same value twice is one option
    extra = ["--option", "deletion.steps=4", "--option", "deletion.steps=4", "-m", "saliency"]
    result = cli_evaluate(runner, imgs, out, "--metrics", "deletion", "--no-references", *extra)
    assert result.exit_code == 0, result.output
    params = json.loads((out / "metrics.json").read_text())["params"]
    assert params["metric_options"] == {"deletion": {"steps": 4}}


def test_an_unreadable_file_is_named_once(runner, bed, tmp_path):
    imgs, _ = bed
    (imgs / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    result = cli_evaluate(runner, imgs, out, "-m", "saliency", "--metrics", "sparseness")
    errors = lines(result.stderr, "error:")
    assert len(errors) == 1 and errors[0].count("broken.png") == 1, errors
    assert "The file is not an image Pillow can read" in errors[0] and "PNM" in errors[0]
