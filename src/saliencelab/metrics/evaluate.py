"""`sl.evaluate`: score several methods' maps with several metrics; `EvalReport` holds the answer.

>>> ex = sl.explain(model, x, methods=["gradcam", "saliency"])
>>> rep = sl.evaluate(model, x, ex, metrics=["deletion", "insertion", "pointing_game"], masks=m)
>>> rep.table()                         # method, metric, mean, 95% CI, direction
>>> rep["gradcam"]["deletion"].values   # per-sample tensor
>>> rep.curves["gradcam"]["deletion"]   # (N, K) the curves behind a curve-based score

Every report also scores three reference maps (random, centred Gaussian, Sobel edges) unless
`references=False`, so a reader sees whether a method beats trivial baselines. They are scored on
the class the maps explain (`target=`, else the class their Attributions record), not on the
predicted class; `report.params["targets"]` records the class each method was scored on.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.context import autograd_allowed
from ..core.engine import Engine
from ..core.errors import SaliencelabError, closest
from ..core.explain import input_errors_explained
from ..core.files import write_whole
from ..core.registry import get_method
from ..core.registry import methods as registered_methods
from ..core.requests import named_requests
from ..core.result import Attribution, Explanation
from ..core.targets import TargetSpec
from ..methods.reference import REFERENCE_METHODS
from ..models.model import Model, as_model, as_model_input
from ..text.model import TextModel
from .base import (
    ONE_SCORE,
    EmptyMaskWarning,
    EvalBatch,
    Explainer,
    Metric,
    MetricResult,
    check_class_target,
    check_model_kind,
    check_text_masks,
    check_text_parts,
    checked_maps,
    get_metric,
    make_batch,
    masks_for,
    runs_model,
    text_inputs,
    text_parts,
    warn_empty_masks,
)

MetricsArg = str | Sequence[str] | Mapping[str, Mapping[str, Any]]
MapsArg = Explanation | Mapping[str, Attribution | torch.Tensor]
ExplainerArg = str | Explainer | Mapping[str, str | Explainer] | None


def format_value(v: float) -> str:
    """A mean or score as printed: 4 significant digits, "n/a" where it is undefined (NaN)."""
    return f"{v:.4g}" if math.isfinite(v) else "n/a"


def format_ci(low: float, high: float) -> str:
    """A confidence interval as printed: "[low, high]", "n/a" where it is undefined (one sample)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"[{low:.4g}, {high:.4g}]"


class _ByMetric(dict):
    """Results (or curves) by name; an unknown name is one sentence with the closest names (a
    SaliencelabError, which is a ValueError, not a KeyError; `in` and `.get` work as for a
    dict)."""

    def __init__(self, items: Mapping[str, Any], owner: str, what: str = "metric") -> None:
        super().__init__(items)
        self.owner, self.what = owner, what

    def __missing__(self, key: str) -> Any:
        has = ", ".join(self) or "none"
        raise SaliencelabError(
            f"{self.owner} has no {self.what} {key!r}; it has {has}.{closest(str(key), self)}"
        )


@dataclass
class EvalReport(Mapping[str, dict[str, MetricResult]]):
    """Results per method and metric: `report[method][metric]` is a :class:`MetricResult`."""

    results: dict[str, dict[str, MetricResult]]
    references: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.results = {m: _ByMetric(per, f"The method {m!r}") for m, per in self.results.items()}

    def __getitem__(self, method: str) -> dict[str, MetricResult]:
        try:
            return self.results[method]
        except KeyError:
            raise SaliencelabError(
                f"This report has no method {method!r}; it has {', '.join(self.results)}."
                f"{closest(method, self.results)}"
            ) from None

    def __contains__(self, method: object) -> bool:
        return method in self.results

    def get(self, method: str, default: Any = None) -> Any:  # (Mapping's catches KeyError only)
        return self.results.get(method, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def methods(self) -> list[str]:
        return list(self.results)

    @property
    def metrics(self) -> list[str]:
        seen: dict[str, None] = {}
        for per in self.results.values():
            seen.update(dict.fromkeys(per))
        return list(seen)

    @property
    def curves(self) -> dict[str, dict[str, torch.Tensor]]:
        """`curves[method][metric]`: (N, K) per-sample curves of the curve-based metrics."""
        by_method = {
            m: _ByMetric(
                {k: r.curves for k, r in per.items() if r.curves is not None},
                f"The method {m!r}",
                "curve-based metric",
            )
            for m, per in self.results.items()
        }
        return _ByMetric(by_method, "This report", "method")

    def table(self) -> list[dict[str, Any]]:
        """One row per (method, metric): mean, bootstrap 95% CI, n, direction, reference."""
        rows = []
        for method, per in self.results.items():
            for result in per.values():
                rows.append(
                    {"method": method, **result.row(), "reference": method in self.references}
                )
        return rows

    def best(self, metric: str, include_references: bool = False) -> str:
        """The method with the best mean on `metric` (by its direction); of methods tied on
        it, the first in the report's order (the explanation's)."""
        if metric not in self.metrics:
            raise SaliencelabError(
                f"This report has no metric {metric!r}; it scored {', '.join(self.metrics)}."
                f"{closest(metric, self.metrics)}"
            )
        rows = [
            (r[metric].mean, m)
            for m, r in self.results.items()
            if metric in r and (include_references or m not in self.references)
        ]
        rows = [(v, m) for v, m in rows if not math.isnan(v)]
        if not rows:
            raise SaliencelabError(f"No method has a finite score for {metric!r}.")
        direction = next(r[metric].direction for r in self.results.values() if metric in r)
        if direction == "none":
            raise SaliencelabError(f"{metric} has no better direction; there is no best method.")
        pick = max if direction == "higher" else min
        top = pick(v for v, _ in rows)
        return next(m for v, m in rows if v == top)  # a tie: the first in the report's order

    def __str__(self) -> str:
        head = ("method", "metric", "mean", "95% CI", "n", "better")
        lines = [head]
        for r in self.table():
            name = r["method"] + (" (ref)" if r["reference"] else "")
            ci = format_ci(r["ci_low"], r["ci_high"])
            mean = format_value(r["mean"])
            lines.append((name, r["metric"], mean, ci, str(r["n"]), r["direction"]))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
        )

    def csv_text(self) -> str:
        """The table (one row per method and metric) as CSV text."""
        rows = self.table()
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue()

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as CSV, whole (`core.files.write_whole`: never half a file)."""
        return _write_text(path, self.csv_text(), "the metrics table")

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain Python: the report's params (e.g. "targets", the class each
        method's maps were scored on), table rows plus per-sample values, params and curves."""
        out: dict[str, Any] = {
            "params": {str(k): plain(v) for k, v in self.params.items()},
            "references": list(self.references),
            "results": {},
        }
        for method, per in self.results.items():
            out["results"][method] = {
                name: {
                    **r.row(),
                    "values": [_num(v) for v in r.values.tolist()],
                    "value_range": list(r.value_range),
                    "params": {k: plain(v) for k, v in r.params.items()},
                    "passes_per_sample": r.passes,
                    "forwards_per_sample": r.forwards,
                    "seconds": r.seconds,
                    **(
                        {"curve": [_num(v) for v in r.curve.tolist()]}
                        if r.curves is not None
                        else {}
                    ),
                    **({"curve_x": r.curve_x.tolist()} if r.curve_x is not None else {}),
                }
                for name, r in per.items()
            }
        return out

    def to_json(self, path: str | Path) -> Path:
        """Write `to_dict()` as JSON (NaN as null), whole, as `to_csv` writes the table."""
        text = json.dumps(json_safe(self.to_dict()), indent=1, allow_nan=False)
        return _write_text(path, text, "the metrics")

    def save_curves(self, folder: str | Path) -> list[Path]:
        """One PNG per curve-based metric: the mean curve of every method, references dashed."""
        from ..viz.curves import save_metric_curves

        return save_metric_curves(self, folder)


def _write_text(path: str | Path, text: str, what: str) -> Path:
    """Write `text` (UTF-8) to `path` whole (`core.files.write_whole`): a folder in its place or
    a file in place of a parent folder is one sentence naming `what` it is."""
    data = text.encode("utf-8")
    return write_whole(Path(path), lambda f: f.write(data), what)


def json_safe(v: Any) -> Any:
    """`v` with NaN and infinities as None, in nested dicts, lists and tuples (JSON has no NaN:
    a strict parser refuses the `NaN` literal Python would write)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: json_safe(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(u) for u in v]
    return v


def _num(v: float) -> float | None:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def plain(v: Any) -> Any:
    """`v` as JSON-able Python: numbers, strings, lists and dicts as they are, anything else
    (a tensor option, a function) as its repr."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [plain(u) for u in v]
    if isinstance(v, Mapping):
        return {str(k): plain(u) for k, u in v.items()}
    return repr(v)


def metric_requests(metrics: MetricsArg, options: dict[str, Any]) -> list[Metric]:
    """Metric objects for the names asked; keyword options go to every metric that takes them."""
    per_metric = named_requests(metrics, "metric", "metrics=['deletion', 'insertion']")
    out: list[Metric] = []
    used: set[str] = set()
    for name, own in per_metric.items():
        cls = get_metric(name)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        shared = {k: v for k, v in options.items() if k in accepted}
        used.update(shared)
        out.append(cls(**{**shared, **own}))  # an option of its own it lacks: one sentence
    unused = set(options) - used
    if unused:
        key = sorted(unused)[0]
        every = {k for m in out for k in m.params}
        raise SaliencelabError(
            f"No requested metric takes the option {key!r} (requested: "
            f"{', '.join(m.name for m in out)}).{closest(key, every)} Drop it, or request a "
            "metric that takes it."
        )
    return out


def _maps_of(
    ex: MapsArg,
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, Attribution | None]]:
    """method → (maps, full input-space attributions or None, the Attribution if any)."""
    if not isinstance(ex, Mapping):
        raise SaliencelabError(
            f"Give an sl.Explanation or a dict {{method: maps}}, not {type(ex).__name__}."
        )
    out = {}
    for name, a in ex.items():
        if isinstance(a, Attribution):
            out[name] = (a.maps, a.attributions, a)
        elif isinstance(a, torch.Tensor):
            out[name] = (a, None, None)
        else:
            raise SaliencelabError(
                f"The maps of {name!r} are a {type(a).__name__}; give a tensor or an Attribution."
            )
    return out


def check_chunk_size(chunk_size: object) -> None:
    """One sentence unless `chunk_size` is None or a positive int (as `sl.explain` checks it):
    0 or -1 would otherwise pass to the engine, which reads them as 1 row per chunk."""
    ok = isinstance(chunk_size, numbers.Integral) and not isinstance(chunk_size, bool)
    if chunk_size is not None and not (ok and chunk_size > 0):
        raise SaliencelabError(
            f"chunk_size must be None or a positive int, not {type(chunk_size).__name__} "
            f"{chunk_size!r}; pass e.g. chunk_size=16."
        )


def _reference_names(references: bool | str | Sequence[str] | None) -> tuple[str, ...]:
    """The reference maps asked for: all (True), none (False, None, empty), or the named ones
    (a name, a comma-separated string or a list of names), each checked."""
    if references is True:
        return REFERENCE_METHODS
    if references is False or references is None:
        return ()
    if isinstance(references, str):
        names = [n.strip() for n in references.split(",") if n.strip()]
    elif isinstance(references, Sequence) and all(isinstance(n, str) for n in references):
        names = list(references)
    else:
        raise SaliencelabError(
            f"references must be True, False, a reference name or a list of them "
            f"({', '.join(REFERENCE_METHODS)}), not {references!r}."
        )
    for name in names:
        if name not in REFERENCE_METHODS:
            raise SaliencelabError(
                f"No reference map {name!r}.{closest(name, REFERENCE_METHODS)} They are: "
                f"{', '.join(REFERENCE_METHODS)}."
            )
    return tuple(dict.fromkeys(names))


def _given_explainers(
    explainer: ExplainerArg, names: list[str], chunk_size: int | None
) -> dict[str, Explainer]:
    """`sl.evaluate`'s `explainer=` as one Explainer per map name: one for every map, or a dict
    by map name (each a registered method's name or an Explainer; an unknown name is one
    sentence here, before any model work)."""
    if explainer is None:
        return {}
    given = explainer if isinstance(explainer, Mapping) else dict.fromkeys(names, explainer)
    unknown = [n for n in given if n not in names]
    if unknown:
        raise SaliencelabError(
            f"explainer= names {unknown[0]!r}, which the explanation does not hold (it holds "
            f"{', '.join(names)})."
        )
    out = {}
    for name, e in given.items():
        if not isinstance(e, (str, Explainer)):
            raise SaliencelabError(
                f"explainer= takes a method name or sl.metrics.Explainer(name, options), not "
                f"{type(e).__name__} (for {name!r}); register your own method with @sl.register."
            )
        out[name] = Explainer(e, chunk_size=chunk_size) if isinstance(e, str) else e
    return out


def _highest_class(target: TargetSpec, entries: dict[str, Any]) -> int | None:
    """The largest class index the maps explain, where it is known before any model work: the
    `target` given as an index, a list or a tensor of them, else (no target) the classes the
    explanations record; None otherwise (a class name, a callable, predicted classes)."""
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        return int(target)
    if (
        isinstance(target, (list, tuple))
        and target
        and all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target)
    ):
        return max(int(t) for t in target)
    if isinstance(target, torch.Tensor) and target.numel() and not target.is_floating_point():
        return int(target.max())
    if target is None:
        known = [int(a.target.max()) for _, _, a in entries.values() if a is not None]
        return max(known) if known and max(known) >= 0 else None
    return None


def _check_request(
    requested: list[Metric],
    entries: dict[str, Any],
    x: torch.Tensor,
    masks: object,
    model: Model,
    explainers: Mapping[str, Explainer],
    target: TargetSpec = None,
    text: tuple[list[str], list[int]] | None = None,
) -> torch.Tensor | None:
    """What the metrics need that the call lacks, before any model work: maps that fit the
    inputs (checked first, so wrong maps are not blamed on right masks), masks shaped like the
    maps, a registered method (or a given explainer) to recompute for every method the
    explanation-recomputing metrics score, and options that fit the model
    (`Metric.check_model`). `text`: the texts and their word counts, for a text model's maps
    (B, W) and masks, checked on each text's own words. Returns the masks as a tensor where a
    metric needs them."""
    registered = {spec.name for spec in registered_methods()} | set(explainers)
    names = list(entries)
    checked = []
    for name, (maps, _, _) in entries.items():
        try:
            checked.append(checked_maps(maps, x, model, words=text[1] if text else None))
        except SaliencelabError as e:
            raise SaliencelabError(f"{name}: {e}") from None
    mask_tensor = None
    if masks is not None and any("masks" in metric.needs for metric in requested):
        for maps in checked:
            mask_tensor = masks_for(masks, maps)
        if text is not None:
            check_text_masks(mask_tensor, *text)
    # Maps that explain no class (a channel, neuron or function target: class -1), found once.
    classless = [
        name
        for name, (_, _, a) in entries.items()
        if target is None and a is not None and bool((a.target < 0).any())
    ]
    highest = _highest_class(target, entries)
    for metric in requested:
        check_model_kind(metric, model)
        metric.check_model(model)
        if highest is not None:
            metric.check_classes(highest)
        if callable(target) and not isinstance(target, torch.Tensor):
            check_class_target(metric)  # a channel, neuron or function target
        for name in classless:
            check_class_target(metric, f"the maps of {name!r}")
        if "masks" in metric.needs and masks is None:
            raise SaliencelabError(
                f"The metric {metric.name} needs masks: pass masks=... ((B, H, W) bool "
                "ground-truth masks)."
            )
        if "explainer" in metric.needs:
            for name in names:
                if name not in registered:
                    raise SaliencelabError(
                        f"The metric {metric.name} recomputes explanations, but {name!r} is not "
                        "a registered method; give maps from sl.explain, name the method that "
                        f"recomputes them (explainer={{{name!r}: 'saliency'}}) or drop the metric."
                    )
        # options that do not fit these inputs, maps or masks (a patch or top-k larger than
        # the image, an SSIM window larger than the maps, masks that are not mosaic quadrants):
        # refused now, not after the metrics before this one have run
        own_masks = mask_tensor if "masks" in metric.needs else None
        for maps in {tuple(m.shape): m for m in checked}.values():
            if text is not None:  # each text on its own words, a failure naming the text
                check_text_parts(metric, x, maps, own_masks, *text)
            else:
                metric.check_inputs(x, maps, own_masks)
    return mask_tensor


def _explained_class(
    entries: dict[str, Any], requested: list[Metric], unrecorded: bool
) -> torch.Tensor | None:
    """The class per sample the maps in `entries` explain, for the maps that record none (the
    reference maps and plain tensors, when `unrecorded`): that of the first Attribution that
    records a class for every sample; None when none does (then the predicted class).

    Should the Attributions explain different classes, it is still the first one's, and a
    warning says so where a requested metric reads the class.
    """
    known = [
        (name, a.target.detach().cpu())
        for name, (_, _, a) in entries.items()
        if a is not None and bool((a.target >= 0).all())
    ]
    if not known:
        return None
    first, classes = known[0]
    other = next((name for name, t in known[1:] if not torch.equal(t, classes)), None)
    if other is not None and unrecorded and any(runs_model(m) for m in requested):
        warnings.warn(
            f"The maps of {first!r} and {other!r} explain different classes; the reference "
            f"maps and maps given as tensors are scored on the classes of {first!r}. Pass "
            "target=... to score every map on one class, or evaluate each class on its own.",
            stacklevel=4,  # the caller of sl.evaluate (through its autograd_allowed wrapper)
        )
    return classes


def _warn_other_classes(
    target: TargetSpec, entries: dict[str, Any], b: int, labels: Sequence[str] | None
) -> None:
    """Warn when `target` (class indices, or a class name of `labels`) is not the class some
    Attribution in `entries` explains: its maps are then scored on a class they do not explain
    (e.g. maps of classes 0, 3, 1 with target=1: deletion 0.704 where 0.431 on their own
    classes), which may be meant."""
    if isinstance(target, str) and labels is not None and target in labels:
        target = list(labels).index(target)
    if isinstance(target, (bool, str)) or callable(target) and not isinstance(target, torch.Tensor):
        return
    try:
        given = torch.as_tensor(target).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        return
    if given.is_floating_point() or given.dim() > 1 or given.numel() not in (1, b):
        return
    given = given.reshape(-1).expand(b)
    for name, (_, _, a) in entries.items():
        if a is None or not bool((a.target >= 0).all()):
            continue
        explained = a.target.detach().cpu()
        if not torch.equal(explained, given):
            one = given.unique().numel() == 1
            on = f"class {int(given[0])}" if one else f"the classes {given.tolist()}"
            warnings.warn(
                f"The maps of {name!r} explain the classes {explained.tolist()}, and target= "
                f"scores them on {on}; leave target out to score each map on the class it "
                "explains.",
                stacklevel=4,  # the caller of sl.evaluate (through its autograd_allowed wrapper)
            )
            return


def _texts_of(
    model: TextModel, x: torch.Tensor, texts: object, entries: dict[str, Any]
) -> tuple[list[str], list[int]]:
    """(texts, word count per text) of a text model's inputs `texts` (as sl.explain takes
    them) or engine inputs `x`; each Attribution in `entries` must explain those texts (else
    one sentence), and engine inputs take the texts of one that does."""
    recorded = [
        (name, list(a.extras["texts"]))
        for name, (_, _, a) in entries.items()
        if a is not None and a.extras.get("texts") is not None
    ]
    if texts is None:  # engine inputs: the texts an Attribution records, if they make them
        own = next((t for _, t in recorded if _encodes_to(model, t, x)), None)
        texts = own if own is not None else x
    _, words_texts, words = text_inputs(model, texts)
    assert words_texts is not None and words is not None  # (inputs were given)
    for name, other in recorded:
        if other != words_texts:
            raise SaliencelabError(
                f"{name}: these maps explain other texts ({other[0]!r}, ...) than the "
                f"{len(words_texts)} texts passed ({words_texts[0]!r}, ...); pass the texts "
                "they explain, or explain these texts."
            )
    return words_texts, words


def _encodes_to(model: TextModel, texts: list[str], x: torch.Tensor) -> bool:
    """Whether `texts` are the texts of engine inputs `x` (`model.preprocess(texts)`)."""
    try:
        mine = model.embed(model.encode(texts))
    except SaliencelabError:
        return False
    return mine.shape == x.shape and torch.equal(mine.to(x), x)


def _explainer(name: str, a: Attribution | None, chunk_size: int | None) -> Explainer | None:
    if name not in {spec.name for spec in registered_methods()}:
        return None
    options = {}
    if a is not None:  # its options, tensors (feature masks, baselines) included
        accepted = get_method(name).options
        given = {**a.params, **a.tensor_params}
        options = {k: v for k, v in given.items() if k in accepted}
    return Explainer(name, options, chunk_size=chunk_size)


@autograd_allowed()  # also inside a caller's no_grad / inference_mode
def evaluate(
    model: Model | nn.Module,
    x: torch.Tensor,
    ex: MapsArg,
    metrics: MetricsArg = ("deletion", "insertion"),
    masks: torch.Tensor | None = None,
    target: TargetSpec = None,
    *,
    references: bool | str | Sequence[str] = True,
    chunk_size: int | None = None,
    explainer: ExplainerArg = None,
    **options: Any,
) -> EvalReport:
    """Score the maps of each method in `ex` with each metric.

    Args:
        model: the model the maps explain (`sl.Model` or `nn.Module`).
        x: the (B, C, H, W) inputs the maps are for.
        ex: an `sl.Explanation`, or a dict `{method: maps (B, H, W) or Attribution}`.
        metrics: a name, a list or comma-separated string of names, or `{name: {option: v}}`.
        masks: (B, H, W) bool ground-truth masks, for localisation metrics.
        target: the class each map explains; default: the target stored with each
            Attribution, else the predicted class. The reference maps and maps given as
            tensors are scored on `target`, else on the class the Attributions in `ex` record
            (of the first, with a warning, should they differ), else the predicted class.
        references: score the random, centred-Gaussian and Sobel reference maps too (True), or
            only the named ones (a name, a comma-separated string or a list), or none (False).
        chunk_size: rows per chunk of the metrics' passes and of the explanations the
            robustness and randomisation metrics recompute (default: measured).
        explainer: what recomputes the maps for those metrics: a registered method's name or
            `sl.metrics.Explainer(name, options)` for every map in `ex` (not the references),
            or a dict by map name
            (e.g. `{"mine": Explainer("smoothgrad", {"n_samples": 8})}`); default: each map's
            own method (its name in `ex`, with the options its Attribution records).
        **options: options given to every requested metric that takes them (e.g. `steps=50`).

    The request (metric names and option values, reference names, masks for the metrics that
    need them, registered methods for the metrics that recompute explanations) is checked
    before the model runs or any reference map is computed.
    """
    check_chunk_size(chunk_size)
    model = as_model(model)
    texts = None
    if isinstance(model, TextModel) and not isinstance(x, torch.Tensor):
        texts, x = x, model.embed(model.encode(x))  # the texts, as sl.explain takes them
    if not isinstance(x, torch.Tensor):
        raise SaliencelabError(f"Give the inputs as a tensor, not {type(x).__name__}.")
    if not x.dim() or x.shape[0] == 0:
        raise SaliencelabError(f"The batch is empty (inputs of shape {tuple(x.shape)}).")
    x = as_model_input(model, x)
    requested = metric_requests(metrics, options)  # each metric checks its options when built
    refs = _reference_names(references)
    if refs and x.dim() != 4:  # the reference maps are images
        if references is not True and isinstance(model, TextModel):
            raise SaliencelabError(
                "Reference maps are images (B, H, W); texts get none, so pass references=False."
            )
        if references is not True:
            raise SaliencelabError(
                f"Reference maps are for images (B, C, H, W), not inputs of shape "
                f"{tuple(x.shape)}; pass references=False."
            )
        refs = ()  # the default: none for tabular inputs
    entries = _maps_of(ex)
    if not entries:
        raise SaliencelabError(
            "The explanation holds no maps to evaluate; give an sl.explain result or a dict "
            "of at least one (B, H, W) map, e.g. {'mine': maps}."
        )
    # A map of the user's under a reference's name would be scored (and skipped by `best`) as
    # that reference; the reference's own map from sl.explain is fine.
    clash = [n for n in refs if n in entries and getattr(entries[n][2], "method", None) != n]
    if clash:
        others = [n for n in refs if n not in clash]
        raise SaliencelabError(
            f"The map {clash[0]!r} has the name of a reference map; rename it, or leave that "
            f"reference out (references={others!r})."
        )
    text = None
    if isinstance(model, TextModel):  # each text is scored on its own words
        text = _texts_of(model, x, texts, entries)
    given = _given_explainers(explainer, list(entries), chunk_size)
    checked_masks = _check_request(requested, entries, x, masks, model, given, target, text)
    if checked_masks is not None:  # a metric needs them: one warning for the call
        warn_empty_masks(checked_masks, stacklevel=3)
    engine = Engine(model, chunk_size=chunk_size)
    probability = [m.name for m in requested if m.reads_probabilities]
    if probability:  # a one-score model: refused before any metric runs (one row's forward)
        with input_errors_explained(model, x):
            if engine.logits(x[:1]).shape[-1] == 1:
                raise SaliencelabError(f"{probability[0]}: {ONE_SCORE}")

    # The class of the maps that record none (references, tensors): the one given, else the
    # one the Attributions record (found before the references' own, predicted, join them).
    default_target = target
    if default_target is None:
        unrecorded = bool(refs) or any(a is None for _, _, a in entries.values())
        default_target = _explained_class(entries, requested, unrecorded)
    elif any(runs_model(m) for m in requested):
        _warn_other_classes(target, entries, x.shape[0], model.labels)

    added: set[str] = set()
    if refs:
        from ..core.explain import explain

        ref_ex = explain(model, x, methods=list(refs))
        added = {n for n in ref_ex if n not in entries}
        entries.update({n: e for n, e in _maps_of(ref_ex).items() if n in added})

    results: dict[str, dict[str, MetricResult]] = {}
    targets: dict[str, list[int]] = {}
    for name, (maps, attributions, a) in entries.items():
        method_target = default_target
        if target is None and a is not None and (name not in added or default_target is None):
            # the class it explains, or -1 for a channel, neuron or function target (scored
            # only by the metrics that read the maps alone: `_check_request`); a reference
            # map records the predicted class, used only where no map records a class
            method_target = a.target
        full = attributions if attributions is not None and attributions.shape == x.shape else None
        with input_errors_explained(model, x):  # e.g. the forward finding the predicted class
            batch: EvalBatch = make_batch(
                maps,
                x=x,
                model=model,
                target=method_target,
                masks=masks,
                attributions=full,
                explainer=given.get(name) or _explainer(name, a, chunk_size),
                engine=engine,
            )
        if default_target is None and bool((batch.target >= 0).all()):
            default_target = batch.target  # resolve the predicted class once
        targets[name] = [int(t) for t in batch.target.tolist()]
        per: dict[str, MetricResult] = {}
        parts = text_parts(batch, text[1]) if text is not None else [batch]
        for metric in requested:
            metric.reset()
            with warnings.catch_warnings():  # warned once above, not per method and metric
                warnings.simplefilter("ignore", EmptyMaskWarning)
                for part in parts:
                    metric.update(batch=part)
            per[metric.name] = metric.compute()
        results[name] = per
    params = {"metrics": [m.name for m in requested], "targets": targets}
    return EvalReport(results, references=refs, params=params)
