"""What Python-made pictures, report rows and JSON say agrees with the CLI's and the API's: time
per image, forwards, the classes scored on, and the samples behind a mean curve."""

from __future__ import annotations

import json

import pytest

import saliencelab as sl
from saliencelab.report.html import REPORT_COLUMNS
from saliencelab.viz import curves as curves_module
from saliencelab.viz.gallery import _cost


@pytest.fixture(scope="module")
def model():
    return sl.load_model("shapes_cnn")


@pytest.fixture(scope="module")
def x():
    return sl.data.shapes.make(4, seed=0).images


def test_table_gallery_and_report_rows_give_cost_per_image(model, x):
    """`Attribution.seconds` is the whole call's: the table, the gallery caption and a report
    made from Python showed it per image (6× the real time for 6 images), where the CLI split
    it; the table had no forwards."""
    ex = sl.explain(model, x, {"integrated_gradients": {"n_steps": 8}, "occlusion": {}})
    ig, occ = ex["integrated_gradients"], ex["occlusion"]
    rows = ex.table()
    assert len(rows) == 8
    for r in rows:
        a = ex[r["method"]]
        assert r["seconds"] == pytest.approx(a.seconds / 4) and r["forwards"] == a.forwards
    ig.seconds = 2.0  # 0.5 s an image
    assert _cost(ig) == f"8 passes · {ig.forwards:g} fwd · 500 ms"
    occ.seconds = 0.004
    assert _cost(occ).endswith(" fwd · 1 ms")
    entry = sl.ReportEntry.from_explanation("a", ex, 1)
    assert [list(r) for r in entry.rows] == [[c for c in REPORT_COLUMNS if c != "target"]] * 2
    assert entry.rows[0]["seconds"] == pytest.approx(0.5)
    other = sl.explain(model, x, "saliency", target=[0, 1, 2, 0])
    entry = sl.ReportEntry.from_explanation("b", other, 1)
    if other.predictions[1] != 1:  # a target other than the prediction is shown
        assert entry.rows[0]["target"] == other.label(1)


def test_evaluation_json_holds_the_classes_scored_on(model, x, tmp_path):
    ex = sl.explain(model, x, "gradcam", target=[1, 2, 0, 1])
    rep = sl.evaluate(model, x, ex, metrics={"deletion": {"steps": 4}})
    assert rep.params["targets"]["gradcam"] == [1, 2, 0, 1]
    data = json.loads(rep.to_json(tmp_path / "m.json").read_text())
    assert data["params"]["targets"] == {name: [1, 2, 0, 1] for name in rep.params["targets"]}
    assert data["params"]["metrics"] == rep.params["metrics"]


def test_the_curve_chart_counts_the_samples_with_a_curve(model, x, monkeypatch):
    said: list[str] = []
    real = curves_module._Canvas.subtitle
    monkeypatch.setattr(
        curves_module._Canvas, "subtitle", lambda self, text: (said.append(text), real(self, text))
    )
    ex = sl.explain(model, x, "saliency")
    half = ex["saliency"].maps.clone()
    half[1] = 0  # no curve for this sample
    maps = {"saliency": ex["saliency"].maps, "half": half}
    metrics = {"sensitivity_n": {"fractions": (0.1, 0.3), "n_samples": 3}}
    target = ex["saliency"].target
    rep = sl.evaluate(model, x, maps, metrics=metrics, references=False, target=target)
    assert rep["half"]["sensitivity_n"].n == 3
    sl.viz.curves.plot_metric_curves(rep, "sensitivity_n")
    assert said[-1] == "mean curve over 3-4 samples (those with a curve); legend: score (mean)"
    sl.viz.curves.plot_metric_curves(sl.evaluate(
        model, x, {"saliency": maps["saliency"]}, metrics=metrics, references=False,
        target=target,
    ), "sensitivity_n")  # fmt: skip
    assert said[-1] == "mean curve over 4 samples; legend: score (mean)"
