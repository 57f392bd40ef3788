"""`saliencelab evaluate`: batches merged like one `sl.evaluate` call, files, options, errors.

A tiny CNN from a factory file (16x16 inputs) keeps it fast. The reference for every number the
command writes is `sl.evaluate` run directly on all images in one batch.
"""

from __future__ import annotations

import csv
import json
import math
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import saliencelab as sl
from saliencelab.cli import app
from saliencelab.metrics import base
from saliencelab.metrics.base import EvalBatch, Metric, Scores
from saliencelab.metrics.commands import load_mask

FACTORY = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn

    import saliencelab as sl


    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))


    def preprocess(images):
        images = images if isinstance(images, (list, tuple)) else [images]
        arrays = [np.asarray(im.convert("RGB").resize((16, 16)), np.float32) / 255 for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


    def build():
        torch.manual_seed(0)
        return sl.Model(TinyCNN().eval(), preprocess=preprocess, labels=list("abcd"), name="tiny")
    """
)

NAMES = ["a", "b", "c", "d", "e"]


class CurveProbe(Metric):
    """A metric with a known curve: curve_k = scale * (k / steps) * mean |map|, value = its AUC."""

    name = "cli_probe_curve"
    direction = "higher"
    value_range = (0.0, math.inf)

    def __init__(self, steps: int = 4, scale: float = 1.0) -> None:
        super().__init__(steps=steps, scale=scale)

    def score(self, batch: EvalBatch) -> Scores:
        x = torch.linspace(0, 1, self.steps + 1, dtype=torch.double)
        level = batch.maps.abs().flatten(1).mean(1).double()
        curves = self.scale * level[:, None] * x[None]
        return Scores(values=torch.trapezoid(curves, x, dim=1), curves=curves, curve_x=x)


class PickyProbe(Metric):
    """Refuses bright inputs (mean > 0.9), like a metric that cannot score some sample."""

    name = "cli_probe_picky"
    direction = "higher"

    def __init__(self) -> None:
        super().__init__()

    def score(self, batch: EvalBatch) -> Scores:
        if (batch.x.flatten(1).mean(1) > 0.9).any():
            raise sl.SaliencelabError("This sample is too bright to score; darken it.")
        return Scores(values=batch.maps.flatten(1).mean(1))


def expected_probe(maps: torch.Tensor, scale: float) -> torch.Tensor:
    """The probe's value by hand: the area under a line from 0 to scale * level is half of it."""
    return scale * maps.abs().flatten(1).mean(1).double() / 2


@pytest.fixture
def probe():
    for cls in (CurveProbe, PickyProbe):
        base.register_metric(cls)
    yield CurveProbe
    for cls in (CurveProbe, PickyProbe):
        base._METRICS.pop(cls.name, None)


@pytest.fixture
def tiny(tmp_path) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(FACTORY)
    return f"{path}:build"


@pytest.fixture
def folder(tmp_path):
    """Five random photos a..e (40x30) and a broken file `bad.png` sorted among them."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in NAMES:
        pixels = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    (folder / "bad.png").write_text("not a picture")
    return folder


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def direct(tiny, folder, names=NAMES):
    """The model, inputs and a one-shot explanation of the named photos (the reference)."""
    model = sl.load_model(tiny)
    x = model.preprocess([sl.load_image(folder / f"{n}.png") for n in names])
    ex = sl.explain(model, x, methods=["gradcam", "saliency"])
    return model, x, ex


def is_drawn(path) -> bool:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    return pixels.std() > 8 and len(np.unique(packed)) > 20


def test_evaluate_merges_batches_like_one_call_and_writes_everything(
    runner, tiny, folder, tmp_path, probe
):
    out = tmp_path / "out"
    args = ["evaluate", str(folder), "--model", tiny, "--methods", "gradcam,saliency"]
    args += ["--metrics", "deletion,cli_probe_curve", "--steps", "4", "--batch-size", "2"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output  # the broken file
    assert "Traceback" not in result.output

    # The bad image: skipped, reported once on stderr, counted in the summary.
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "bad.png" in errors[0] and "not an image" in errors[0]
    assert "Scored 5 images with 2 methods and 2 metrics" in result.stdout
    assert "1 failed" in result.stdout

    # The printed table: every method and reference, each metric, the columns.
    for word in ("gradcam", "saliency", "random (ref)", "sobel (ref)", "deletion", "95% CI"):
        assert word in result.stdout
    assert "cli_probe_curve" in result.stdout and "lower" in result.stdout

    model, x, ex = direct(tiny, folder)
    one_shot = sl.evaluate(model, x, ex, metrics=["deletion"], steps=4)

    # metrics.json: images in order, per-sample values equal to one sl.evaluate call.
    data = json.loads((out / "metrics.json").read_text())
    assert data["images"] == [str(folder / f"{n}.png") for n in NAMES]
    assert [e["image"] for e in data["errors"]] == [str(folder / "bad.png")]
    assert data["references"] == ["random", "center_gaussian", "sobel"]
    results = data["results"]
    assert set(results) == {"gradcam", "saliency", "random", "center_gaussian", "sobel"}
    for method in ("gradcam", "saliency", "center_gaussian", "sobel"):  # random: seeded per batch
        got = torch.tensor(results[method]["deletion"]["values"], dtype=torch.double)
        torch.testing.assert_close(
            got, one_shot[method]["deletion"].values.double(), atol=1e-5, rtol=0
        )
        assert results[method]["deletion"]["curve"] == pytest.approx(
            one_shot[method]["deletion"].curve.tolist(), abs=1e-5
        )
    for method in ("gradcam", "saliency"):
        probe_values = torch.tensor(results[method]["cli_probe_curve"]["values"])
        expected = expected_probe(ex[method].maps, 1.0)
        torch.testing.assert_close(probe_values.double(), expected, atol=1e-5, rtol=1e-4)
        assert results[method]["cli_probe_curve"]["n"] == 5
        assert results[method]["cli_probe_curve"]["curve_x"] == pytest.approx(
            [0, 0.25, 0.5, 0.75, 1]
        )
    assert results["gradcam"]["deletion"]["params"]["steps"] == 4

    # metrics.csv: one row per (method, metric), the same means as the JSON.
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 2
    assert set(rows[0]) >= {"method", "metric", "mean", "ci_low", "ci_high", "n", "direction"}
    by_key = {(r["method"], r["metric"]): r for r in rows}
    for (method, metric), r in by_key.items():
        assert float(r["mean"]) == pytest.approx(results[method][metric]["mean"])
        assert r["reference"] == str(method in ("random", "center_gaussian", "sobel"))
        assert int(r["n"]) == 5
    mean = one_shot["gradcam"]["deletion"].mean
    assert float(by_key[("gradcam", "deletion")]["mean"]) == pytest.approx(mean, abs=1e-6)

    # Charts: a curve PNG per curve-based metric and a bar chart per metric, all drawn.
    assert sorted(p.name for p in (out / "curves").iterdir()) == [
        "cli_probe_curve.png",
        "deletion.png",
    ]
    assert sorted(p.name for p in (out / "bars").iterdir()) == [
        "cli_probe_curve.png",
        "deletion.png",
    ]
    for path in [*(out / "curves").iterdir(), *(out / "bars").iterdir()]:
        assert is_drawn(path), path


def test_options_reach_the_metrics(runner, tiny, folder, tmp_path, probe):
    out = tmp_path / "out"
    args = ["evaluate", str(folder / "a.png"), str(folder / "b.png"), "--model", tiny]
    args += ["-m", "saliency", "--metrics", "cli_probe_curve,deletion", "--no-references"]
    args += ["--option", "cli_probe_curve.scale=3", "--option", "steps=6", "--out", str(out)]
    args += ["--method-option", "absolute=false"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "metrics.json").read_text())
    assert list(data["results"]) == ["saliency"] and data["references"] == []
    probe_result = data["results"]["saliency"]["cli_probe_curve"]
    assert probe_result["params"] == {"steps": 6, "scale": 3}
    assert len(probe_result["curve"]) == 7
    assert data["results"]["saliency"]["deletion"]["params"]["steps"] == 6
    model, x, _ = direct(tiny, folder, ["a", "b"])
    ex = sl.explain(model, x, methods={"saliency": {"absolute": False}})
    assert (ex["saliency"].maps < 0).any()  # the method option changed the maps
    torch.testing.assert_close(
        torch.tensor(probe_result["values"], dtype=torch.double),
        expected_probe(ex["saliency"].maps, 3.0),
        atol=1e-5,
        rtol=1e-4,
    )
    assert "(ref)" not in result.stdout  # no reference rows: no legend for them either


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--metrics", "delition"], "No metric named 'delition'"),
        (["--option", "stepz=3"], "No requested metric takes the option 'stepz'"),
        (["--option", "deletion.stepz=3"], "The metric deletion has no option 'stepz'"),
        (["--option", "road.steps=3"], "is for the metric 'road', which was not requested"),
        (["--option", "deletion.steps=0"], "steps must be a positive integer for deletion"),
        (["--metrics", "road", "--option", "percentages=50"], "The percentages of road"),
        (["--option", "steps"], "is not of the form key=value; write e.g. --option steps=20"),
        (["--steps", "3", "--option", "steps=4"], "Give the steps once"),
        (["--method-option", "n_stepz=3"], "No requested method takes the option 'n_stepz'"),
        (["-m", "gradcm"], "Unknown method 'gradcm'"),
        (["--metrics", "pointing_game"], "needs ground-truth masks; pass --masks"),
        (["--target", "channel:features.0:1"], "explain a channel, neuron or function target"),
        (["--masks", "{tmp}/nowhere"], "is not a folder"),
        (["--target", "9"], "out of range"),
        (["--device", "tpu9"], "Unknown device"),
    ],
)
def test_request_errors_are_one_sentence_exit_2_and_write_nothing(
    runner, tiny, folder, tmp_path, extra, needle
):
    out = tmp_path / "out"
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    args = ["evaluate", str(folder / "a.png"), "--model", tiny]
    result = runner.invoke(app, [*args, "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert not out.exists()


def test_a_channel_target_is_scored_by_the_metrics_that_read_the_maps(
    runner, tiny, folder, tmp_path
):
    """`evaluate --target` took class targets only (`explain --target` took channel:LAYER:C and
    neuron:LAYER:C[:Y:X]); a channel's maps are scored by the complexity and localisation
    metrics as sl.evaluate scores sl.explain's maps of sl.channel."""
    out = tmp_path / "out"
    args = ["evaluate", *(str(folder / f"{n}.png") for n in NAMES[:3]), "--model", tiny]
    args += ["-m", "gradcam,saliency", "--metrics", "sparseness,entropy"]
    result = runner.invoke(app, [*args, "--target", "channel:features.0:1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = sl.load_model(tiny)
    x = model.preprocess([sl.load_image(folder / f"{n}.png") for n in NAMES[:3]])
    ex = sl.explain(model, x, methods=["gradcam", "saliency"], target=sl.channel("features.0", 1))
    want = sl.evaluate(model, x, ex, metrics=["sparseness", "entropy"])
    results = json.loads((out / "metrics.json").read_text())["results"]
    for method in ("gradcam", "saliency", "sobel"):
        for metric in ("sparseness", "entropy"):
            values = [math.nan if v is None else v for v in results[method][metric]["values"]]
            got = torch.tensor(values, dtype=torch.double)
            torch.testing.assert_close(got, want[method][metric].values.double(), equal_nan=True)


def test_a_reused_out_folder_names_the_earlier_runs_charts(runner, tiny, folder, tmp_path):
    """A second run into the same --out with other metrics left the first run's curve and bar
    charts beside a metrics.json that no longer held them, unmentioned (explain notes them)."""
    out = tmp_path / "out"
    args = ["evaluate", str(folder / "a.png"), "--model", tiny, "-m", "saliency", "--out", str(out)]
    first = runner.invoke(app, [*args, "--metrics", "deletion", "--steps", "2"])
    assert first.exit_code == 0 and "note:" not in first.stderr, first.output
    second = runner.invoke(app, [*args, "--metrics", "sparseness"])
    assert second.exit_code == 0, second.output
    notes = [line for line in second.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 2, second.stderr  # curves/ and bars/, nothing deleted
    assert "deletion.png" in notes[0] and "deletion.png" in notes[1]
    assert (out / "curves" / "deletion.png").exists() and (out / "bars" / "deletion.png").exists()


def test_masks_follow_the_images_and_a_missing_mask_is_reported(runner, tiny, folder, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    expected = []
    for i, name in enumerate(NAMES[:4]):  # no mask for e
        m = np.zeros((30, 40), np.uint8)
        m[3 + i : 12 + 3 * i, 5 + 4 * i : 20 + 4 * i] = 7  # nonzero = object
        Image.fromarray(m).save(masks / f"{name}.png")
        small = Image.fromarray((m > 0).astype(np.uint8) * 255).resize(
            (16, 16), Image.Resampling.NEAREST
        )
        expected.append(torch.from_numpy(np.asarray(small) >= 128))
    out = tmp_path / "out"
    args = ["evaluate", str(folder), "--model", tiny, "-m", "gradcam,saliency"]
    args += ["--metrics", "pointing_game", "--masks", str(masks), "--out", str(out)]
    result = runner.invoke(app, [*args, "--batch-size", "3", "--option", "tolerance=0"])
    assert result.exit_code == 2, result.output
    errors = error_lines(result.stderr)
    assert len(errors) == 2
    assert "bad.png" in errors[0] and "e.png" in errors[1] and "no mask e.png" in errors[1]
    data = json.loads((out / "metrics.json").read_text())
    assert data["images"] == [str(folder / f"{n}.png") for n in NAMES[:4]]
    model, x, ex = direct(tiny, folder, NAMES[:4])
    one_shot = sl.evaluate(
        model, x, ex, metrics=["pointing_game"], masks=torch.stack(expected), tolerance=0
    )
    for method in ("gradcam", "saliency", "sobel", "center_gaussian"):
        got = data["results"][method]["pointing_game"]["values"]
        assert got == one_shot[method]["pointing_game"].values.tolist()
    assert not (out / "curves").exists()  # no curve-based metric
    assert is_drawn(out / "bars" / "pointing_game.png")


def test_load_mask_uses_the_models_display_geometry(tmp_path, tiny_cnn):
    """A mask goes through the same crop as the photo (`display`), then to the input size."""
    m = np.zeros((20, 40), np.uint8)
    m[:, 30:] = 255  # object in the right quarter
    path = tmp_path / "m.png"
    Image.fromarray(m).save(path)

    def right_half(img):
        return img.crop((20, 0, 40, 20))

    model = sl.Model(tiny_cnn, extra={"display": right_half})
    mask = load_mask(path, model, (10, 10))
    assert mask.shape == (10, 10) and mask.dtype == torch.bool
    assert not mask[:, :5].any() and mask[:, 5:].all()
    plain = load_mask(path, sl.Model(tiny_cnn), (10, 20))  # no display: resized
    assert not plain[:, :15].any() and plain[:, 15:].all()


def test_no_readable_image_is_one_sentence(runner, tiny, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    out = tmp_path / "out"
    args = ["evaluate", str(bad), str(tmp_path / "missing.png"), "--model", tiny]
    result = runner.invoke(app, [*args, "--steps", "2", "--out", str(out)])
    assert result.exit_code == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 3 and "None of the 2 images could be read" in errors[-1]
    assert "does not exist" in errors[1]
    assert not (out / "metrics.csv").exists()


def test_an_empty_folder_alone_is_one_sentence_before_the_model_loads(runner, tmp_path):
    """One error line (it used to add "The image could not be read; see the error above."),
    and the model is not even loaded (a model spec that would fail is never reached)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["evaluate", str(empty), "--model", str(tmp_path / "never_loaded.py:build")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "holds no image files" in errors[0]
    assert "Nothing was written" in errors[0] and not (tmp_path / "out").exists()


def test_the_metrics_command_lists_and_describes_the_metrics(runner):
    result = runner.invoke(app, ["metrics"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in sl.metrics.available():
        assert name in result.output
    assert "maps only" in result.output and "masks" in result.output  # what each needs
    assert "steps=100" in result.output  # deletion's options with their defaults
    one = runner.invoke(app, ["metrics", "pointing_game"])
    assert one.exit_code == 0 and "localisation, higher is better, values in [0, 1]" in one.output
    assert "tolerance = None" in one.output and "Zhang et al. 2018" in one.output
    for name in sl.metrics.available():  # the paper of each (road_lerf's docstring has none)
        reference = sl.metrics.get(name).reference
        described = runner.invoke(app, ["metrics", name], env={"COLUMNS": "400"})
        assert described.exit_code == 0 and f"Paper: {reference}" in described.output, name
    bad = runner.invoke(app, ["metrics", "deletoin"])
    assert bad.exit_code == 2 and error_lines(bad.stderr) == [
        "error: No metric named 'deletoin'. Did you mean: deletion? See sl.metrics.available() "
        "(`saliencelab metrics` in the shell)."
    ]


def test_an_image_failing_inside_a_batch_is_isolated(runner, tiny, folder, tmp_path, probe):
    Image.new("RGB", (40, 30), "white").save(folder / "bright.png")  # sorted: a, b, bad, bright
    out = tmp_path / "out"
    args = ["evaluate", str(folder), "--model", tiny, "-m", "saliency", "--no-references"]
    args += ["--metrics", "cli_probe_picky", "--batch-size", "3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = error_lines(result.stderr)
    assert len(errors) == 2 and "bright.png" in errors[1] and "too bright" in errors[1]
    data = json.loads((out / "metrics.json").read_text())
    assert data["images"] == [str(folder / f"{n}.png") for n in NAMES]
    model, x, ex = direct(tiny, folder)
    torch.testing.assert_close(
        torch.tensor(data["results"]["saliency"]["cli_probe_picky"]["values"]),
        ex["saliency"].maps.flatten(1).mean(1),
        atol=1e-6,
        rtol=1e-5,
    )


def test_a_request_error_in_the_first_batch_is_raised(runner, tiny, tmp_path, probe):
    folder = tmp_path / "white"
    folder.mkdir()
    for name in "xy":
        Image.new("RGB", (40, 30), "white").save(folder / f"{name}.png")
    args = ["evaluate", str(folder), "--model", tiny, "-m", "saliency", "--no-references"]
    args += ["--metrics", "cli_probe_picky", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "too bright" in errors[0]
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_efficientnet_on_a_sample_photo_with_a_mask(runner, tmp_path):
    """The real model end to end: a sample photo by name, its mask through the model's crop."""
    masks = tmp_path / "masks"
    masks.mkdir()
    w, h = sl.sample_image("chelsea").size
    full = np.zeros((h, w), np.uint8)
    full[:, : w // 2] = 1  # the left half; the centre crop keeps part of it
    Image.fromarray(full).save(masks / "chelsea.png")
    out = tmp_path / "out"
    args = ["evaluate", "chelsea", "-m", "gradcam", "--metrics", "deletion,pointing_game"]
    args += ["--masks", str(masks), "--option", "deletion.steps=2", "--no-references"]
    result = runner.invoke(app, [*args, "--option", "tolerance=0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["images"] == ["chelsea"] and data["params"]["model"] == "efficientnet_lite0"
    deletion = data["results"]["gradcam"]["deletion"]
    assert 0 <= deletion["values"][0] <= 1 and len(deletion["curve"]) == 3
    assert data["results"]["gradcam"]["pointing_game"]["values"][0] in (0.0, 1.0)
    # The mask went through the model's centre crop: its edge moved to (w/2 - left) / side.
    from saliencelab.models.efficientnet_lite import display

    mask = load_mask(
        masks / "chelsea.png", sl.Model(torch.nn.Identity(), extra={"display": display}), (224, 224)
    )
    side = min(w, h)
    edge = round((w // 2 - (w - side) // 2) / side * 224)
    assert mask[:, : edge - 1].all() and not mask[:, edge + 1 :].any()
    assert is_drawn(out / "curves" / "deletion.png")
