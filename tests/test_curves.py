"""Charts of evaluation reports (`viz/curves.py`): lines where the values say, dashes for the
references, bars as long as the means, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import saliencelab as sl
from saliencelab.metrics.base import MetricResult
from saliencelab.metrics.evaluate import EvalReport
from saliencelab.viz.curves import (
    PALETTE,
    REFERENCE_STYLES,
    _nice_ticks,
    curve_metrics,
    plot_metric_bars,
    plot_metric_curves,
    save_metric_curves,
)


def result(curve: list[float] | None, values: list[float], direction="lower", metric="deletion"):
    curves = None if curve is None else torch.tensor([curve, curve], dtype=torch.double)
    x = None if curve is None else torch.linspace(0, 1, len(curve))
    return MetricResult(
        metric, torch.tensor(values), direction, (0.0, 1.0), curves=curves, curve_x=x
    )


def flat_report() -> EvalReport:
    """Two methods with flat curves at 0.2 and 0.8, a reference at 0.5; and a non-curve metric."""
    k = 11
    return EvalReport(
        {
            "low": {"deletion": result([0.2] * k, [0.2, 0.2]), "game": result(None, [0.3, 0.3])},
            "high": {"deletion": result([0.8] * k, [0.8, 0.8]), "game": result(None, [0.9, 0.9])},
            "random": {"deletion": result([0.5] * k, [0.5, 0.5]), "game": result(None, [0.6, 0.6])},
        },
        references=("random",),
    )


def matches(img, colour, tol=30) -> np.ndarray:
    a = np.asarray(img.convert("RGB"), dtype=np.int64)
    return (np.abs(a - np.asarray(colour)) <= tol).all(axis=-1)


def line_row(mask: np.ndarray) -> int:
    """The row holding the most pixels of a colour (a horizontal line's row)."""
    return int(mask.sum(axis=1).argmax())


def runs(row: np.ndarray) -> int:
    """Number of separate runs of True in a boolean row."""
    return int(np.count_nonzero(np.diff(row.astype(np.int8)) == 1) + row[0])


def test_flat_curves_are_drawn_at_their_values_and_references_dashed():
    img = plot_metric_curves(flat_report(), "deletion", size=(700, 420))
    assert img.size == (700, 420) and img.mode == "RGB"
    plot = np.s_[60:364, 80:420]  # inside the plot frame: no labels, no legend, no frame
    low, high = matches(img, PALETTE[0])[plot], matches(img, PALETTE[1])[plot]
    ref = matches(img, REFERENCE_STYLES[0][0], tol=30)[plot]
    y_low, y_high, y_ref = line_row(low), line_row(high), line_row(ref)
    assert low[y_low].sum() > 300 and high[y_high].sum() > 300  # long horizontal lines
    assert y_high < y_ref < y_low  # higher values are higher up
    assert abs((y_low - y_ref) - (y_ref - y_high)) <= 2  # 0.2, 0.5, 0.8: equal gaps, linear axis
    assert runs(ref[y_ref]) >= 12 and runs(low[y_low]) <= 3  # the reference is dashed, not solid


def test_a_falling_curve_falls_and_nan_points_are_skipped():
    k = 21
    falling = [1 - i / (k - 1) for i in range(k)]
    gap = list(falling)
    gap[10] = math.nan
    report = EvalReport({"m": {"deletion": result(gap, [0.5, 0.5])}})
    img = plot_metric_curves(report, "deletion")
    mask = matches(img, PALETTE[0])
    plot = mask[:, : int(img.width * 0.6)]  # left of the legend
    ys, xs = np.nonzero(plot)
    assert np.corrcoef(xs, ys)[0, 1] > 0.95  # right = lower down: the curve falls
    middle = np.nonzero(mask.any(axis=0))[0]
    assert len(middle) > 100
    # The NaN point breaks the line: a column band without the colour between its two halves.
    columns = plot.any(axis=0)
    inside = columns[np.nonzero(columns)[0][0] : np.nonzero(columns)[0][-1]]
    assert not inside.all()


def test_bars_are_as_long_as_the_means():
    img = plot_metric_bars(flat_report(), "game")
    tint = [tuple(round(c + (255 - c) * 0.55) for c in col) for col in PALETTE[:2]]
    short = matches(img, tint[0], tol=6).sum(axis=1).max()
    long = matches(img, tint[1], tol=6).sum(axis=1).max()
    assert long / short == pytest.approx(0.9 / 0.3, rel=0.08)


def test_real_report_from_sl_evaluate(tiny_cnn, images, tmp_path):
    ex = sl.explain(tiny_cnn, images[:2], methods=["saliency"])
    report = sl.evaluate(tiny_cnn, images[:2], ex, metrics=["deletion"], steps=4)
    assert curve_metrics(report) == ["deletion"]
    paths = report.save_curves(tmp_path / "curves")
    assert [p.name for p in paths] == ["deletion.png"]
    pixels = np.asarray(sl.load_image(paths[0]), dtype=np.float64)
    assert pixels.std() > 20
    assert matches(sl.load_image(paths[0]), PALETTE[0]).sum() > 100  # saliency's line
    assert plot_metric_bars(report, "deletion").width == 760


def test_save_metric_curves_writes_only_curve_metrics(tmp_path):
    paths = save_metric_curves(flat_report(), tmp_path / "c")
    assert [p.name for p in paths] == ["deletion.png"]
    no_curves = EvalReport({"m": {"game": result(None, [1.0, 0.0])}})
    assert save_metric_curves(no_curves, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_errors_are_one_sentence():
    report = flat_report()
    with pytest.raises(sl.SaliencelabError, match="no metric 'deletoin'.*Did you mean.*deletion"):
        plot_metric_curves(report, "deletoin")
    with pytest.raises(sl.SaliencelabError, match="has no curves.*plot_metric_bars"):
        plot_metric_curves(report, "game")
    with pytest.raises(sl.SaliencelabError, match="no metric 'x'"):
        plot_metric_bars(report, "x")


@pytest.mark.parametrize("seed", range(40))
def test_nice_ticks_cover_the_range_with_round_steps(seed):
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** float(torch.randint(-4, 5, (1,), generator=g))
    lo, hi = sorted((torch.randn(2, generator=g) * scale).tolist())
    ticks = _nice_ticks(lo, hi)
    assert ticks[0] <= lo + 1e-12 and ticks[-1] >= hi - 1e-12
    assert 4 <= len(ticks) <= 8
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5, 10)) < 1e-6
    assert np.allclose(np.diff(ticks), step)
    assert (ticks[-1] - ticks[0]) <= 2.6 * (hi - lo)  # not much wasted room


def _recorded(monkeypatch) -> tuple[list, list]:
    """Patch the canvas so the lines drawn and the legend entries are recorded."""
    import saliencelab.viz.curves as curves_mod

    lines: list = []
    legends: list = []
    init = curves_mod._Canvas.__init__

    def record_init(self, size, legend, bars=None):
        legends.append(list(legend))
        init(self, size, legend, bars)

    def record_line(self, x, y, colour, width, dash):
        lines.append((x.clone(), y.clone(), colour, dash))

    monkeypatch.setattr(curves_mod._Canvas, "__init__", record_init)
    monkeypatch.setattr(curves_mod._Canvas, "polyline", record_line)
    return lines, legends


def test_the_plotted_line_is_the_nan_skipping_mean_curve_against_curve_x(monkeypatch):
    """The values drawn: x = the result's curve_x (uneven here), y = the mean over samples of
    the curves skipping NaN (hand-computed); the legend's score is the mean of the per-sample
    values (not of the curve); the reference is dashed, the method solid."""
    curves = torch.tensor([[1.0, 0.6, math.nan, 0.0], [0.8, 0.2, 0.3, 0.4]], dtype=torch.double)
    x = torch.tensor([0.0, 0.1, 0.5, 1.0])
    mine = MetricResult(
        "deletion", torch.tensor([0.3, 0.4]), "lower", (0, 1), curves=curves, curve_x=x
    )
    ref = MetricResult(
        "deletion", torch.tensor([0.9, 0.5]), "lower", (0, 1), curves=curves.flip(0), curve_x=x
    )
    report = EvalReport({"mine": {"deletion": mine}, "random": {"deletion": ref}}, ("random",))
    lines, legends = _recorded(monkeypatch)
    plot_metric_curves(report, "deletion")
    (x0, y0, colour0, dash0), (x1, y1, _, dash1) = lines
    torch.testing.assert_close(x0, x.double())
    torch.testing.assert_close(y0, torch.tensor([0.9, 0.4, 0.3, 0.2], dtype=torch.double))
    torch.testing.assert_close(y1, y0)
    assert colour0 == PALETTE[0] and dash0 is None and dash1 == REFERENCE_STYLES[0][1]
    assert [(name, score) for name, score, _, _ in legends[0]] == [
        ("mine", "0.35"),
        ("random (ref)", "0.7"),
    ]


def test_bars_show_each_methods_mean_and_interval_and_curve_metrics_need_one_method(monkeypatch):
    """The bars' data: each method's mean, its bootstrap interval (low, high) and n; a metric
    with curves for any one method is a curve metric."""
    import saliencelab.viz.curves as curves_mod

    rows_seen: list = []
    bars = curves_mod._Canvas.bars

    def record(self, rows, ticks):
        rows_seen.extend(rows)
        bars(self, rows, ticks)

    monkeypatch.setattr(curves_mod._Canvas, "bars", record)
    report = flat_report()
    report.results["low"]["game"] = result(None, [0.1, 0.3, 0.2, 0.6])
    plot_metric_bars(report, "game")
    name, mean, lo, hi, n, _ = rows_seen[0]
    assert name == "low" and mean == pytest.approx(0.3) and n == 4
    assert (lo, hi) == report["low"]["game"].ci and lo < mean < hi
    assert rows_seen[2][0] == "random (ref)"
    mixed = EvalReport(
        {"a": {"game": result(None, [1.0])}, "b": {"deletion": result([0.5, 0.4], [0.4])}}
    )
    assert curve_metrics(mixed) == ["deletion"]


@pytest.mark.parametrize("size", [(300, 120), (0, 0), (760.5, 460), 760])
def test_a_chart_too_small_to_read_is_one_sentence(size):
    """(300, 120) drew every label over its neighbours; (0, 0) failed inside PIL (ValueError)."""
    with pytest.raises(sl.SaliencelabError, match="size must be"):
        plot_metric_curves(flat_report(), "deletion", size=size)
    with pytest.raises(sl.SaliencelabError, match="size must be"):
        plot_metric_bars(flat_report(), "game", size=size)
    assert plot_metric_curves(flat_report(), "deletion", size=(400, 260)).size == (400, 260)


def test_bars_into_a_folder_that_cannot_be_made_is_one_sentence(tmp_path):
    """save_metric_bars used to raise FileExistsError / NotADirectoryError with a traceback."""
    from saliencelab.viz.curves import save_metric_bars

    (tmp_path / "file").write_text("x")
    with pytest.raises(sl.SaliencelabError, match="Cannot create the folder"):
        save_metric_bars(flat_report(), tmp_path / "file" / "bars")
    paths = save_metric_bars(flat_report(), tmp_path / "bars")
    assert [p.name for p in paths] == ["deletion.png", "game.png"]
