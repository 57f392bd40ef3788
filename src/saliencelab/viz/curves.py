"""Charts of an evaluation report (`sl.evaluate`), drawn with PIL only.

- :func:`plot_metric_curves`: the mean curve of every method for one curve-based metric
  (deletion, insertion, ...), the reference maps dashed in grey, a legend with each method's
  score;
- :func:`plot_metric_bars`: mean ± bootstrap 95% CI per method for any metric;
- :func:`save_metric_curves`: one PNG per curve-based metric of a report (what
  `EvalReport.save_curves` and `saliencelab evaluate` write).

Lines are drawn at twice the size and downsampled, so they come out antialiased.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageDraw

from ..core.errors import SaliencelabError, closest
from ..core.files import make_folder
from .gallery import _BACKGROUND, _INK, _MUTED, _drawable, _fit, _font, _line_height
from .io import save_image

if TYPE_CHECKING:
    from ..metrics.base import MetricResult
    from ..metrics.evaluate import EvalReport

#: Method colours (a colour-blind-aware qualitative palette), in report order.
PALETTE = (
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (120, 80, 40),
    (150, 60, 200),
    (40, 40, 40),
    (180, 30, 60),
)
#: Reference maps: grey shades and dash patterns (on, off, ... in pixels at final size).
REFERENCE_STYLES = (
    ((105, 105, 110), (7.0, 4.0)),
    ((150, 150, 155), (2.0, 3.0)),
    ((80, 80, 85), (9.0, 3.0, 2.0, 3.0)),
)
_MIN_CURVES = (400, 260)  # the smallest curve chart whose labels do not collide
_SCALE = 2  # drawn at this factor, then downsampled (antialiasing)
_GRID = (232, 232, 236)
_AXIS = (90, 90, 98)

_DIRECTION = {
    "higher": "higher is better",
    "lower": "lower is better",
    "none": "no better direction",
}


# -- public API ------------------------------------------------------------------------------------


def curve_metrics(report: EvalReport) -> list[str]:
    """The metrics of `report` that carry curves (in report order)."""
    return [
        metric
        for metric in report.metrics
        if any(metric in per and per[metric].curves is not None for per in report.values())
    ]


def plot_metric_curves(
    report: EvalReport,
    metric: str,
    size: tuple[int, int] = (760, 460),
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Image.Image:
    """The mean curve over samples of every method for one curve-based metric.

    Each method's curve is `report[method][metric].curve` (NaN points skipped) against its
    `curve_x` (or 0..1 evenly); the report's reference maps are dashed and grey. The legend
    gives each method's score (the mean of its per-sample values) and the title the metric and
    its direction. `xlabel`/`ylabel` default to the metric class's `curve_labels` if it has
    them, else generic labels.

    Raises:
        SaliencelabError: `metric` is not in the report, or has no curves.
    """
    _check_size(size, _MIN_CURVES, "plot_metric_curves")
    results = _results_of(report, metric)
    curves = {m: r for m, r in results.items() if r.curves is not None and r.curves.numel()}
    if not curves:
        raise SaliencelabError(
            f"The metric {metric} has no curves (its score is not the area under a curve); draw "
            "it with plot_metric_bars(report, metric)."
        )
    lines: list[tuple[str, torch.Tensor, torch.Tensor, float, bool]] = []
    for method, r in curves.items():
        y = r.curve.double().cpu()
        x = _x_of(r, y.numel())
        lines.append((method, x, y, r.mean, method in report.references))
    first = next(iter(curves.values()))
    labels = _curve_labels(metric, xlabel, ylabel, lines)
    # samples with a curve (a point that is not NaN), per method: the mean is theirs
    counts = sorted({int(torch.isfinite(r.curves).any(dim=1).sum()) for r in curves.values()})

    xs = torch.cat([x for _, x, _, _, _ in lines])
    ys = torch.cat([y for _, _, y, _, _ in lines])
    x_ticks = _nice_ticks(*_finite_range(xs, (0.0, 1.0)))
    y_ticks = _nice_ticks(*_finite_range(ys, (0.0, 1.0)))
    x_names = None
    if _is_integer(xs):  # steps: whole-number ticks, named by the layers if the result has them
        names = _step_names(curves.values(), xs)
        x_ticks, x_names = _step_ticks(*_finite_range(xs, (0.0, 1.0)), names)
        if names is not None and xlabel is None:
            labels = (_step_axis_label(first), labels[1])

    legend = []
    method_colour = 0
    ref_style = 0
    for method, _, _, mean, is_ref in lines:
        if is_ref:
            colour, dash = REFERENCE_STYLES[ref_style % len(REFERENCE_STYLES)]
            ref_style += 1
            name = f"{method} (ref)"
        else:
            colour, dash = PALETTE[method_colour % len(PALETTE)], None
            method_colour += 1
            name = method
        legend.append((name, _fmt_score(mean), colour, dash))

    canvas = _Canvas(size, legend)
    canvas.title(f"{metric} ({_DIRECTION.get(first.direction, first.direction)})")
    n = counts[-1]
    over = f"{n} sample{'s' if n != 1 else ''}"
    if len(counts) > 1:  # methods whose maps left some samples without a curve
        over = f"{counts[0]}-{n} samples (those with a curve)"
    canvas.subtitle(f"mean curve over {over}; legend: score (mean)")
    canvas.axes(x_ticks, y_ticks, labels[0], labels[1], x_names=x_names)
    for (_, x, y, _, _), (_, _, colour, dash) in zip(lines, legend, strict=True):
        canvas.polyline(x, y, colour, width=2.0, dash=dash)
    canvas.legend()
    return canvas.finish()


def plot_metric_bars(
    report: EvalReport, metric: str, size: tuple[int, int] | None = None
) -> Image.Image:
    """Mean ± bootstrap 95% CI of one metric per method, as horizontal bars.

    References (`report.references`) are grey. The value axis always includes 0, where the bars
    start.

    Raises:
        SaliencelabError: `metric` is not in the report.
    """
    results = _results_of(report, metric)
    first = next(iter(results.values()))
    rows = []
    method_colour = 0
    for method, r in results.items():
        is_ref = method in report.references
        if is_ref:
            colour = REFERENCE_STYLES[0][0]
        else:
            colour = PALETTE[method_colour % len(PALETTE)]
            method_colour += 1
        lo, hi = r.ci
        rows.append((method + (" (ref)" if is_ref else ""), r.mean, lo, hi, r.n, colour))
    values = torch.tensor(
        [v for _, mean, lo, hi, _, _ in rows for v in (mean, lo, hi)] + [0.0], dtype=torch.double
    )
    ticks = _nice_ticks(*_finite_range(values, (0.0, 1.0)))
    size = (760, 110 + 34 * len(rows)) if size is None else size
    _check_size(size, (_MIN_CURVES[0], 90 + 20 * len(rows)), "plot_metric_bars")
    width, height = size
    canvas = _Canvas((width, height), [], bars=[r[0] for r in rows])
    canvas.title(f"{metric} ({_DIRECTION.get(first.direction, first.direction)})")
    canvas.subtitle("mean over samples with bootstrap 95% confidence interval")
    canvas.bars(rows, ticks)
    return canvas.finish()


def save_metric_curves(report: EvalReport, folder: str | Path) -> list[Path]:
    """One PNG per curve-based metric of `report`, `folder/<metric>.png`; returns the paths."""
    names = curve_metrics(report)
    if not names:
        return []
    folder = make_folder(folder, "folder")
    return [
        save_image(plot_metric_curves(report, metric), folder / f"{chart_stem(metric)}.png")
        for metric in names
    ]


def save_metric_bars(report: EvalReport, folder: str | Path) -> list[Path]:
    """One bar chart PNG per metric of `report`, `folder/<metric>.png`; returns the paths."""
    folder = make_folder(folder, "folder")
    return [
        save_image(plot_metric_bars(report, metric), folder / f"{chart_stem(metric)}.png")
        for metric in report.metrics
    ]


def _check_size(size: Any, least: tuple[int, int], what: str) -> None:
    """One sentence unless `size` is (width, height) of whole numbers at least `least` (smaller
    charts draw their labels over each other)."""
    ok = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    )
    if not ok or size[0] < least[0] or size[1] < least[1]:
        raise SaliencelabError(
            f"{what}: size must be (width, height) in pixels, at least {least[0]} x {least[1]} "
            f"for this chart (smaller ones overlap their labels), got {size!r}."
        )


# -- data helpers ----------------------------------------------------------------------------------


def _results_of(report: EvalReport, metric: str) -> dict[str, MetricResult]:
    results = {m: per[metric] for m, per in report.items() if metric in per}
    if not results:
        known = report.metrics
        raise SaliencelabError(
            f"The report has no metric {metric!r}.{closest(metric, known)} It has: "
            f"{', '.join(known) or 'none'}."
        )
    return results


def _x_of(r: MetricResult, k: int) -> torch.Tensor:
    if r.curve_x is not None and r.curve_x.numel() == k:
        return r.curve_x.double().cpu()
    return torch.linspace(0.0, 1.0, k, dtype=torch.double)


def _curve_labels(
    metric: str, xlabel: str | None, ylabel: str | None, lines: Sequence[tuple]
) -> tuple[str, str]:
    from ..metrics.base import metric_classes

    own = getattr(metric_classes().get(metric), "curve_labels", None)
    if own is not None:
        xlabel = xlabel or own[0]
        ylabel = ylabel or own[1]
    if xlabel is None:
        unit = all(float(x.min()) >= 0 and float(x.max()) <= 1 for _, x, _, _, _ in lines)
        xlabel = "fraction perturbed" if unit else "step"
    return xlabel, ylabel or "score (mean over samples)"


def _is_integer(x: torch.Tensor) -> bool:
    """Whether the finite values of `x` are whole numbers (steps; a 0..1 fraction has others)."""
    x = x[torch.isfinite(x)]
    return x.numel() > 0 and bool((x == x.round()).all())


def _step_names(results: Any, xs: torch.Tensor) -> list[str] | None:
    """The names of the steps 1..K when a result records them (`params["randomised"]`: the
    layers a randomisation metric re-initialised at each step) and its x axis is 1..K."""
    for r in results:
        names = r.params.get("randomised")
        if not isinstance(names, (list, tuple)) or not names:
            continue
        steps = torch.arange(1, len(names) + 1, dtype=torch.double)
        x = r.curve_x
        if x is not None and x.numel() == len(names) and torch.equal(x.double().cpu(), steps):
            return [str(n) for n in names]
    return None


def _step_ticks(
    lo: float, hi: float, names: Sequence[str] | None = None, most: int = 10
) -> tuple[list[float], list[str] | None]:
    """Whole-number ticks covering [lo, hi] (steps of 1, 2, 5, 10, ...; about `most` at most),
    and with `names` (the names of steps 1..K) each tick's name (a tick per step, thinned to
    `most` if there are more)."""
    if names is not None:
        k = len(names)
        every = max(1, math.ceil(k / most))
        steps = list(range(1, k + 1, every))
        steps[-1] = k  # always name the last step (the fully randomised model)
        return [float(t) for t in steps], [names[t - 1] for t in steps]
    start, stop = math.floor(lo), math.ceil(hi)
    stop = max(stop, start + 1)
    scale = 1
    while True:  # steps of 1, 2, 5 × 10^k: the first that needs at most `most` ticks
        for m in (1, 2, 5):
            step = m * scale
            first, last = start // step * step, -(-stop // step) * step
            if (last - first) // step + 1 <= most:
                return [float(t) for t in range(first, last + 1, step)], None
        scale *= 10


def _step_axis_label(r: MetricResult) -> str:
    if r.params.get("order") == "independent":
        return "randomised layer (one at a time)"
    return "randomised down to layer (cascading from the output)"


def _finite_range(v: torch.Tensor, default: tuple[float, float]) -> tuple[float, float]:
    v = v[torch.isfinite(v)]
    if not v.numel():
        return default
    return float(v.min()), float(v.max())


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 × 10^k steps) covering [lo, hi], about `n` of them."""
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo < 1e-12 * max(1.0, abs(lo), abs(hi)):
        pad = 0.5 if lo == 0 else abs(lo) * 0.1
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    power = 10.0 ** math.floor(math.log10(span / max(n - 1, 1)))
    best: tuple[float, float, float] | None = None  # (waste, step, start)
    for p in (power / 10, power, power * 10):
        for m in (1, 2, 2.5, 5):
            step = m * p
            start = math.floor(lo / step + 1e-9) * step
            stop = math.ceil(hi / step - 1e-9) * step
            count = round((stop - start) / step) + 1
            if not n - 1 <= count <= 2 * n - 2:
                continue
            waste = (stop - start) / span + 0.01 * abs(count - n)
            if best is None or waste < best[0]:
                best = (waste, step, start)
    if best is None:  # cannot happen for finite input; keep the plain range
        return [lo, hi]
    _, step, start = best
    stop = math.ceil(hi / step - 1e-9) * step
    return [start + i * step for i in range(round((stop - start) / step) + 1)]


def _fmt_tick(v: float, ticks: Sequence[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step * 10**decimals % 1 > 1e-6:
        decimals += 1
    if abs(v) < step * 1e-6:
        v = 0.0
    if max(abs(t) for t in ticks) >= 1e5 or (decimals > 4):
        return f"{v:.3g}"
    return f"{v:.{decimals}f}"


def _fmt_score(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.4g}"


def chart_stem(name: str) -> str:
    """A metric's chart file name without suffix: `curves/<stem>.png`, `bars/<stem>.png`."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "metric"


# -- drawing --------------------------------------------------------------------------------------


class _Canvas:
    """A chart drawn at `_SCALE` × its size: title, plot box with ticks, lines, legend."""

    def __init__(
        self,
        size: tuple[int, int],
        legend: list[tuple[str, str, tuple[int, int, int], tuple[float, ...] | None]],
        bars: list[str] | None = None,
    ) -> None:
        self.size = size
        s = _SCALE
        self.img = Image.new("RGB", (size[0] * s, size[1] * s), _BACKGROUND)
        self.draw = ImageDraw.Draw(self.img)
        self.f_title = _font(15 * s)
        self.f_text = _font(12 * s)
        self.f_small = _font(11 * s)
        self.entries = legend
        legend_w = 0
        if legend:
            widest = max(
                self.draw.textlength(_drawable(f"{name}  {score}", self.f_text), font=self.f_text)
                for name, score, _, _ in legend
            )
            legend_w = int(min(widest + 44 * s, size[0] * s * 0.42))
        left = 62 * s
        if bars:
            widest = max(self.draw.textlength(_drawable(b, self.f_text), self.f_text) for b in bars)
            left = int(min(widest + 16 * s, size[0] * s * 0.4))
        self.box = (
            left,
            54 * s,
            size[0] * s - 16 * s - legend_w,
            size[1] * s - 50 * s,
        )
        self.legend_x = self.box[2] + 14 * s
        self.x_range = (0.0, 1.0)
        self.y_range = (0.0, 1.0)

    # text
    def title(self, text: str) -> None:
        s = _SCALE
        text = _fit(self.draw, text, self.f_title, self.img.width - 24 * s)
        self.draw.text((12 * s, 8 * s), text, font=self.f_title, fill=_INK)

    def subtitle(self, text: str) -> None:
        s = _SCALE
        text = _fit(self.draw, text, self.f_small, self.img.width - 24 * s)
        y = 8 * s + _line_height(self.f_title) + 2 * s
        self.draw.text((12 * s, y), text, font=self.f_small, fill=_MUTED)

    # coordinates
    def px(self, x: float) -> float:
        x0, _, x1, _ = self.box
        lo, hi = self.x_range
        return x0 + (x - lo) / (hi - lo) * (x1 - x0)

    def py(self, y: float) -> float:
        _, y0, _, y1 = self.box
        lo, hi = self.y_range
        return y1 - (y - lo) / (hi - lo) * (y1 - y0)

    def axes(
        self,
        x_ticks: list[float],
        y_ticks: list[float],
        xlabel: str,
        ylabel: str,
        x_names: Sequence[str] | None = None,
    ) -> None:
        """Grid, ticks and axis labels; `x_names` label the x ticks instead of their values
        (turned upright, the plot made shorter for them, when they do not fit side by side)."""
        s = _SCALE
        d = self.draw
        x0, y0, x1, y1 = self.box
        self.x_range = _margin(x_ticks)
        self.y_range = _margin(y_ticks)
        lh = _line_height(self.f_small)
        x_text = (
            [_drawable(n, self.f_small) for n in x_names]
            if x_names is not None
            else [_fmt_tick(t, x_ticks) for t in x_ticks]
        )
        widths = [d.textlength(t, font=self.f_small) for t in x_text]
        room = min((b - a for a, b in zip(x_ticks[:-1], x_ticks[1:], strict=True)), default=1.0)
        room = room / (self.x_range[1] - self.x_range[0]) * (x1 - x0)
        upright = x_names is not None and max(widths, default=0) > room - 6 * s
        label_h = lh
        if upright:
            label_h = int(min(max(widths), self.img.height * 0.3))
            x_text = [_fit(d, t, self.f_small, label_h) for t in x_text]
            y1 -= label_h - lh
            self.box = (x0, y0, x1, y1)
        for t in y_ticks:
            y = self.py(t)
            d.line([(x0, y), (x1, y)], fill=_GRID, width=s)
            label = _fmt_tick(t, y_ticks)
            w = d.textlength(label, font=self.f_small)
            d.text((x0 - 6 * s - w, y - lh / 2), label, font=self.f_small, fill=_MUTED)
        for t, label in zip(x_ticks, x_text, strict=True):
            x = self.px(t)
            d.line([(x, y0), (x, y1)], fill=_GRID, width=s)
            d.line([(x, y1), (x, y1 + 4 * s)], fill=_AXIS, width=s)
            if upright:  # reads upwards, ending at the tick
                self._upright_text(label, x, y1 + 6 * s)
            else:
                w = d.textlength(label, font=self.f_small)
                d.text((x - w / 2, y1 + 6 * s), label, font=self.f_small, fill=_MUTED)
        d.rectangle((x0, y0, x1, y1), outline=_AXIS, width=s)
        xlabel = _fit(d, xlabel, self.f_text, x1 - x0)
        w = d.textlength(xlabel, font=self.f_text)
        d.text(((x0 + x1 - w) / 2, y1 + 8 * s + label_h), xlabel, font=self.f_text, fill=_INK)
        self._vertical_label(ylabel, (y0 + y1) / 2)

    def _upright_text(self, text: str, cx: float, top: float) -> None:
        """`text` turned a quarter left (reading upwards), centred on `cx`, its end at `top`."""
        w = int(self.draw.textlength(text, font=self.f_small)) + 2
        h = _line_height(self.f_small) + 2
        tile = Image.new("L", (w, h), 0)
        ImageDraw.Draw(tile).text((1, 1), text, font=self.f_small, fill=255)
        tile = tile.rotate(90, expand=True)
        ink = Image.new("RGB", tile.size, _MUTED)
        self.img.paste(ink, (int(cx - tile.width / 2), int(top)), tile)

    def _vertical_label(self, text: str, cy: float) -> None:
        s = _SCALE
        x0, y0, _, y1 = self.box
        text = _fit(self.draw, text, self.f_text, y1 - y0)
        w = int(self.draw.textlength(text, font=self.f_text)) + 2
        h = _line_height(self.f_text) + 2
        tile = Image.new("RGB", (w, h), _BACKGROUND)
        ImageDraw.Draw(tile).text((1, 1), text, font=self.f_text, fill=_INK)
        tile = tile.rotate(90, expand=True)
        self.img.paste(tile, (4 * s, int(cy - tile.height / 2)))

    def polyline(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        colour: tuple[int, int, int],
        width: float,
        dash: tuple[float, ...] | None,
    ) -> None:
        """The curve through (x, y), broken at NaN points, dashed with `dash` if given."""
        s = _SCALE
        ok = torch.isfinite(x) & torch.isfinite(y)
        runs: list[list[tuple[float, float]]] = [[]]
        for xi, yi, good in zip(x.tolist(), y.tolist(), ok.tolist(), strict=True):
            if good:
                runs[-1].append((self.px(xi), self.py(yi)))
            elif runs[-1]:
                runs.append([])
        w = max(1, round(width * s))
        for pts in runs:
            if len(pts) == 1:
                px, py = pts[0]
                r = w
                self.draw.ellipse((px - r, py - r, px + r, py + r), fill=colour)
            elif dash is None:
                self.draw.line(pts, fill=colour, width=w, joint="curve")
            else:
                _dashed(self.draw, pts, colour, w, [d * s for d in dash])

    def legend(self) -> None:
        s = _SCALE
        d = self.draw
        lh = _line_height(self.f_text)
        x = self.legend_x
        y = self.box[1]
        d.text((x, y), "method  score", font=self.f_small, fill=_MUTED)
        y += _line_height(self.f_small) + 6 * s
        room = self.img.width - x - 34 * s
        for name, score, colour, dash in self.entries:
            mid = y + lh / 2
            seg = [(x, mid), (x + 24 * s, mid)]
            if dash is None:
                d.line(seg, fill=colour, width=2 * s)
            else:
                _dashed(d, seg, colour, 2 * s, [v * s for v in dash])
            text_x = x + 30 * s
            score_w = d.textlength(score, font=self.f_text)
            label = _fit(d, name, self.f_text, max(room - score_w - 8 * s, 10 * s), middle=True)
            d.text((text_x, y), label, font=self.f_text, fill=_INK)
            d.text(
                (text_x + d.textlength(label, font=self.f_text) + 8 * s, y),
                score,
                font=self.f_text,
                fill=_MUTED,
            )
            y += lh + 6 * s

    def bars(self, rows: list[tuple[str, float, float, float, int, Any]], ticks: list[float]):
        s = _SCALE
        d = self.draw
        x0, y0, x1, y1 = self.box
        texts = [f"{mean:.3g} (n={n})" for _, mean, _, _, n, _ in rows]
        self.x_range, label_x = _bar_layout(
            [(mean, lo, hi) for _, mean, lo, hi, _, _ in rows],
            ticks,
            (x0, x1),
            [d.textlength(t, font=self.f_small) for t in texts],
            gap=6 * s,
        )
        lh = _line_height(self.f_small)
        for t in ticks:
            x = self.px(t)
            d.line([(x, y0), (x, y1)], fill=_GRID, width=s)
            label = _fmt_tick(t, ticks)
            w = d.textlength(label, font=self.f_small)
            d.text((x - w / 2, y1 + 6 * s), label, font=self.f_small, fill=_MUTED)
        zero = self.px(0.0)
        band = (y1 - y0) / max(len(rows), 1)
        lt = _line_height(self.f_text)
        for i, (name, mean, lo, hi, _, colour) in enumerate(rows):
            cy = y0 + band * (i + 0.5)
            label = _fit(d, name, self.f_text, x0 - 12 * s, middle=True)
            w = d.textlength(label, font=self.f_text)
            d.text((x0 - 8 * s - w, cy - lt / 2), label, font=self.f_text, fill=_INK)
            if not math.isfinite(mean):
                d.text((zero + 4 * s, cy - lh / 2), "n/a", font=self.f_small, fill=_MUTED)
                continue
            half = min(band * 0.32, 11 * s)
            xm = self.px(mean)
            d.rectangle(
                (min(zero, xm), cy - half, max(zero, xm), cy + half), fill=_tint(colour, 0.55)
            )
            d.line([(xm, cy - half), (xm, cy + half)], fill=colour, width=2 * s)
            if math.isfinite(lo) and math.isfinite(hi):
                a, b = self.px(lo), self.px(hi)
                d.line([(a, cy), (b, cy)], fill=_INK, width=s)
                for e in (a, b):
                    d.line([(e, cy - half / 2), (e, cy + half / 2)], fill=_INK, width=s)
            d.text((label_x[i], cy - lh / 2), texts[i], font=self.f_small, fill=_INK)
        d.line([(zero, y0), (zero, y1)], fill=_AXIS, width=s)
        d.rectangle((x0, y0, x1, y1), outline=_AXIS, width=s)

    def finish(self) -> Image.Image:
        return self.img.resize(self.size, Image.Resampling.LANCZOS)


def _bar_layout(
    rows: Sequence[tuple[float, float, float]],
    ticks: Sequence[float],
    frame: tuple[float, float],
    widths: Sequence[float],
    gap: float,
    keep: float = 0.5,
) -> tuple[tuple[float, float], list[float | None]]:
    """The bar chart's value range and the x (pixels) where each row's value label starts.

    `rows` are (mean, CI low, CI high), `frame` the plot's left and right edge in pixels,
    `widths` the labels' widths in pixels. A label goes right of everything its row draws (the
    bar from 0, the mean and the CI whisker with its caps), `gap` pixels on: the value range
    (the ticks' `_margin`) is widened on the right until every label fits there, the ticks
    keeping at least `keep` of the width. A label that still does not fit goes left of its row
    when there is room, else right of it all the same (past the frame, never over the whisker).
    None for a row whose mean is not finite (drawn as "n/a").
    """
    lo, hi = _margin(ticks)
    left, right = frame
    width = right - left
    pad = gap / 3  # room between a label and the frame

    def ends(mean: float, low: float, high: float) -> tuple[float, float]:
        whisker = (low, high) if math.isfinite(low) and math.isfinite(high) else (mean, mean)
        return min(mean, 0.0, whisker[0]), max(mean, 0.0, whisker[1])

    top = hi
    widest = lo + (hi - lo) / keep
    for (mean, low, high), w in zip(rows, widths, strict=True):
        if not math.isfinite(mean):
            continue
        share = (width - gap - w - pad) / width  # where the row may end, as a share of the width
        if share <= 0:
            continue
        end = ends(mean, low, high)[1]
        top = max(top, min(lo + (end - lo) / share, widest))
    span = top - lo

    def px(v: float) -> float:
        return left + (v - lo) / span * width

    xs: list[float | None] = []
    for (mean, low, high), w in zip(rows, widths, strict=True):
        if not math.isfinite(mean):
            xs.append(None)
            continue
        start, end = ends(mean, low, high)
        x = px(end) + gap
        if x + w > right - pad and px(start) - gap - w >= left + pad:
            x = px(start) - gap - w
        xs.append(x)
    return (lo, top), xs


def _margin(ticks: Sequence[float], share: float = 0.03) -> tuple[float, float]:
    """The axis range: the ticks' span and a little room, so lines at the ends clear the frame
    (half a unit either side of a single tick)."""
    pad = (ticks[-1] - ticks[0]) * share or 0.5
    return ticks[0] - pad, ticks[-1] + pad


def _tint(colour: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """`colour` mixed with white (`amount` = share of white)."""
    return tuple(round(c + (255 - c) * amount) for c in colour)  # type: ignore[return-value]


def _dashed(
    draw: ImageDraw.ImageDraw,
    pts: Sequence[tuple[float, float]],
    colour: tuple[int, int, int],
    width: int,
    pattern: Sequence[float],
) -> None:
    """A dashed polyline: the pattern (on, off, on, off, ...) runs on across the vertices."""
    index, left, on = 0, pattern[0], True
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:], strict=True):
        length = math.hypot(bx - ax, by - ay)
        pos = 0.0
        while pos < length:
            step = min(left, length - pos)
            if on:
                t0, t1 = pos / length, (pos + step) / length
                draw.line(
                    [
                        (ax + (bx - ax) * t0, ay + (by - ay) * t0),
                        (ax + (bx - ax) * t1, ay + (by - ay) * t1),
                    ],
                    fill=colour,
                    width=width,
                )
            pos += step
            left -= step
            if left <= 1e-9:
                index = (index + 1) % len(pattern)
                left, on = pattern[index], index % 2 == 0
