"""The metric contract: `Metric` (update / compute / reset), `EvalBatch` and `MetricResult`.

A metric scores the maps of one explanation method, per sample. It reads what it needs from an
:class:`EvalBatch` — the model, the inputs, the maps, the targets, ground-truth masks, or an
`explainer` that recomputes maps for new inputs or a changed model — and returns one value per
sample (plus, for curve-based scores, the curve behind each value).

Like torchmetrics, a metric object accumulates over a dataset loop::

    m = sl.metrics.get("deletion")(steps=50)
    for x, maps in loader:
        m.update(model=model, x=x, maps=maps)
    result = m.compute()          # MetricResult: values, mean, ci, direction, curves

`compute()` concatenates what `update` saw; `reset()` forgets it. The per-sample values of
several processes can be merged with `MetricResult.merge`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
from torch import nn

from ..core.batching import batch_rows
from ..core.context import autograd_allowed
from ..core.engine import Engine, all_finite
from ..core.errors import SaliencelabError, closest
from ..core.explain import input_errors_explained
from ..core.layout import channels_last_known
from ..core.registry import get_method, same_definition
from ..core.result import Explanation
from ..core.targets import (
    Target,
    TargetSpec,
    check_class_indices,
    check_tensor_target,
    class_bounds,
    class_scores,
    resolve_target,
)
from ..models.model import Model, as_model, as_model_input
from ..text.inputs import read_flags
from ..text.model import TextModel  # (imports no transformers)
from .stats import bootstrap_ci

Direction = Literal["higher", "lower", "none"]
Needs = Literal["model", "masks", "explainer", "attributions"]


class Explainer:
    """Recomputes one method's explanation for new inputs or a changed model.

    `explainer(model, x, target)` returns the :class:`~saliencelab.Attribution` of the method
    named at construction with its options, computed by `sl.explain` (so it is chunked and
    counted like any explanation). Robustness metrics call it on all noisy copies of a batch at
    once; randomisation metrics call it on randomised copies of the model. The method must be
    registered (`sl.register`), so it is known at construction (an unknown name fails there)
    and its cost is counted; a plain function is not an explainer.
    """

    def __init__(
        self, method: str, options: dict[str, Any] | None = None, chunk_size: int | None = None
    ) -> None:
        get_method(method)  # an unknown name: one sentence now, before any model work
        self.method = method
        self.options = dict(options or {})
        self.chunk_size = chunk_size  # rows per chunk of its passes (None: measured)
        self.passes = 0.0  # forward+backward passes per input row, summed over calls
        self.forwards = 0.0
        self.rows = 0

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, target: torch.Tensor | None):
        return self.explain(model, x, target)[self.method]

    def explain(
        self, model: Model | nn.Module, x: torch.Tensor, target: torch.Tensor | None
    ) -> Explanation:
        """The whole :class:`~saliencelab.Explanation` (with the model's logits of `x`)."""
        from ..core.explain import explain

        methods = {self.method: self.options}
        ex = explain(model, x, methods=methods, target=target, chunk_size=self.chunk_size)
        self.passes += ex.total_passes * x.shape[0]
        self.forwards += ex.total_forwards * x.shape[0]
        self.rows += x.shape[0]
        return ex

    def maps(
        self, model: Model | nn.Module, x: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        """(N, H, W) maps of `x` explained for `target`."""
        return self(model, x, target).maps

    def __repr__(self) -> str:
        return f"Explainer({self.method!r}, {self.options!r})"


class EmptyMaskWarning(UserWarning):
    """Some masks are empty: the localisation metrics are undefined (NaN) on those images."""


def warn_empty_masks(masks: torch.Tensor, stacklevel: int = 2) -> None:
    """A warning naming the samples whose mask is empty (their localisation values are NaN and
    left out of n), so a run does not lose them silently."""
    empty = (~masks.bool().flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        warnings.warn(
            f"{len(empty)} of {masks.shape[0]} masks are empty (samples {shown}): the "
            "localisation metrics are undefined there (NaN, left out of n).",
            EmptyMaskWarning,
            stacklevel=stacklevel + 1,
        )


class LastDraw:
    """The seeded draw a metric made last (noise, random subsets), kept for its next batch.

    Such draws depend only on the options and the inputs' shape (every sample and every batch of
    that shape sees the same ones), so a loop over equal batches draws them once: drawing is
    serial on the CPU (10 × 3 × 64² Gaussian values took 7 % of infidelity on the shapes CNN).
    Kept while at most `MAX_VALUES` values. The kept tensor is shared: callers must not edit it.
    """

    MAX_VALUES = 2**24

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None

    def get(self, key: tuple, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`draw()`, or the tensor it gave for the same `key` (everything the draw depends on)
        last time."""
        if self._value is not None and key == self._key:
            return self._value
        value = draw()
        keep = value.numel() <= self.MAX_VALUES
        self._key, self._value = (key, value) if keep else (None, None)
        return value


@dataclass
class EvalBatch:
    """What a metric may read for one batch of one method.

    Attributes:
        x: (B, C, H, W) model inputs (or (B, ...) for other input kinds).
        maps: (B, H, W) the method's maps at input resolution, signed, not normalised.
        target: (B,) long, the class each map explains.
        model: the model (needed by faithfulness, robustness, randomisation metrics).
        attributions: (B, C, H, W) the full attribution before channel reduction, when the
            method has one in input space (completeness, infidelity use it).
        masks: (B, H, W) bool ground-truth masks (localisation metrics).
        explainer: recomputes maps (robustness, randomisation, some axiomatic metrics).
        engine: runs and counts the forwards of this batch (shared by the metrics of one call).
        input_logits: (B, classes) the model's logits on `x`, kept once computed (when the
            predicted class was resolved, or by the first metric that asks `input_scores`), so
            the metrics of one call run the unperturbed inputs once.
    """

    x: torch.Tensor
    maps: torch.Tensor
    target: torch.Tensor
    model: Model | None = None
    attributions: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    explainer: Explainer | None = None
    engine: Engine | None = None
    input_logits: torch.Tensor | None = None
    # (min, max) of `target`, read once (`target_bounds`); make_batch fills it where it read them
    _bounds: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def target_bounds(self) -> tuple[int, int]:
        """(min, max) of the target classes, read from the tensor once per batch (-1 marks a map
        that explains no class: a channel, neuron or function target)."""
        if self._bounds is None:
            self._bounds = class_bounds(self.target) if self.target.numel() else (0, -1)
        return self._bounds

    @property
    def has_inputs(self) -> bool:
        """Whether inputs were given: without them `make_batch` puts a (B, 0) placeholder."""
        return not (self.x.dim() == 2 and self.x.shape[1] == 0)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def scores(
        self,
        n_rows: int,
        make_inputs: Callable[[torch.Tensor], torch.Tensor],
        sample_of: Callable[[torch.Tensor], torch.Tensor],
        kind: Literal["probability", "logit", "logits"] = "probability",
    ) -> torch.Tensor:
        """Forward `n_rows` rows built by `make_inputs(rows)` in chunks; the target's score of each.

        `sample_of(rows)` gives the original sample of each row (its target is used). `kind`
        "probability" is the softmax probability of the target, "logit" its logit, "logits"
        returns all logits (n_rows, classes). The rows are like `x` (shape, dtype). Runs under
        `torch.inference_mode()`, model frozen. `rows` are a range of CPU indices: read them
        with `core.batching.row_range` / `row_slice`, and give the samples on x's device, so
        that no chunk waits for a GPU.
        """
        engine = self.require_engine()
        target = Target(self.target)
        passes = engine.forwards(n_rows, make_inputs, sample_of, target, example=self.x[:1])
        with closing(passes) as chunks:  # the model restored also if this frame is kept
            parts = [self.pick(chunk.logits, chunk.samples, kind) for chunk in chunks]
        return torch.cat(parts) if parts else torch.empty(0)

    def pick(
        self,
        logits: torch.Tensor,
        samples: torch.Tensor | None,
        kind: Literal["probability", "logit", "logits"],
    ) -> torch.Tensor:
        """The score `kind` of rows with these `logits` (N, classes), row i explaining the
        target of sample `samples[i]` (None: of sample i): all logits, the target's logit or its
        softmax probability."""
        if kind == "logits":
            return logits
        logits = logits.float()
        if kind == "probability" and logits.shape[-1] == 1:
            # softmax over one score is 1 whatever the input: every curve would be flat
            raise SaliencelabError(ONE_SCORE)
        if kind == "probability":
            logits = logits.softmax(dim=-1)
        return class_scores(logits, self.target, samples)

    def input_scores(
        self, kind: Literal["probability", "logit", "logits"] = "probability"
    ) -> torch.Tensor:
        """(B,) the target's score on the unperturbed inputs: one forward per sample, run once
        per batch and kept in `input_logits` for every metric that scores this batch."""
        if self.input_logits is None:
            x = self.x
            self.input_logits = self.scores(x.shape[0], *batch_rows(x), kind="logits")
        return self.pick(self.input_logits, None, kind)

    def row_layout(self) -> torch.memory_format:
        """The memory format the engine feeds rows like `x` to the model in: channels-last
        where its layout probe found that safe (4-D float inputs on the CPU, core/layout.py),
        else contiguous. Rows built in it are fed without the engine's conversion copy."""
        module = self.model.module if self.model is not None else None
        if module is not None and channels_last_known(module, self.x):
            return torch.channels_last
        return torch.contiguous_format

    def require_engine(self) -> Engine:
        if self.engine is None:
            if self.model is None:
                raise SaliencelabError("This metric needs the model; pass model=... .")
            self.engine = Engine(self.model)
        return self.engine


@dataclass
class Scores:
    """What `Metric.score` returns for one batch."""

    values: torch.Tensor  # (B,)
    curves: torch.Tensor | None = None  # (B, K) the curve behind each value
    curve_x: torch.Tensor | None = None  # (K,) its x axis (e.g. fraction of pixels removed)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-sample (B, ...) tensors


@dataclass
class MetricResult:
    """A metric's per-sample values and summary.

    `mean` and the bootstrap 95% `ci` skip NaN and infinite values (samples where the metric is
    undefined, e.g. an empty mask for a localisation metric); `n` counts the finite ones.
    """

    metric: str
    values: torch.Tensor
    direction: Direction
    value_range: tuple[float, float]
    params: dict[str, Any] = field(default_factory=dict)
    curves: torch.Tensor | None = None
    curve_x: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    passes: float = 0.0  # forward+backward passes per sample this metric cost
    forwards: float = 0.0  # forward passes per sample
    seconds: float = 0.0

    @property
    def finite(self) -> torch.Tensor:
        v = self.values.double()
        return v[torch.isfinite(v)]

    @property
    def n(self) -> int:
        return int(self.finite.numel())

    @property
    def mean(self) -> float:
        v = self.finite
        return float(v.mean()) if v.numel() else math.nan

    @property
    def std(self) -> float:
        v = self.finite
        return float(v.std()) if v.numel() > 1 else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        return bootstrap_ci(self.finite)

    @property
    def curve(self) -> torch.Tensor | None:
        """The mean curve over samples, (K,)."""
        return None if self.curves is None else self.curves.double().nanmean(dim=0)

    def row(self) -> dict[str, Any]:
        lo, hi = self.ci
        return {
            "metric": self.metric,
            "mean": self.mean,
            "ci_low": lo,
            "ci_high": hi,
            "n": self.n,
            "direction": self.direction,
        }

    @staticmethod
    def merge(*results: MetricResult | Iterable[MetricResult]) -> MetricResult:
        """One result from the results of several batches or processes of the same metric:
        `merge([a, b, c])`, `merge(a, b, c)` or `merge(r for r in parts)`."""
        if len(results) == 1 and not isinstance(results[0], MetricResult):
            given = results[0]
            if not isinstance(given, Iterable) or isinstance(given, (str, bytes, Mapping)):
                raise SaliencelabError(
                    f"merge takes MetricResults (a list of them, or several), not "
                    f"{type(given).__name__}."
                )
            results = tuple(given)
        bad = [r for r in results if not isinstance(r, MetricResult)]
        if bad:
            raise SaliencelabError(
                f"merge takes MetricResults, got a {type(bad[0]).__name__} among them."
            )
        if not results:
            raise SaliencelabError("Nothing to merge: give at least one MetricResult.")
        first = results[0]
        for r in results[1:]:
            _check_mergeable(first, r)
        curves, curve_x = joined_curves(first.metric, results)
        n = sum(r.values.numel() for r in results)
        per = [(r.values.numel() / max(n, 1)) for r in results]
        return MetricResult(
            metric=first.metric,
            values=torch.cat([r.values.cpu() for r in results]),
            direction=first.direction,
            value_range=first.value_range,
            params=first.params,
            curves=curves,
            curve_x=curve_x,
            extras=_cat_extras(first.metric, [r.extras for r in results]),
            passes=sum(w * r.passes for w, r in zip(per, results, strict=True)),
            forwards=sum(w * r.forwards for w, r in zip(per, results, strict=True)),
            seconds=sum(r.seconds for r in results),
        )


# Parameters a run records about itself (not settings): they may differ between batches.
_RUN_PARAMS = frozenset({"calls"})


def _check_mergeable(a: MetricResult, b: MetricResult) -> None:
    """One sentence unless `b` comes from the same metric with the same settings as `a`."""
    if a.metric != b.metric:
        raise SaliencelabError(
            f"Cannot merge results of different metrics ({a.metric} and {b.metric})."
        )
    for key in sorted((set(a.params) | set(b.params)) - _RUN_PARAMS):
        u, v = a.params.get(key), b.params.get(key)
        if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
            same = (
                isinstance(u, torch.Tensor)
                and isinstance(v, torch.Tensor)
                and u.shape == v.shape
                and torch.equal(u.cpu(), v.cpu())
            )
        else:
            try:
                same = bool(u == v)
            except (ValueError, RuntimeError, TypeError):  # arrays: elementwise ==
                same = np.array_equal(np.asarray(u), np.asarray(v))
        if not same:
            raise SaliencelabError(
                f"Cannot merge {a.metric} results computed with other settings ({key}: {u!r} "
                f"and {v!r}); merge results of one metric object or of equal settings."
            )


class CurvesDroppedWarning(UserWarning):
    """Batches scored together whose curves do not line up (other lengths or x axes)."""


def joined_curves(
    metric: str, parts: Sequence[Scores | MetricResult]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(curves, curve_x) of several batches' results as one: their curves stacked, on the x
    axis they share. Batches of other image sizes give curves of other lengths or x axes (e.g.
    deletion's step fractions round(k·H·W/steps)/(H·W)); their values are still right, but no
    common x axis holds the curves, so they are left out (None, None) with a warning rather
    than drawn against the wrong x. Copies: editing a result never changes the metric."""
    if not parts or any(p.curves is None for p in parts):
        return None, None
    xs = [p.curve_x for p in parts]
    same_x = all(x is None for x in xs) or (
        all(x is not None for x in xs)
        and all(x.shape == xs[0].shape and torch.equal(x.cpu(), xs[0].cpu()) for x in xs)
    )
    if not same_x or any(p.curves.shape[1:] != parts[0].curves.shape[1:] for p in parts):
        warnings.warn(
            f"The {metric} curves of these batches do not line up (images of other sizes give "
            "curves of other lengths or x axes): the values are kept, the curves left out; score "
            "images of one size together to keep the curves.",
            CurvesDroppedWarning,
            stacklevel=3,
        )
        return None, None
    curves = torch.cat([p.curves.detach().cpu() for p in parts])
    return curves, None if xs[0] is None else xs[0].detach().cpu().clone()


def _cat_extras(metric: str, extras: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The per-sample extras of several batches as one; an entry whose rows differ in shape
    between batches (e.g. region perturbation's curves at other image sizes) is left out with
    a warning, as `joined_curves` does."""
    keys = set.intersection(*(set(e) for e in extras)) if extras else set()
    lined_up = {k for k in keys if len({tuple(e[k].shape[1:]) for e in extras}) == 1}
    if keys - lined_up:
        warnings.warn(
            f"The {metric} extras {sorted(keys - lined_up)} of these batches differ in shape "
            "(images of other sizes): they are left out; score images of one size together to "
            "keep them.",
            CurvesDroppedWarning,
            stacklevel=3,
        )
    return {k: torch.cat([e[k].cpu() for e in extras]) for k in sorted(lined_up)}


class Metric:
    """Base class of all metrics. Subclasses set the class attributes and implement `score`.

    Class attributes:
        name: registered name, e.g. "deletion".
        direction: "higher" or "lower" is better, or "none" (descriptive, e.g. similarity in
            a sanity check where lower means the method passes).
        value_range: the values' range, e.g. (0, 1).
        needs: what the batch must carry beyond maps: "model", "masks", "explainer",
            "attributions".
        family: faithfulness, robustness, localisation, complexity, randomisation, axiomatic.
        reference: the paper, "Author et al. Year, Title".

    Subclasses take their parameters as keyword arguments of `__init__` and pass them all to
    `super().__init__(**params)`; they are kept in `self.params` and as attributes.
    """

    name: ClassVar[str] = ""
    direction: ClassVar[Direction] = "higher"
    value_range: ClassVar[tuple[float, float]] = (-math.inf, math.inf)
    needs: ClassVar[tuple[Needs, ...]] = ()
    family: ClassVar[str] = ""
    reference: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _checked_options(cls.__init__)  # type: ignore[method-assign]
        elif cls.__init__ is Metric.__init__:  # no __init__ of its own: it takes no options
            cls.__init__ = _checked_options(_no_options)  # type: ignore[method-assign]

    def __init__(self, **params: Any) -> None:
        self.params = params
        for k, v in params.items():
            setattr(self, k, v)
        self.reset()

    # -- to implement ---------------------------------------------------------------------------

    def score(self, batch: EvalBatch) -> Scores:
        """Score one batch: a value per sample (and the curves behind them, if any)."""
        raise NotImplementedError

    def check_model(self, model: Model) -> None:
        """One sentence if the options do not fit `model` (e.g. layers it does not have);
        `sl.evaluate` calls it before any model work. Default: nothing to check."""

    @property
    def reads_probabilities(self) -> bool:
        """Whether it scores the target's softmax probability (its `score` or `output` option is
        "probability"), which a model giving one score per input cannot have (`ONE_SCORE`)."""
        return "probability" in (self.params.get("score"), self.params.get("output"))

    def check_classes(self, highest: int) -> None:
        """One sentence if the options do not fit maps explaining classes up to `highest` (e.g.
        random logit's `num_classes`); `sl.evaluate` calls it before any model work where the
        classes are known by then. Default: nothing to check."""

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        """One sentence if the options do not fit inputs `x` and checked `maps` (and `masks`,
        for the metrics that need them) of these shapes (e.g. a patch larger than the image, a
        top-k larger than the map); `sl.evaluate` calls it for every map before any model work,
        so such a request fails before another metric's results are computed and lost. Cheap:
        shapes and options only. Default: nothing to check."""

    # -- the stateful contract --------------------------------------------------------------------

    def reset(self) -> None:
        self._parts: list[Scores] = []
        self._passes = 0.0
        self._forwards = 0.0
        self._seconds = 0.0
        self._rows = 0

    @autograd_allowed()  # also inside a caller's no_grad / inference_mode
    def update(
        self,
        maps: torch.Tensor | None = None,
        *,
        x: torch.Tensor | None = None,
        model: Model | nn.Module | None = None,
        target: TargetSpec = None,
        masks: torch.Tensor | None = None,
        attributions: torch.Tensor | None = None,
        explainer: Explainer | str | None = None,
        batch: EvalBatch | None = None,
    ) -> torch.Tensor:
        """Score a batch and remember it; returns its (B,) values.

        Give either an :class:`EvalBatch` or its parts. `target=None` scores the model's
        predicted class; `explainer` is a registered method's name (recomputed with default
        options) or an :class:`Explainer` (a method with options).
        """
        import time

        texts = words = None
        if batch is None and isinstance(model, TextModel):  # texts, or their engine inputs
            x, texts, words = text_inputs(model, x)
            if words is not None:
                checked_maps(maps, x, model, words=words)  # (B, W): W the longest text's words
        if batch is None:
            with _inputs_blamed(model, x):  # e.g. the forward that finds the predicted class
                batch = make_batch(
                    maps,
                    x=x,
                    model=model,
                    target=target,
                    masks=masks,
                    attributions=attributions,
                    explainer=explainer,
                    # options that do not fit the inputs: refused before the model runs (texts:
                    # each on its own words, below)
                    check=self.check_inputs if words is None else None,
                )
        self.check(batch)
        parts = [batch]
        if texts is not None and words is not None:  # each text scored on its own words
            if batch.masks is not None:
                check_text_masks(batch.masks, texts, words)
            check_text_parts(self, batch.x, batch.maps, batch.masks, texts, words)
            parts = text_parts(batch, words)
        if "masks" in self.needs:
            warn_empty_masks(batch.masks, stacklevel=3)  # (update, its autograd wrapper)
        engine = batch.engine
        before = engine.cost.copy() if engine is not None else None
        ex_before = (
            (batch.explainer.passes, batch.explainer.forwards) if batch.explainer else (0, 0)
        )
        start = time.perf_counter()
        # One session (eval mode, frozen weights) for all the metric's passes: each pass's own
        # then costs nothing, where entering one walks the model (~0.1 ms on the shapes CNN,
        # ~0.7 ms on EfficientNet-Lite0).
        with engine.session() if engine is not None else nullcontext():
            with _inputs_blamed(batch.model, batch.x):
                outs = [self.score(part) for part in parts]
        self._seconds += time.perf_counter() - start
        if batch.engine is not None:
            cost = batch.engine.cost.since(before) if before is not None else batch.engine.cost
            self._passes += cost.grad_rows
            self._forwards += cost.forward_rows
        if batch.explainer is not None:
            self._passes += batch.explainer.passes - ex_before[0]
            self._forwards += batch.explainer.forwards - ex_before[1]
        self._rows += batch.batch
        for part, out in zip(parts, outs, strict=True):
            _check_scores(self.name, out, part.batch)
        self._parts.extend(outs)
        # a copy: editing it must not change what compute() sees
        return torch.cat([out.values for out in outs]).clone()

    def compute(self) -> MetricResult:
        """The result over everything `update` saw since the last `reset`."""
        if not self._parts:
            raise SaliencelabError(
                f"{self.name}.compute() was called before any update(); score a batch first."
            )
        parts = self._parts
        curves, curve_x = joined_curves(self.name, parts)
        rows = max(self._rows, 1)
        return MetricResult(
            metric=self.name,
            values=torch.cat([p.values.detach().cpu() for p in parts]),
            direction=self.direction,
            value_range=self.value_range,
            params=dict(self.params),
            curves=curves,
            curve_x=curve_x,
            extras=_cat_extras(self.name, [p.extras for p in parts]),
            passes=self._passes / rows,
            forwards=self._forwards / rows,
            seconds=self._seconds,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> MetricResult:
        """Score one batch from scratch: `reset`, `update`, `compute`."""
        if len(args) > 1:  # Python's TypeError named update's signature, not the call
            raise SaliencelabError(
                f"Give {self.name} the maps, then the rest by keyword: "
                "metric(maps, x=x, model=model, target=..., masks=...)."
            )
        self.reset()
        self.update(*args, **kwargs)
        return self.compute()

    # -- checks ------------------------------------------------------------------------------------

    def check(self, batch: EvalBatch) -> None:
        """One clear sentence when the batch lacks what this metric needs."""
        hints = {
            "model": "pass model=... (this metric runs the model)",
            "masks": "pass masks=... ((B, H, W) bool ground-truth masks)",
            "explainer": (
                "pass explainer=<method name> or sl.metrics.Explainer(name, options) (this "
                "metric recomputes explanations)"
            ),
            "attributions": (
                "give the method's full input-space attributions (an sl.Explanation carries them)"
            ),
        }
        for need in self.needs:
            if getattr(batch, need) is None:
                raise SaliencelabError(f"The metric {self.name} needs {need}: {hints[need]}.")
        if ("model" in self.needs or "explainer" in self.needs) and not batch.has_inputs:
            raise SaliencelabError(
                f"The metric {self.name} needs the inputs: pass x=... (the (B, C, H, W) inputs "
                "the maps explain)."
            )
        if batch.model is not None:
            check_model_kind(self, batch.model)
        if batch.target_bounds()[0] < 0:
            check_class_target(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def _no_options(self: Metric) -> None:
    """The `__init__` of a metric that declares none: it takes no options."""
    Metric.__init__(self)


def _check_scores(metric: str, out: Any, batch: int) -> None:
    """One sentence where `score` (a user's own metric's, say) did not return Scores with one
    value per sample of its batch of `batch`."""
    if not isinstance(out, Scores):
        raise SaliencelabError(
            f"The metric {metric}'s score() returned {type(out).__name__}; return "
            "Scores(values=...) with one value per sample."
        )
    values = out.values
    if not isinstance(values, torch.Tensor) or values.shape != (batch,):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise SaliencelabError(
            f"The metric {metric}'s score() returned values of shape {shape} for a batch of "
            f"{batch}; return a ({batch},) tensor, one value per sample."
        )


def _checked_options(init: Callable[..., None]) -> Callable[..., None]:
    """`init` refusing options it does not take in one sentence naming them and the closest
    options (a SaliencelabError, not Python's TypeError): `sl.metrics.get("deletion")(stepz=5)`
    fails as `sl.evaluate(metrics={"deletion": {"stepz": 5}})` does."""
    signature = inspect.signature(init)
    accepted = [p for p in signature.parameters if p != "self"]
    # yes/no options: "yes" or 1 would pass as true, None or "" as false
    flags = {p.name for p in signature.parameters.values() if p.annotation in ("bool", bool)}

    @functools.wraps(init)
    def checked(self: Metric, *args: Any, **kwargs: Any) -> None:
        name = getattr(type(self), "name", "") or type(self).__name__
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            unknown = [k for k in kwargs if k not in accepted]
            if not accepted:
                raise SaliencelabError(f"The metric {name} takes no options.") from None
            if unknown:
                raise SaliencelabError(
                    f"The metric {name} has no option {unknown[0]!r}."
                    f"{closest(unknown[0], accepted)} Its options: "
                    f"{', '.join(sorted(accepted)) or 'none'}."
                ) from None
            raise SaliencelabError(
                f"The metric {name} takes its options by keyword ({', '.join(accepted)}), e.g. "
                f"sl.metrics.get({name!r})({accepted[0]}=...)."
            ) from None
        for key in flags & set(bound.arguments):
            value = bound.arguments[key]
            if not isinstance(value, (bool, np.bool_)):
                raise SaliencelabError(
                    f"The option {key} of {name} is True or False, not {value!r}."
                )
        init(self, *args, **kwargs)

    return checked


def runs_model(metric: Metric) -> bool:
    """Whether the metric reads the model: its scores, or maps it recomputes."""
    return "model" in metric.needs or "explainer" in metric.needs


#: The sentence for a probability read of a model that gives one score per input.
ONE_SCORE = (
    "The model gives one score per input, whose softmax probability is always 1; score that "
    "score itself with score='logit' (output='logit' for completeness and non_sensitivity)."
)


def check_model_kind(metric: Metric, model: Model) -> None:
    """One sentence when `metric` runs a model it cannot: a text model (its inputs are token
    embeddings, which the metrics neither perturb nor re-explain)."""
    if runs_model(metric) and isinstance(model, TextModel):
        raise SaliencelabError(
            f"The metric {metric.name} runs the model on changed or re-explained inputs, which "
            "saliencelab does not do for text models; score text maps with the metrics that "
            "read only the maps: complexity, or localisation with (B, words) masks."
        )


def check_class_target(metric: Metric, maps: str = "the maps") -> None:
    """One sentence when `metric` needs the class the maps explain but they explain none (a
    channel, neuron or function target: class -1)."""
    if not runs_model(metric):
        return  # it reads only the maps (and masks)
    if "explainer" in metric.needs:
        what = "recomputes the maps for the class they explain"
        todo = "it cannot score them"
    else:
        what = "scores the class the maps explain"
        todo = (
            "pass target=<class> (an int, a class name or one per sample; --target on the "
            "command line) to score a class"
        )
    raise SaliencelabError(
        f"The metric {metric.name} {what}, but {maps} explain a channel, neuron or function "
        f"target, not a class; {todo}, or use the localisation and complexity metrics, which "
        "read only the maps."
    )


def masks_for(masks: object, maps: torch.Tensor) -> torch.Tensor:
    """`masks` as a tensor shaped like `maps` ((B, 1, H, W) squeezed; a list of (H, W) masks
    stacked), else one sentence."""
    if isinstance(masks, (list, tuple)) and masks and all(isinstance(m, np.ndarray) for m in masks):
        masks = [torch.tensor(m) for m in masks]  # (torch warns on a list of them)
    if (
        isinstance(masks, (list, tuple))
        and masks
        and all(isinstance(m, torch.Tensor) for m in masks)
    ):
        if len({tuple(m.shape) for m in masks}) > 1:
            raise SaliencelabError(
                "The masks in the list have different shapes; give one (H, W) mask per map at "
                "the maps' resolution."
            )
        masks = torch.stack(list(masks))
    if not isinstance(masks, torch.Tensor):
        try:
            masks = torch.as_tensor(masks)
        except (TypeError, ValueError, RuntimeError):
            raise SaliencelabError(
                f"The masks must be a (B, H, W) tensor, array or list of (H, W) masks, not "
                f"{type(masks).__name__}."
            ) from None
    if masks.is_complex() or (masks.is_floating_point() and not all_finite(masks)):
        raise SaliencelabError(
            "The masks contain NaN, infinite or complex values; give bool masks (True on the "
            "object) or 0/1 numbers."
        )
    if masks.dtype != torch.bool:
        # soft masks (a resized or predicted mask) would count every nonzero pixel as object,
        # label maps every labelled one; 0/255 uint8 masks (a mask image) are fine
        off = masks[(masks != 0) & (masks != 1) & ((masks != 255) | (masks.dtype != torch.uint8))]
        if off.numel():
            raise SaliencelabError(
                f"The masks hold values other than 0 and 1 (e.g. {float(off[0]):.3g}); give bool "
                "masks (True on the object), e.g. masks > 0.5 for soft masks, masks == k for "
                "class k of a label map."
            )
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    squeezed = maps.dim() == 4 and maps.shape[1] == 1
    shape = maps.shape[:1] + maps.shape[2:] if squeezed else maps.shape
    if masks.shape != shape:
        raise SaliencelabError(
            f"The masks have shape {tuple(masks.shape)} but the maps {tuple(shape)}; give one "
            "(H, W) mask per map at the maps' resolution."
        )
    return masks


def _inputs_blamed(model: Model | nn.Module | None, x: object) -> AbstractContextManager:
    """A failure of the model that the inputs caused, as one sentence about them
    (`core/explain.py`); nothing to blame without a model and input tensors."""
    if model is None or not isinstance(x, torch.Tensor) or x.numel() == 0:
        return nullcontext()
    return input_errors_explained(as_model(model), x)


def _squeezed(maps: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
    """`maps` without a channel axis of one: (B, 1, H, W) → (B, H, W), and for inputs
    (B, C, *spatial) of any rank, (B, 1, *spatial) → (B, *spatial)."""
    if maps.dim() < 3 or maps.shape[1] != 1:
        return maps
    if x is None or x.dim() < 3:
        return maps[:, 0] if maps.dim() == 4 else maps
    return maps[:, 0] if maps.dim() == x.dim() else maps  # else e.g. (B, D, H, W) with D = 1


def _takes_images(model: Model | nn.Module | None) -> bool | None:
    """Whether the model takes (B, C, H, W) images: True where it has an `input_size` or its
    first convolution is 2-D, False for a text model or a first convolution of 1 or 3
    dimensions, None when that is unknown (no model, no convolution)."""
    if model is None or isinstance(model, TextModel):
        return None if model is None else False
    if isinstance(model, Model) and model.input_size is not None:
        return True
    module = model.module if isinstance(model, Model) else model
    if not isinstance(module, nn.Module):
        return None
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return isinstance(m, nn.Conv2d)
    return None


def _one_image(x: torch.Tensor, maps: torch.Tensor, model: Model | nn.Module | None) -> bool:
    """Whether 3-D inputs `x` are one (C, H, W) image without a batch axis (its channels would
    be read as the batch): the maps are (H, W), or (N, H, W) with N ≠ C, and the model does
    not take 1-D signals (B, C, L). (B, L) maps of signals with B = C fit both readings: they
    are taken as the batch they are unless the model is known to take images."""
    if x.dim() != 3 or tuple(maps.shape[-2:]) != tuple(x.shape[-2:]):
        return False
    if maps.dim() != 2 and maps.shape[0] == x.shape[0]:
        return False
    images = _takes_images(model)
    if images is False:
        return False
    signals = maps.dim() == 2 and maps.shape[0] == x.shape[0]  # also (B, L) maps of signals
    return images is True or not signals


def checked_maps(
    maps: object,
    x: torch.Tensor | None = None,
    model: Model | nn.Module | None = None,
    *,
    words: Sequence[int] | None = None,
) -> torch.Tensor:
    """The maps as the metrics take them ((B, 1, ...) squeezed, float), checked on their own
    and against the inputs `x` (one per input, at input resolution); else one sentence. With a
    model, the inputs must be float (the metrics change their values).

    Shapes: inputs (B, C, H, W) take (B, H, W) maps; tabular inputs (B, F) take (B, F) maps;
    other inputs (B, C, *spatial), e.g. signals (B, C, L) or volumes (B, C, D, H, W), take
    (B, *spatial) maps or maps shaped like the inputs; a text model's inputs take (B, W) word
    maps, W the most `words` of any text where the texts' word counts are given."""
    if maps is None:
        raise SaliencelabError("No maps given; pass the (B, H, W) maps to score.")
    if not isinstance(maps, torch.Tensor):
        hint = " (torch.from_numpy(maps))" if isinstance(maps, np.ndarray) else ""
        raise SaliencelabError(
            f"Maps must be a (B, H, W) tensor, got {type(maps).__name__}; pass a tensor{hint}."
        )
    if x is not None and not isinstance(x, torch.Tensor):
        raise SaliencelabError(f"Give the inputs as a tensor, not {type(x).__name__}.")
    maps = maps.detach()  # scored, never differentiated (the similarities write into buffers)
    maps = _squeezed(maps, x)
    if maps.dim() < 2:
        raise SaliencelabError(
            f"Maps need a batch axis, got shape {tuple(maps.shape)}; use maps.unsqueeze(0)."
        )
    if maps.shape[0] == 0:
        raise SaliencelabError("The batch is empty; give at least one map to score.")
    if maps.is_complex():
        raise SaliencelabError("The maps are complex numbers; give real-valued maps.")
    if not maps.is_floating_point():  # a 0/1 or integer map scores as its float values
        maps = maps.float()
    if not all_finite(maps):
        raise SaliencelabError("The maps contain NaN or infinite values; check the method.")
    b = maps.shape[0]
    if x is not None and _one_image(x, maps, model):  # its channels would be read as the batch
        raise SaliencelabError(
            f"The inputs have shape {tuple(x.shape)}, one image without a batch axis; give "
            "(B, C, H, W) inputs, e.g. x.unsqueeze(0) for one, with (B, H, W) maps."
        )
    if x is not None:
        unbatched = x.dim() == maps.dim() + 2 and tuple(maps.shape) == tuple(x.shape[-2:])
        if unbatched and b != x.shape[0]:
            raise SaliencelabError(
                f"The maps have shape {tuple(maps.shape)}, one map without a batch axis, but the "
                f"inputs are {tuple(x.shape)}; give (B, H, W) maps, e.g. maps.unsqueeze(0) for one."
            )
        if x.shape[0] != b:
            raise SaliencelabError(
                f"The maps are for {b} samples but the inputs have {x.shape[0]}; give one map per "
                "input."
            )
        if model is not None and not x.is_floating_point():
            raise SaliencelabError(
                f"The inputs are {x.dtype}; the metrics change input values, so give float "
                "inputs as the model takes them (model.preprocess(images), or x.float() / 255 "
                "for 0-255 pixels)."
            )
        if (x.dim() == 4 and maps.dim() != 3) or (x.dim() == 2 and maps.shape != x.shape):
            want = "(B, H, W) maps, one per image" if x.dim() == 4 else "maps shaped like them"
            raise SaliencelabError(
                f"The maps have shape {tuple(maps.shape)} for inputs of shape {tuple(x.shape)}; "
                f"give {want}."
            )
        if x.dim() == 4 and maps.dim() == 3 and tuple(maps.shape[-2:]) != tuple(x.shape[-2:]):
            raise SaliencelabError(
                f"The maps are {tuple(maps.shape[-2:])} but the inputs are "
                f"{tuple(x.shape[-2:])}; give maps at input resolution (an sl.Explanation's maps "
                "are)."
            )
        spatial = (b, *x.shape[2:])  # (B, C, *spatial) inputs: a value per position
        other = x.dim() == 3 or x.dim() > 4
        if other and not isinstance(model, TextModel) and maps.shape not in (spatial, x.shape):
            raise SaliencelabError(
                f"The maps have shape {tuple(maps.shape)} for inputs of shape {tuple(x.shape)}; "
                f"give {spatial} maps, one value per position (or maps shaped like the inputs)."
            )
    if isinstance(model, TextModel):
        width = max(1, max(words)) if words else None  # (TextBatch.merge's width)
        if maps.dim() != 2 or (width is not None and maps.shape[1] != width):
            want = f"({b}, {width})" if width is not None else "(B, W)"
            raise SaliencelabError(
                f"The maps have shape {tuple(maps.shape)} for texts; give {want} word maps, one "
                "value per word of the longest text (as sl.explain gives them)."
            )
    return maps


# -- text: each text scored on its own words ---------------------------------------------------


def text_inputs(
    model: TextModel, x: object
) -> tuple[torch.Tensor | None, list[str] | None, list[int] | None]:
    """(engine inputs, texts, word count per text) of a text model's inputs: texts (as
    sl.explain takes them) or their engine inputs (`model.preprocess(texts)`), whose words are
    read back from their token embeddings; (x, None, None) without inputs."""
    if x is None:
        return None, None, None
    if not isinstance(x, torch.Tensor):
        batch = model.encode(x)
        return model.embed(batch), list(batch.texts), batch.n_words
    texts, words = text_words(model, x)
    return x, texts, words


def text_words(model: TextModel, x: torch.Tensor) -> tuple[list[str], list[int]]:
    """The texts and word counts of engine inputs `x` (`model.preprocess(texts)`): each row's
    token ids found in the embedding table, decoded and tokenised again; else one sentence."""
    real, fixed = read_flags(x, model.dim)
    table = model.text_module.embedding.weight.detach().float()
    emb = x[..., : model.dim].detach().float().to(table.device)
    own = (real & ~fixed).to(table.device)
    ids: list[list[int]] = []
    for row, keep in zip(emb, own, strict=True):
        rows = row[keep]
        found = torch.cdist(rows, table).argmin(1)
        if not torch.allclose(table[found], rows):
            ids = []
            break
        ids.append(found.tolist())
    if ids:
        texts = [model.tokenizer.decode(row) for row in ids]
        batch = model.encode(texts)
        own_ids = batch.ids.masked_fill(~batch.mask | batch.fixed, -1)
        again = [[int(i) for i in row if i >= 0] for row in own_ids.tolist()]
        if again == ids:
            return list(batch.texts), batch.n_words
    raise SaliencelabError(
        "The words of these text inputs cannot be read back from their token embeddings; pass "
        "the texts themselves (x=texts)."
    )


def check_text_masks(masks: torch.Tensor, texts: Sequence[str], words: Sequence[int]) -> None:
    """One sentence when a (B, W) mask marks a position past its text's words."""
    for i, (text, n) in enumerate(zip(texts, words, strict=True)):
        past = masks[i, n:].nonzero().flatten()
        if past.numel():
            raise SaliencelabError(
                f"The mask of text {i} ({text!r}) marks position {int(past[0]) + n}, but that "
                f"text has {_words(n)} (positions 0 to {n - 1}); mark only each text's own words."
            )


def check_text_parts(
    metric: Metric,
    x: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor | None,
    texts: Sequence[str],
    words: Sequence[int],
) -> None:
    """`metric.check_inputs` on each text's maps cut to its words, a failure naming the text."""
    for i, (text, n) in enumerate(zip(texts, words, strict=True)):
        own_masks = None if masks is None else masks[i : i + 1, :n]
        try:
            metric.check_inputs(x[i : i + 1], maps[i : i + 1, :n], own_masks)
        except SaliencelabError as e:
            raise SaliencelabError(f"Text {i} ({text!r}) has {_words(n)}: {e}") from None


def text_parts(batch: EvalBatch, words: Sequence[int]) -> list[EvalBatch]:
    """The batch as one batch per text, its maps (and masks) cut to the text's own words: a
    text model's (B, W) maps hold zeros after a shorter text's words, which would count as
    words of no relevance (and a text's value would depend on the texts beside it)."""
    width = batch.maps.shape[-1]
    if all(n == width for n in words):
        return [batch]
    return [
        dataclasses.replace(
            batch,
            x=batch.x[i : i + 1],
            maps=batch.maps[i : i + 1, :n],
            target=batch.target[i : i + 1],
            masks=None if batch.masks is None else batch.masks[i : i + 1, :n],
            attributions=None,
            input_logits=None,
        )
        for i, n in enumerate(words)
    ]


def _words(n: int) -> str:
    return f"{n} word" if n == 1 else f"{n} words"


def make_batch(
    maps: torch.Tensor | None,
    *,
    x: torch.Tensor | None = None,
    model: Model | nn.Module | None = None,
    target: TargetSpec = None,
    masks: torch.Tensor | None = None,
    attributions: torch.Tensor | None = None,
    explainer: Explainer | str | None = None,
    engine: Engine | None = None,
    check: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], None] | None = None,
) -> EvalBatch:
    """Validate the parts of a batch and resolve its target (None → the predicted class).
    `check(x, maps, masks)` (a metric's `check_inputs`) runs on the checked parts before the
    forward that finds the predicted class, where there is one; with a target given nothing is
    spent on it here (some checks cost a few tenths of a millisecond), and the metric's `score`
    finds what does not fit."""
    maps = checked_maps(maps, x, model)
    b = maps.shape[0]
    m = as_model(model) if model is not None else None
    if m is not None and x is not None:
        x = as_model_input(m, x)  # on its device, float64 inputs in a float32 model's dtype
    if x is not None:
        x = x.contiguous()  # e.g. a permuted HWC array: the metrics view rows flat
    maps = maps.to(x.device) if x is not None else maps
    if masks is not None:
        masks = masks_for(masks, maps).to(device=maps.device).bool()
    if attributions is not None and attributions.shape[0] != b:
        raise SaliencelabError(
            f"The attributions are for {attributions.shape[0]} samples but the maps for {b}."
        )
    if attributions is not None and x is not None and attributions.shape != x.shape:
        raise SaliencelabError(
            f"The attributions have shape {tuple(attributions.shape)} but the inputs "
            f"{tuple(x.shape)}; give input-space attributions (an Attribution's .attributions) "
            "or none."
        )
    if isinstance(explainer, str):
        explainer = Explainer(explainer)
    elif explainer is not None and not isinstance(explainer, Explainer):
        what = "function" if callable(explainer) else type(explainer).__name__
        raise SaliencelabError(
            f"explainer must be a method name (explainer='gradcam') or "
            f"sl.metrics.Explainer('gradcam', {{options}}), not a {what}; register your own "
            "method with @sl.register to recompute it."
        )
    if check is not None and x is not None and target is None:
        check(x, maps, masks)
    engine = engine or (Engine(m) if m is not None else None)
    if engine is not None and x is not None:
        engine.probe_layout(x)
    tgt, input_logits, bounds = _resolve_target(target, b, m, x, engine)
    batch = EvalBatch(
        x=x if x is not None else torch.empty(b, 0),
        maps=maps,
        target=tgt if tgt.device == maps.device else tgt.to(maps.device),
        model=m,
        attributions=attributions,
        masks=masks,
        explainer=explainer,
        engine=engine,
        input_logits=input_logits,
    )
    batch._bounds = bounds
    return batch


def _resolve_target(
    target: TargetSpec, b: int, model: Model | None, x: torch.Tensor | None, engine: Engine | None
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int] | None]:
    """(B,) class indices, the logits on x when resolving them took a forward, and the indices'
    (min, max) where they were read (else None: `EvalBatch.target_bounds` reads them)."""
    unknown = (-1, -1)  # the maps explain no class: the metrics that need one say so
    if isinstance(target, (list, tuple)) and all(
        isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target
    ):  # class indices: no model needed to read them
        if len(target) != b:
            raise SaliencelabError(
                f"Got {len(target)} targets for a batch of {b} maps; give one target per map, or "
                "a single int / class name for all."
            )
        target = torch.tensor([int(t) for t in target], dtype=torch.long)
    if isinstance(target, torch.Tensor):
        check_tensor_target(target)
    if callable(target) and not isinstance(target, torch.Tensor):
        # a channel, neuron or function target: the maps explain no class (-1, as an
        # Attribution records it); the metrics that need one say so (`check_class_target`)
        return torch.full((b,), -1, dtype=torch.long), None, unknown
    if isinstance(target, torch.Tensor) and target.dim() == 1 and target.shape[0] == b:
        t = target.long()
        bounds = class_bounds(t) if b else None
        if bounds == unknown:  # an Attribution's target of a channel, neuron or function
            return t, None, bounds
        if model is not None:  # the labels give the classes; else `gather_classes` checks them
            n = len(model.labels) if model.labels is not None else None
            check_class_indices(t, n, bounds)
        return t, None, bounds
    if isinstance(target, int) and model is None:
        return torch.full((b,), target, dtype=torch.long), None, (target, target)
    if model is None or x is None or engine is None:
        if target is None:  # unknown: map-only metrics
            return torch.full((b,), -1, dtype=torch.long), None, unknown
        raise SaliencelabError(
            "Resolving this target needs the model and inputs; pass model=... and x=... ."
        )
    logits = engine.logits(x)
    return resolve_target(target, logits, model.labels).indices, logits, None


# -- the registry ----------------------------------------------------------------------------------

_METRICS: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make a metric available by its `name` (`sl.evaluate(metrics=[name])`).

    One sentence where the class is not a `Metric`, its `name`, `family`, `direction`,
    `value_range` or `needs` are not what `Metric` describes, or the name is taken by another
    class (the same class defined again, e.g. a notebook cell run twice, replaces itself)."""
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise SaliencelabError(
            f"register_metric decorates a subclass of sl.metrics.Metric, not {cls!r}."
        )
    title = cls.__qualname__
    problems = {
        "name": not (isinstance(cls.name, str) and cls.name.strip()),
        "family": not isinstance(cls.family, str),
        "direction": cls.direction not in get_args(Direction),
        "value_range": not _is_range(cls.value_range),
        "needs": not (
            isinstance(cls.needs, tuple) and all(n in get_args(Needs) for n in cls.needs)
        ),
    }
    wanted = {
        "name": "a non-empty string",
        "family": "a string",
        "direction": " or ".join(map(repr, get_args(Direction))),
        "value_range": "(low, high) numbers with low <= high",
        "needs": f"a tuple of {', '.join(map(repr, get_args(Needs)))}",
    }
    for attribute, bad in problems.items():
        if bad:
            raise SaliencelabError(
                f"The metric {title} has {attribute} = {getattr(cls, attribute)!r}; it must be "
                f"{wanted[attribute]}."
            )
    taken = _METRICS.get(cls.name)
    if taken is not None and not same_definition(taken, cls):
        raise SaliencelabError(
            f"A metric named {cls.name!r} is already registered ({taken.__module__}."
            f"{taken.__qualname__}); give {title} another name."
        )
    _METRICS[cls.name] = cls
    return cls


def _is_range(value: Any) -> bool:
    """Whether `value` is a (low, high) pair of real numbers with low <= high."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
        and value[0] <= value[1]
    )


def get_metric(name: str) -> type[Metric]:
    """The metric class registered under `name`."""
    if not isinstance(name, str):
        raise SaliencelabError(
            f"A metric is named by a string, not {type(name).__name__}; pass e.g. 'deletion' "
            "(see sl.metrics.available())."
        )
    try:
        return _METRICS[name]
    except KeyError:
        raise SaliencelabError(
            f"No metric named {name!r}.{closest(name, _METRICS)} See sl.metrics.available() "
            "(`saliencelab metrics` in the shell)."
        ) from None


def available(family: str | None = None) -> list[str]:
    """Names of the registered metrics, optionally of one family."""
    return sorted(n for n, c in _METRICS.items() if family is None or c.family == family)


def metric_classes() -> dict[str, type[Metric]]:
    return dict(_METRICS)
