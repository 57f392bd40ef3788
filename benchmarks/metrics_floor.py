"""Every metric that runs the model, against its floor (issue 6: within 1.1× of it).

    .venv/bin/python benchmarks/metrics_floor.py [--models efficientnet_lite0,shapes_cnn]
        [--metrics deletion,road,...] [--images 2] [--shapes-images 8] [--repeats 3]
        [--small-repeats 9] [--max-warmup 12] [--keep-chunks] [--floor-layout ours|nchw]
        [--largest-chunk N] [--profile] [--quick] [--device cpu|cuda] [--clock cpu] [--threads 1]
        [--out benchmarks/out/metrics_floor.json]

For each model (EfficientNet-Lite0 at 224×224 on `harness.benchmark_inputs` photos, the shapes CNN
on `sl.data.shapes.make(8, seed=0)` at 64×64), the saliency maps of `sl.explain` for the
predicted classes, and each registered metric whose `needs` hold "model" or "explainer" (small
settings, `SETTINGS` below; a metric not listed there runs with its defaults):

- `ours`: the metric as a user calls it, `metric.update(maps, x=..., model=..., target=...,
  attributions=..., explainer="saliency")` then `compute()`, a fresh engine per call. Each metric
  starts from forgotten chunk sizes (as in a fresh process; `--keep-chunks`: go on from the
  metrics before it) and is warmed up until a call runs the same chunks as the one before and
  the engine's chunk-size search (core/batching.py) learnt nothing from it: settled, or stuck
  (reported as "search open"). The forwards of that last warm-up call are recorded
  (`harness.record_passes`: batch size and kind of every forward of the model, gradient passes
  included) with their memory layout;
- `floor`: exactly those forwards as plain passes, weights frozen: each recorded batch size
  timed (up to 3 times, median) as a plain forward under `torch.inference_mode()` ("forward"
  rows) or a forward + `torch.autograd.grad` of the summed target logits to the input ("grad"
  rows: one explanation pass of saliency, as `harness.Floor`), times how often it ran. With
  `--floor-layout ours` (default) a pass is fed in the layout our rows had (channels-last where
  the engine used it on CPU), so the ratio measures overhead, not layout; `nchw`: plain NCHW
  (the convention of the older metric scripts, where channels-last puts ours below 1). The
  floor runs the model as it is: a BatchNorm folded by the engine (core/fused.py) puts ours
  below it;
- `best-chunk floor`: the same rows of each kind re-cut at the chunk size fastest per row (a
  per-row cost measured once per model and size) among the powers of two up to the longest
  engine pass of that kind (rows of two passes cannot share a chunk) and `--largest-chunk` (the
  engine's cap), as plain passes. ours / best-chunk floor above ours / floor means the engine ran
  slower chunk sizes than it could have.

All three are timed interleaved (`harness.measure`; `--repeats` on EfficientNet,
`--small-repeats` on the shapes CNN); the ratios are medians of the per-repeat ratios
(`harness.paired`). Checked in the same run: the timed calls give the values of the recorded
warm-up call (same chunks: equal to rounding), the chunks do not change after the timing, and
the recorded rows equal the metric's own count (`MetricResult.forwards` / `.passes` × batch):
"hidden" counts the forwards the metric does not report. (Forwards that bypass the model's
hooks, e.g. `core/layout.py`'s probe calling `module.forward`, are not seen at all.) Agreement
of the values with Quantus and Captum is checked by the per-family scripts
(metrics_faithfulness.py, metrics_robustness.py, metrics_randomisation.py).

Where the rest of ours goes: one more call with timers wrapped around parts of the library
(nothing edited; module attributes swapped for the call): `engine` (iterating the engine's
passes: building rows, model, scores), `rows` (the metrics' `make_inputs`, inside engine),
`explain` (the explainer's `sl.explain` calls, engine inside) and per metric the non-forward
work: ROAD's imputation solve (inside rows), insertion's blur, the map similarity of MPRT and
random-logit, MPRT's re-initialisation, input-invariance's shift offset (W·shift, kept per
layer until its weight changes: 0 once kept), the noise of the robustness metrics and
infidelity, sensitivity-n's random subsets (seeded draws, kept by the metric for its next batch
of the same shape: 0 once drawn).
The column `+own` is ours / (floor + the metric's own work): the share of that call spent in
the parts that no pass does (`OWN_WORK`: imputation, blur, similarity, re-initialisation, noise,
subsets) times ours, added to the floor. It separates the overhead of running passes (what the
floor target is about) from work the metric's definition needs besides them (ROAD's imputation,
SSIM of the randomisation tests), which is timed against the peers' own in the per-family
scripts (metrics_road.py: imputation against Quantus'; metrics_randomisation.py).
`--profile` also prints a torch.profiler table of one call.

Map-only metrics (localisation, complexity: no forwards) are listed as such; metrics_maps.py
times them. `--clock cpu --threads 1` are the CPU defaults (`harness.setup_device`); with
`--device cuda` everything lives on the GPU, timers synchronise it and the clock is wall.
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

import saliencelab as sl
from saliencelab.core import batching
from saliencelab.core.batching import forget_chunk_sizes
from saliencelab.core.engine import Engine
from saliencelab.metrics.base import Explainer, metric_classes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    Contender,
    Floor,
    Stopwatch,
    add_device_options,
    add_metric_inputs,
    benchmark_inputs,
    device_name,
    frozen,
    make_sync,
    measure,
    paired,
    record_passes,
    setup_device,
    write_json,
)

# Small, default-ish settings: a few seconds per call on EfficientNet-Lite0 on one CPU thread.
# A value may be a function of the input shape (B, C, H, W).
SETTINGS: dict[str, dict[str, Any]] = {
    "deletion": {"steps": 16},
    "insertion": {"steps": 16},
    "aopc_morf": {"patch_size": 16, "regions": 16},
    "aopc_lerf": {"patch_size": 16, "regions": 16},
    "road": {},
    "road_morf": {},
    "road_lerf": {},
    "faithfulness_correlation": {"n_samples": 16, "subset_size": 224},
    "infidelity": {"n_perturbations": 10},
    "sensitivity_n": {"n_samples": 4},
    "monotonicity": {"steps": 16},
    "monotonicity_correlation": {"steps": 8, "n_samples": 2},
    "non_sensitivity": {"features_in_step": lambda shape: shape[2] * shape[3] // 16},
    "completeness": {},
    "max_sensitivity": {"n_samples": 8},
    "avg_sensitivity": {"n_samples": 8},
    "local_lipschitz": {"n_samples": 8},
    "model_randomisation": {"layers": 4},
    "random_logit": {},
    "input_invariance": {},
}
QUICK_SETTINGS: dict[str, dict[str, Any]] = {  # --quick: fewer rows still
    "deletion": {"steps": 4},
    "insertion": {"steps": 4},
    "aopc_morf": {"patch_size": 16, "regions": 4},
    "aopc_lerf": {"patch_size": 16, "regions": 4},
    "road": {"percentages": (25, 50, 75)},
    "road_morf": {"percentages": (25, 50, 75)},
    "road_lerf": {"percentages": (25, 50, 75)},
    "faithfulness_correlation": {"n_samples": 4, "subset_size": 64},
    "infidelity": {"n_perturbations": 4},
    "sensitivity_n": {"fractions": (0.1, 0.5), "n_samples": 2},
    "monotonicity": {"steps": 4},
    "monotonicity_correlation": {"steps": 4, "n_samples": 1},
    "non_sensitivity": {"features_in_step": lambda shape: shape[2] * shape[3] // 4},
    "max_sensitivity": {"n_samples": 2},
    "avg_sensitivity": {"n_samples": 2},
    "local_lipschitz": {"n_samples": 2},
    "model_randomisation": {"layers": 2},
}


def model_metrics() -> list[str]:
    """Registered metrics that run the model (their `needs` hold "model" or "explainer")."""
    return sorted(n for n, c in metric_classes().items() if {"model", "explainer"} & set(c.needs))


def map_only_metrics() -> list[str]:
    return sorted(set(metric_classes()) - set(model_metrics()))


def settings_for(name: str, shape: tuple[int, ...], quick: bool) -> dict[str, Any]:
    table = {**SETTINGS, **QUICK_SETTINGS} if quick else SETTINGS
    return {k: v(shape) if callable(v) else v for k, v in table.get(name, {}).items()}


# -- recording and the floor ---------------------------------------------------------------------

Call = tuple[int, str, bool]  # rows, "forward" or "grad", channels-last


@contextmanager
def record_calls(module: nn.Module) -> Iterator[list[Call]]:
    """Every forward of `module` as (rows, kind, channels-last): `harness.record_passes` for the
    rows and kind, one more pre-hook for the layout of the input."""
    calls: list[Call] = []
    layouts: list[bool] = []

    def pre(mod: nn.Module, args: tuple) -> None:
        x = args[0]
        nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        layouts.append(bool(nhwc and not x.is_contiguous()))

    handle = module.register_forward_pre_hook(pre)
    try:
        with record_passes(module) as log:
            yield calls
    finally:
        handle.remove()
        calls.extend((n, k, nhwc) for (n, k), nhwc in zip(log.calls, layouts, strict=True))


class PassFloor(Floor):
    """Plain passes of the recorded batch sizes and kinds, in the recorded layout (or NCHW)."""

    def __init__(self, module, x, targets, sync, layout: str = "ours") -> None:
        super().__init__(module, x, targets, sync)
        self.layout = layout
        self._nhwc: dict[int, torch.Tensor] = {}
        self._per_row: dict[tuple[int, str, bool], float] = {}

    def _input(self, rows: int, nhwc: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x, t = self._batch(rows)
        if nhwc and self.layout == "ours":
            if rows not in self._nhwc:
                self._nhwc[rows] = x.contiguous(memory_format=torch.channels_last)
            x = self._nhwc[rows]
        return x, t

    def pass_of(self, rows: int, kind: str, nhwc: bool) -> Stopwatch:
        """One plain pass of `rows` rows, timed: a forward ("forward") or a forward and
        `torch.autograd.grad` of the summed target logits to the input ("grad")."""
        x, t = self._input(rows, nhwc)
        if kind == "forward":
            with frozen(self.module), torch.inference_mode(), Stopwatch(self.sync) as sw:
                self.module(x)
            return sw
        with frozen(self.module), torch.enable_grad(), Stopwatch(self.sync) as sw:
            xi = x.detach().requires_grad_(True)
            score = self.module(xi).gather(1, t[:, None]).sum()
            torch.autograd.grad(score, xi)
        return sw

    def contender_of(self, calls: list[Call], max_timed: int = 3) -> Contender:
        """(wall, cpu) of the recorded passes: each distinct (rows, kind, layout) timed up to
        `max_timed` times, the median scaled by how often it ran."""
        counts = Counter(calls)

        def run() -> tuple[float, float]:
            wall = cpu = 0.0
            for (rows, kind, nhwc), n in counts.items():
                per = [self.pass_of(rows, kind, nhwc) for _ in range(min(n, max_timed))]
                wall += n * statistics.median(p.wall for p in per)
                cpu += n * statistics.median(p.cpu for p in per)
            return wall, cpu

        return Contender("floor", run, self_timed=True)

    def per_row_of(self, size: int, kind: str, nhwc: bool, reps: int = 2) -> float:
        """Seconds per row of one plain pass of `size` rows (after a warm-up; kept)."""
        key = (size, kind, nhwc)
        if key not in self._per_row:
            self.pass_of(size, kind, nhwc)
            times = [self.pass_of(size, kind, nhwc).seconds for _ in range(reps)]
            self._per_row[key] = statistics.median(times) / size
        return self._per_row[key]

    def best_calls(
        self, calls: list[Call], largest: dict[str, int]
    ) -> tuple[list[Call], dict[str, int]]:
        """The recorded rows of each kind and layout re-cut at the chunk size fastest per row
        (per-row costs measured here once) among the powers of two up to `largest[kind]` (the
        longest engine pass of that kind: rows of one pass can share a chunk, rows of two passes
        cannot), and those sizes."""
        rows: Counter = Counter()
        for n, kind, nhwc in calls:
            rows[kind, nhwc] += n
        out: list[Call] = []
        sizes = {}
        for (kind, nhwc), n in rows.items():
            top = min(n, largest.get(kind, n))
            ladder = [s for s in (2**i for i in range(12)) if s <= top] or [1]
            cost = {s: self.per_row_of(s, kind, nhwc) for s in ladder}
            size = min(cost, key=cost.get)
            full, rest = divmod(n, size)
            out += [(size, kind, nhwc)] * full + ([(rest, kind, nhwc)] if rest else [])
            sizes[f"{kind}{' nhwc' if nhwc else ''}"] = size
        return out, sizes


@contextmanager
def engine_passes() -> Iterator[list[tuple[str, int]]]:
    """(kind, rows) of every engine pass (`Engine.forwards` / `Engine.gradients`) in the block."""
    seen: list[tuple[str, int]] = []
    originals = {k: Engine.__dict__[k] for k in ("forwards", "gradients")}

    def wrap(fn, kind):
        def run(self, n_rows, *args, **kwargs):
            seen.append((kind, int(n_rows)))
            return fn(self, n_rows, *args, **kwargs)

        return run

    Engine.forwards = wrap(originals["forwards"], "forward")
    Engine.gradients = wrap(originals["gradients"], "grad")
    try:
        yield seen
    finally:
        for k, fn in originals.items():
            setattr(Engine, k, fn)


def search_state(module: nn.Module) -> tuple:
    """The engine's chunk-size search for `module` (core/batching.py): settled sizes and open
    searches, to tell when warm-up calls stop changing it."""
    mine = id(module)
    best = sorted(((k, v) for k, v in batching._BEST.items() if k[0] == mine), key=str)
    open_ = sorted(((k, repr(v)) for k, v in batching._PARTIAL.items() if k[0] == mine), key=str)
    return tuple(best), tuple(k for k, _ in open_), tuple(v for _, v in open_)


def chunk_of(calls: list[Call]) -> int | None:
    """The most common batch size of the dominant pass kind (ties: the larger)."""
    rows = Counter()
    for n, k, _ in calls:
        rows[k] += n
    if not rows:
        return None
    kind = max(rows, key=rows.get)
    sizes = Counter(n for n, k, _ in calls if k == kind)
    top = max(sizes.values())
    return max(n for n, c in sizes.items() if c == top)


# -- where the rest goes: timers around parts of the library ------------------------------------


def _module(name: str):
    return importlib.import_module(f"saliencelab.{name}")


def _parts(metric: str) -> list[tuple[Any, str, str, str]]:
    """(owner, attribute, label, how) of the parts timed inside one call of `metric`. `how`:
    "call" times each call; "result" times each call of the function the call returns;
    "passes" times the iteration of an engine pass and, as "rows", its `make_inputs`."""
    parts = [
        (Engine, "forwards", "engine", "passes"),
        (Engine, "gradients", "engine", "passes"),
        # `Explainer.__call__` goes through `explain`, and some metrics (input invariance) call
        # `explain` itself: timing `explain` counts every explainer call once.
        (Explainer, "explain", "explain", "call"),
    ]
    own = {
        "road": [("metrics.faithfulness.road", "linear_imputation", "imputation", "call")],
        "insertion": [("metrics.faithfulness.deletion", "gaussian_blur", "blur", "call")],
        "model_randomisation": [
            ("metrics.randomisation.parameter", "similarity_to", "similarity", "result"),
            ("metrics.randomisation.parameter", "randomise_stage", "randomise", "call"),
        ],
        "random_logit": [
            ("metrics.randomisation.random_logit", "similarity_to", "similarity", "result")
        ],
        "input_invariance": [
            ("metrics.axiomatic.input_invariance", "layer_offset", "shift offset", "call")
        ],
        "max_sensitivity": [("metrics.robustness._noisy", "draw_noise", "noise", "call")],
        "infidelity": [
            ("metrics.faithfulness.infidelity", "gaussian_perturbations", "noise", "call")
        ],
        "sensitivity_n": [
            ("metrics.faithfulness.sensitivity_n", "random_subsets", "subsets", "call")
        ],
    }
    own["road_morf"] = own["road_lerf"] = own["road"]
    own["avg_sensitivity"] = own["local_lipschitz"] = own["max_sensitivity"]
    return parts + [(_module(m), a, label, how) for m, a, label, how in own.get(metric, [])]


# The parts that are the metric's own work, which no pass of the floor does: ROAD's imputation,
# insertion's blur, the map comparison and re-initialisation of the randomisation tests, the
# noise and subsets the robustness metrics, infidelity and sensitivity-n draw.
OWN_WORK = ("imputation", "blur", "similarity", "randomise", "shift offset", "noise", "subsets")


def own_work_fraction(parts_seconds: dict[str, float]) -> float:
    """The share of the timed call spent in the metric's own work (`OWN_WORK`; they do not nest
    in one another)."""
    call = parts_seconds.get("call") or math.nan
    return sum(v for k, v in parts_seconds.items() if k in OWN_WORK) / call


@contextmanager
def timed_parts(
    parts: list[tuple[Any, str, str, str]], sync: Callable[[], None]
) -> Iterator[dict[str, float]]:
    """Seconds (the chosen clock) spent in each part during the block; the parts nest (engine
    inside explain, rows inside engine, imputation inside rows)."""
    spent: dict[str, float] = defaultdict(float)

    def timed(fn: Callable, label: str) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            with Stopwatch(sync) as sw:
                out = fn(*args, **kwargs)
            spent[label] += sw.seconds
            return out

        return run

    def wrap(fn: Callable, label: str, how: str) -> Callable:
        if how == "call":
            return timed(fn, label)
        if how == "result":
            return lambda *a, **k: timed(fn(*a, **k), label)

        def passes(self, n_rows, make_inputs, *args, **kwargs):  # how == "passes"
            it = fn(self, n_rows, timed(make_inputs, "rows"), *args, **kwargs)
            while True:
                with Stopwatch(sync) as sw:
                    chunk = next(it, None)
                spent[label] += sw.seconds
                if chunk is None:
                    return
                yield chunk

        return passes

    saved = []
    for owner, attr, label, how in parts:
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        saved.append((owner, attr, original))
        setattr(owner, attr, wrap(original, label, how))
    try:
        yield spent
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


# -- one model -------------------------------------------------------------------------------------


def load(name: str, args: argparse.Namespace, device: torch.device):
    """(model, x, masks or None, label) on `device`."""
    if name.startswith("shapes"):
        model = sl.load_model(name)
        data = sl.data.shapes.make(args.shapes_images, seed=0)
        # contiguous: the einsum in shapes.make gives another layout on some torch versions
        x, masks = data.images.contiguous(), data.masks
    else:
        model, x, name = benchmark_inputs(name, args.images)
        masks = None
    model = model.to(device)
    x = x.to(device).contiguous()
    return model, x, None if masks is None else masks.to(device), name


def same_values(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a - b| over the entries finite in both; inf where NaN positions differ."""
    a, b = a.double().cpu(), b.double().cpu()
    if not torch.equal(a.isnan(), b.isnan()):
        return math.inf
    both = a.isfinite() & b.isfinite()
    return float((a - b)[both].abs().max()) if both.any() else 0.0


def bench_metric(
    name: str, model, x, targets, ex, masks, floors: PassFloor, repeats: int, args, sync, log=print
) -> dict:
    module = model.module
    b = x.shape[0]
    params = settings_for(name, tuple(x.shape), args.quick)
    metric = metric_classes()[name](**params)
    full = ex.attributions is not None and ex.attributions.shape == x.shape
    needs_masks = "masks" in metric.needs

    def ours():
        metric.reset()
        metric.update(
            ex.maps,
            x=x,
            model=model,
            target=targets,
            masks=masks if needs_masks else None,
            attributions=ex.attributions if full else None,
            explainer="saliency",
        )
        return metric.compute()

    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    log(f"  {name}({shown})")
    if not args.keep_chunks:
        forget_chunk_sizes()  # each metric searches its chunk size as in a fresh process
    first = ours()
    calls: list[Call] = []
    state = search_state(module)
    warm = 0
    while warm < args.max_warmup:
        warm += 1
        with record_calls(module) as now, engine_passes() as passes:
            settled = ours()
        same = now == calls and search_state(module) == state
        calls, state = now, search_state(module)
        if same:  # the same chunks, and the search learnt nothing: settled (or stuck)
            break
    c_ours = Contender("ours", ours, warmup=0)
    floor = floors.contender_of(calls)
    largest: dict[str, int] = {}  # the longest engine pass of each kind, up to the cap
    for k, n in passes:
        largest[k] = max(largest.get(k, 1), min(n, args.largest_chunk))
    recut, best_sizes = floors.best_calls(calls, largest)
    best = floors.contender_of(recut)
    best.name = "best-chunk floor"
    measure([c_ours, floor, best], repeats, sync, log=log)
    with (
        timed_parts(_parts(name), sync) as spent,
        record_calls(module) as after,
        Stopwatch(sync) as whole,
    ):
        ours()
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            ours()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))

    fwd = sum(n for n, k, _ in calls if k == "forward")
    grad = sum(n for n, k, _ in calls if k == "grad")
    counted = (round(settled.forwards * b), round(settled.passes * b))
    values = settled.values.double()
    scale = float(values[values.isfinite()].abs().max()) if values.isfinite().any() else 0.0
    diff = same_values(settled.values, c_ours.last.values)
    row = {
        "metric": name,
        "family": metric.family,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
        "forward_rows": fwd,
        "grad_rows": grad,
        "calls": len(calls),
        "warmup_calls": warm + 1,
        # still searching: the chunk-size search has an open entry for this model
        "search_open": [k[1] for k in state[1]],
        "chunks_unchanged_after_timing": after == calls,
        "chunk": chunk_of(calls),
        "channels_last_rows": sum(n for n, _, nhwc in calls if nhwc),
        "passes": {f"{n}x{k}{' nhwc' if c else ''}": m for (n, k, c), m in Counter(calls).items()},
        "metric_counted_rows": {"forward": counted[0], "grad": counted[1]},
        "uncounted_rows": fwd + grad - sum(counted),
        "engine_passes": [f"{n}x{k}" for k, n in passes],
        "seconds": {"ours": c_ours.median, "floor": floor.median, "floor_best_chunk": best.median},
        "ours_over_floor": paired(c_ours, floor),
        "best_chunk": best_sizes,
        "ours_over_best_chunk_floor": paired(c_ours, best),
        # the timed calls against the last warm-up call (same chunks): must agree to rounding
        "values_agree": diff <= 1e-5 * (1 + scale),
        "values_max_abs_diff": diff,
        # the first call ran other chunk sizes (the search): rounding-level differences
        "values_max_abs_diff_first_call": same_values(first.values, settled.values),
        "parts_seconds": {"call": whole.seconds, **dict(spent)},
        "value_mean": settled.mean,
    }
    # ours / (floor + the metric's own work): that work's share of the timed call, times ours,
    # added to the floor (the paired ratio scaled, so a metric without own work keeps it)
    own = own_work_fraction(row["parts_seconds"]) * c_ours.median
    row["own_work_seconds"] = own
    row["ours_over_floor_plus_own_work"] = row["ours_over_floor"] / (1 + own / floor.median)
    log(
        f"    passes {row['passes']}, ours/floor {row['ours_over_floor']:.3f}, ours/best-chunk "
        f"floor {row['ours_over_best_chunk_floor']:.3f} {best_sizes}; {fmt_parts(row)}"
    )
    if not row["values_agree"]:
        log(f"    WARNING: values differ between timed calls by {diff:.3g}")
    return row


def fmt_parts(row: dict) -> str:
    parts = dict(row["parts_seconds"])
    call = parts.pop("call") or math.nan
    return ", ".join(f"{k} {v / call:.0%}" for k, v in parts.items())


def bench_model(name: str, metrics: list[str], args, device, sync) -> list[dict]:
    model, x, masks, label = load(name, args, device)
    with torch.inference_mode():
        targets = model.module.eval()(x).argmax(1)
    ex = sl.explain(model, x, methods=["saliency"], target=targets)["saliency"]
    floors = PassFloor(model.module, x, targets, sync, args.floor_layout)
    # the 64×64 shapes CNN costs ~1 ms a row: more repeats for the same confidence
    repeats = args.small_repeats if name.startswith("shapes") else args.repeats
    print(f"{label}: {tuple(x.shape)}", flush=True)
    rows = []
    for metric in metrics:
        row = bench_metric(metric, model, x, targets, ex, masks, floors, repeats, args, sync)
        rows.append({"model": label, "input": list(x.shape), **row})
    return rows


def table(rows: list[dict], map_only: list[str]) -> str:
    head = (
        f"{'model':18s} {'metric':24s} {'fwd':>4s} {'grad':>4s} {'chunk':>5s} {'ours s':>7s} "
        f"{'floor s':>7s} {'ours/floor':>10s} {'ours/best':>9s} {'+own':>5s} {'hidden':>6s} "
        "where the time goes"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['model']:18s} {r['metric']:24s} {r['forward_rows']:4d} {r['grad_rows']:4d} "
            f"{r['chunk'] or 0:5d} {r['seconds']['ours']:7.3f} {r['seconds']['floor']:7.3f} "
            f"{r['ours_over_floor']:10.2f} {r['ours_over_best_chunk_floor']:9.2f} "
            f"{r['ours_over_floor_plus_own_work']:5.2f} {r['uncounted_rows']:6d} {fmt_parts(r)}"
            + ("" if r["values_agree"] else "  VALUES DIFFER")
            + ("" if r["chunks_unchanged_after_timing"] else "  CHUNKS CHANGED")
            + (f"  (search open: {'/'.join(r['search_open'])})" if r["search_open"] else "")
        )
    lines.append(f"no forwards (map-only): {', '.join(map_only)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_metric_inputs(parser)
    parser.add_argument("--metrics", default="all", help="comma-separated, or all")
    parser.add_argument("--repeats", type=int, default=3, help="on EfficientNet-Lite0")
    parser.add_argument("--small-repeats", type=int, default=9, help="on the shapes CNN")
    parser.add_argument("--max-warmup", type=int, default=12, help="calls to settle the chunks")
    parser.add_argument(
        "--keep-chunks",
        action="store_true",
        help="let each metric go on from the chunk sizes the metrics before it found",
    )
    parser.add_argument(
        "--largest-chunk",
        type=int,
        default=None,
        help="for the best-chunk floor (default: 32 on CPU, 256 on CUDA, the engine's caps)",
    )
    parser.add_argument("--floor-layout", default="ours", choices=["ours", "nchw"])
    parser.add_argument("--profile", action="store_true", help="torch.profiler table per metric")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: shapes CNN, 2 images, 1 repeat, few rows"
    )
    add_device_options(parser)
    parser.add_argument("--out", default="benchmarks/out/metrics_floor.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.shapes_images, args.max_warmup = "shapes_cnn", 2, 2
        args.repeats = args.small_repeats = 1
    device = setup_device(args)
    if args.largest_chunk is None:
        args.largest_chunk = 256 if device.type == "cuda" else 32
    warnings.filterwarnings("ignore")
    sync = make_sync(device)
    available = model_metrics()
    metrics = available if args.metrics == "all" else args.metrics.split(",")
    unknown = sorted(set(metrics) - set(available))
    if unknown:
        raise SystemExit(f"not a metric that runs the model: {unknown}; they are: {available}")
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, metrics, args, device, sync)
    result = {
        "settings": {
            **vars(args),
            "device_name": device_name(device),
            "torch": torch.__version__,
        },
        "rows": rows,
        "no_forwards": map_only_metrics(),
    }
    print("\n" + table(rows, result["no_forwards"]))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
