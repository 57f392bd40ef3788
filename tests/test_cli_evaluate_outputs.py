"""What `saliencelab evaluate` reports and writes: masks of the wrong size and empty masks, the
settings in metrics.json, its messages, and its charts (bar labels, randomisation steps).

The bundled shapes CNN on three images of its test bed (64x64, with true object masks) keeps
each run to a second or two.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import saliencelab as sl
import saliencelab.viz.curves as curves_mod
from saliencelab.cli import app
from saliencelab.metrics.base import MetricResult
from saliencelab.metrics.commands import empty_mask_warning, unreadable
from saliencelab.metrics.evaluate import EvalReport
from saliencelab.viz.curves import _bar_layout, _margin, _step_ticks, plot_metric_curves

NAMES = ["img0", "img1", "img2"]


@pytest.fixture
def bed(write_bed):
    """Three shapes images as PNGs (imgs/) and their object masks, 0/255 (masks/)."""
    data = sl.data.shapes.make(3, seed=0)
    return (*write_bed(NAMES, data), data)


def lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


def evaluate(runner, imgs, out, *extra):
    args = ["evaluate", str(imgs), "--model", "shapes_cnn", "--no-references", "--out", str(out)]
    return runner.invoke(app, [*args, *extra])


# -- masks ----------------------------------------------------------------------------------------


def test_a_mask_of_another_size_is_reported_and_skipped(runner, bed, tmp_path):
    imgs, masks, _ = bed
    with Image.open(masks / "img1.png") as m:
        m.resize((32, 40), Image.Resampling.NEAREST).save(masks / "img1.png")
    out = tmp_path / "out"
    result = evaluate(
        runner, imgs, out, "-m", "gradcam", "--metrics", "pointing_game", "--masks", str(masks)
    )
    assert result.exit_code == 2, result.output  # like a missing mask: reported, exit 2
    errors = lines(result.stderr, "error:")
    assert len(errors) == 1
    assert "img1.png" in errors[0] and "32×40" in errors[0] and "64×64" in errors[0]
    data = json.loads((out / "metrics.json").read_text())
    assert data["images"] == [str(imgs / "img0.png"), str(imgs / "img2.png")]
    assert [e["image"] for e in data["errors"]] == [str(imgs / "img1.png")]
    assert data["results"]["gradcam"]["pointing_game"]["n"] == 2


def test_an_empty_mask_is_named_in_a_warning(runner, bed, tmp_path):
    imgs, masks, _ = bed
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / "img1.png")
    out = tmp_path / "out"
    args = ["-m", "gradcam", "--metrics", "pointing_game,relevance_mass", "--masks", str(masks)]
    result = evaluate(runner, imgs, out, *args)
    assert result.exit_code == 0, result.output  # the run goes on
    warnings = lines(result.stderr, "warning:")
    assert len(warnings) == 1 and not lines(result.stderr, "error:")
    assert "img1.png" in warnings[0] and "img0.png" not in warnings[0]
    assert "pointing_game" in warnings[0] and "relevance_mass" in warnings[0]
    data = json.loads((out / "metrics.json").read_text())
    assert data["params"]["empty_masks"] == [str(imgs / "img1.png")]
    assert data["results"]["gradcam"]["pointing_game"]["n"] == 2


def test_the_empty_mask_warning_counts_in_the_singular_and_plural():
    assert "these images" in empty_mask_warning(["a.png", "b.png"], ["pointing_game"])
    one = empty_mask_warning(["a.png"], ["pointing_game"])
    assert "1 image: a.png" in one and "pointing_game is undefined for this image" in one


# -- metrics.json ---------------------------------------------------------------------------------


def test_metrics_json_records_the_settings_and_the_class_explained(runner, bed, tmp_path):
    imgs, _, _ = bed
    out = tmp_path / "out"
    args = ["-m", "gradcam,integrated_gradients", "--metrics", "deletion", "--steps", "3"]
    args += ["--target", "2", "--layer", "features.8", "--method-option", "n_steps=4"]
    args += ["--option", "deletion.baseline=0.5", "--batch-size", "2"]
    result = evaluate(runner, imgs, out, *args)
    assert result.exit_code == 0, result.output
    params = json.loads((out / "metrics.json").read_text())["params"]
    assert params["metrics"] == ["deletion"] and params["model"] == "shapes_cnn"
    assert params["methods"] == ["gradcam", "integrated_gradients"]
    assert params["target"] == 2 and params["layer"] == "features.8"
    assert params["method_options"] == {
        "gradcam": {"layer": "features.8"},
        "integrated_gradients": {"n_steps": 4},
    }
    assert params["method_params"]["gradcam"]["layer"] == "features.8"
    assert params["method_params"]["integrated_gradients"]["n_steps"] == 4
    assert params["metric_options"] == {"deletion": {"baseline": 0.5}}
    assert params["shared_metric_options"] == {"steps": 3}
    assert params["batch_size"] == 2 and params["references"] is False
    labels = sl.load_model("shapes_cnn").labels
    assert params["explained"] == [
        {"image": str(imgs / f"{n}.png"), "class": 2, "label": labels[2]} for n in NAMES
    ]


def test_a_channel_target_is_named_in_metrics_json(runner, bed, tmp_path):
    """It was recorded as "custom", where the table, gallery and report name the channel."""
    imgs, _, _ = bed
    out = tmp_path / "out"
    args = ["-m", "gradcam", "--metrics", "sparseness", "--target", "channel:features.10:28"]
    result = evaluate(runner, imgs, out, *args)
    assert result.exit_code == 0, result.output
    params = json.loads((out / "metrics.json").read_text())["params"]
    assert [(e["class"], e["label"]) for e in params["explained"]] == [
        (None, "channel 28 of features.10")
    ] * len(NAMES)


def test_without_a_target_the_predicted_class_is_recorded(runner, bed, tmp_path):
    imgs, _, _ = bed
    out = tmp_path / "out"
    result = evaluate(runner, imgs, out, "-m", "saliency", "--metrics", "deletion", "--steps", "2")
    assert result.exit_code == 0, result.output
    params = json.loads((out / "metrics.json").read_text())["params"]
    model = sl.load_model("shapes_cnn")
    x = model.preprocess([sl.load_image(imgs / f"{n}.png") for n in NAMES])
    with torch.no_grad():
        predicted = model.module(x).argmax(1).tolist()
    assert params["target"] is None
    assert [e["class"] for e in params["explained"]] == predicted
    assert [e["label"] for e in params["explained"]] == [model.labels[i] for i in predicted]


# -- messages -------------------------------------------------------------------------------------


def test_one_unreadable_image_is_one_singular_sentence(runner, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    result = evaluate(runner, bad, tmp_path / "out", "-m", "saliency", "--steps", "2")
    assert result.exit_code == 2
    (line,) = lines(result.stderr, "error:")  # one line, naming the file; no model loaded
    assert line.startswith(f"error: {bad}: ") and line.endswith("Nothing was written.")
    assert "None of the 1" not in result.stderr
    assert unreadable(1) == "The image could not be scored; see the error above."
    assert unreadable(2) == "None of the 2 images could be scored; see the errors above."


# -- bar labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row",
    [
        (0.186, 0.004, 0.62),  # the CI starts near 0: no room inside the bar
        (0.37, 0.057, 0.98),  # the whisker reaches the last tick
        (1.0, 1.0, 1.0),  # a reference at the top of the scale
        (-0.4, -0.7, -0.1),  # negative: the bar and its whisker left of 0
        (0.3, math.nan, math.nan),  # one sample: no interval
    ],
)
def test_bar_labels_start_beyond_the_bar_and_its_whisker(row):
    ticks = [0.0, 0.25, 0.5, 0.75, 1.0] if row[0] >= 0 else [-0.75, -0.5, -0.25, 0.0]
    frame, width, gap = (200.0, 1460.0), 180.0, 12.0
    rows = [row, (0.5, 0.4, 0.6)]
    (lo, hi), xs = _bar_layout(rows, ticks, frame, [width, width], gap)
    assert lo == _margin(ticks)[0] and hi >= _margin(ticks)[1]  # the ticks all still show

    def px(v):
        return frame[0] + (v - lo) / (hi - lo) * (frame[1] - frame[0])

    mean, low, high = row
    ends = [mean, 0.0] + ([low, high] if math.isfinite(low) else [])
    assert xs[0] >= px(max(ends)) + gap  # right of the bar, the mean and the whisker's cap
    assert xs[0] + width <= frame[1]  # inside the frame


def test_bar_labels_of_rows_without_a_value_are_none():
    (_, _), xs = _bar_layout([(math.nan, math.nan, math.nan)], [0.0, 1.0], (0, 500), [60], 6)
    assert xs == [None]


# -- randomisation steps --------------------------------------------------------------------------


def randomisation(names: list[str] | None, k: int = 2) -> MetricResult:
    curves = torch.rand(3, k, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    params = {"order": "cascading"} | ({"randomised": names} if names else {})
    return MetricResult(
        "model_randomisation",
        curves[:, -1],
        "lower",
        (-1.0, 1.0),
        params=params,
        curves=curves,
        curve_x=torch.arange(1, k + 1, dtype=torch.float),
    )


@pytest.fixture
def axes_calls(monkeypatch):
    calls: list[dict] = []
    axes = curves_mod._Canvas.axes

    def record(self, x_ticks, y_ticks, xlabel, ylabel, x_names=None):
        calls.append({"ticks": list(x_ticks), "names": x_names, "xlabel": xlabel})
        axes(self, x_ticks, y_ticks, xlabel, ylabel, x_names=x_names)

    monkeypatch.setattr(curves_mod._Canvas, "axes", record)
    return calls


def test_randomisation_steps_are_whole_ticks_named_by_their_layers(axes_calls):
    report = EvalReport({"gradcam": {"model_randomisation": randomisation(["fc", "features.11"])}})
    img = plot_metric_curves(report, "model_randomisation")
    assert img.size == (760, 460)
    (call,) = axes_calls
    assert call["ticks"] == [1.0, 2.0]
    assert call["names"] == ["fc", "features.11"]
    assert "randomised" in call["xlabel"]


def test_many_long_layer_names_are_thinned_and_the_chart_still_draws(axes_calls):
    names = [f"model.blocks.{i}.attention.projection" for i in range(25, 0, -1)]
    report = EvalReport({"m": {"model_randomisation": randomisation(names, len(names))}})
    plot_metric_curves(report, "model_randomisation", size=(500, 360))
    (call,) = axes_calls
    assert len(call["ticks"]) <= 10 and call["ticks"][0] == 1.0 and call["ticks"][-1] == 25.0
    assert all(t == int(t) for t in call["ticks"])
    assert call["names"] == [names[int(t) - 1] for t in call["ticks"]]


def test_integer_steps_without_names_get_whole_ticks(axes_calls):
    report = EvalReport({"m": {"model_randomisation": randomisation(None, 3)}})
    plot_metric_curves(report, "model_randomisation")
    (call,) = axes_calls
    assert call["names"] is None and call["ticks"] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(("lo", "hi"), [(1, 2), (1, 3), (0, 7), (1, 19), (3, 250), (5, 5)])
def test_step_ticks_are_whole_numbers_covering_the_range(lo, hi):
    ticks, names = _step_ticks(lo, hi)
    assert names is None and 2 <= len(ticks) <= 10
    assert all(t == int(t) for t in ticks)
    assert ticks[0] <= lo and ticks[-1] >= hi
