"""Check that every registered method and metric runs on a device and agrees with the CPU.

    PYTHONPATH=src python scripts/gpu_check.py [--device cuda] [--quick] [--out gpu_check.json]
        [--models shapes_cnn,shapes_vit] [--methods saliency,lime] [--metrics deletion]

For every model (shapes_cnn and shapes_vit on 4 synthetic shapes, EfficientNet-Lite0 on 2
photos, MiniLM on 2 sentences) and every registered method, the method runs once with the model
and inputs on the CPU and once on `--device` (a second copy of the model, loaded the same way and
moved there). The maps are compared: ‖cpu − dev‖₂ / ‖cpu‖₂ ("rel") and Pearson correlation.
The default --rtol 5e-3 allows what float32 does to gradients at ReLU6 kinks (EfficientNet-Lite0:
saliency 5e-4, integrated gradients 9e-4, expected gradients 2.3e-3 on an H100, correlation
1.0000); a device bug moves a map by O(1).
A method that does not apply to a model must raise `SaliencelabError` on both ("n/a").

Then every registered metric scores the same CPU maps (saliency, integrated gradients) of
shapes_cnn on the CPU and on the device (maps, inputs, masks moved there), and the per-sample
values are compared. Each image model's maps are drawn (overlay, heatmap: same pixels; gallery;
MiniLM: the text HTML). Last, each device model must be as it was: no hooks left on any
submodule (nor global ones), parameters and buffers bit-identical, `training` flags and
`requires_grad` unchanged, no `.grad` left behind.

Status: ok (deterministic: rel ≤ --rtol; metrics that count against thresholds: ≤
--discrete-tol), sampled (the method or metric draws from the device's RNG, which differs from
the CPU's: maps finite, right shape and device, correlation ≥ --min-corr; metric means loosely
close), n/a (SaliencelabError on both), FAIL (anything else, including a device error where
the CPU worked). TF32 is switched off so that float32 is float32 on both. Prints one row per
check and `gpu_check: N ok, S sampled, M n/a, K FAIL`; exit code 1 if any row FAILs.
`--device cpu` compares the CPU with itself (every row must be ok or n/a): a test of the script.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import saliencelab as sl
from saliencelab.core.result import Attribution

# Methods whose draws come from the device's RNG (torch.Generator(device=x.device)): on CUDA
# their maps differ from the CPU's even with the same seed. None now: rise, the random
# reference and SmoothGrad's noise (a generator per sample) draw on the CPU, as do the baselines
# of expected_gradients and deeplift_shap and the coalitions of lime and kernelshap, so every
# method's maps must match.
SAMPLED_METHODS: set[str] = set()
# Metrics drawing from the device's RNG: none (noise and re-initialised layers are drawn on the
# CPU, so the values match on every device).
SAMPLED_METRICS: set[str] = set()
# Metrics that count or rank the model's outputs against thresholds: a float-level difference
# can move one count (e.g. one feature of non_sensitivity), so they get --discrete-tol.
DISCRETE_METRICS = {
    "non_sensitivity",
    "input_invariance",
    "monotonicity",
    "monotonicity_correlation",
}

# Small settings per option name (given to every method that takes the option).
METHOD_OPTIONS = {
    "n_steps": 16,
    "n_samples": 16,
    "n_masks": 256,
    "n_segments": 16,
    "max_channels": 16,
    "n_baselines": 4,
}
# Per method (wins over METHOD_OPTIONS); surrogates need more samples to correlate across RNGs.
METHOD_OVERRIDES = {
    "lime": {"n_samples": 128},
    "kernelshap": {"n_samples": 128},
    "smoothgrad": {"n_samples": 32},
    "smoothgrad_sq": {"n_samples": 32},
    "vargrad": {"n_samples": 32},
    "expected_gradients": {"n_samples": 32},
}
METRIC_OPTIONS = {
    "aopc_lerf": {"regions": 16},
    "aopc_morf": {"regions": 16},
    "avg_sensitivity": {"n_samples": 4},
    "max_sensitivity": {"n_samples": 4},
    "local_lipschitz": {"n_samples": 4},
    "deletion": {"steps": 16},
    "insertion": {"steps": 16},
    "faithfulness_correlation": {"subset_size": 64, "n_samples": 16},
    "infidelity": {"n_perturbations": 8},
    "monotonicity": {"steps": 16},
    "monotonicity_correlation": {"steps": 16, "n_samples": 4},
    "non_sensitivity": {"features_in_step": 128},
    "road": {"percentages": (10, 50, 90)},
    "road_lerf": {"percentages": (10, 50, 90)},
    "road_morf": {"percentages": (10, 50, 90)},
    "sensitivity_n": {"n_samples": 4, "fractions": (0.05, 0.2, 0.8)},
}
METRIC_MAPS = ("saliency", "integrated_gradients")  # explained on shapes_cnn, scored by metrics
ALL_MODELS = ("shapes_cnn", "shapes_vit", "efficientnet_lite0", "minilm")
QUICK_MODELS = ("shapes_cnn", "shapes_vit")
TEXTS = ["A man is playing a guitar.", "The cat sat on the mat."]
COMPARE_TEXT = "Someone is making music."


@dataclasses.dataclass
class Row:
    kind: str  # load, method, metric, viz, state
    model: str
    name: str
    status: str = "ok"  # ok, sampled, n/a, FAIL
    rel: float | None = None
    corr: float | None = None
    cpu_s: float | None = None
    dev_s: float | None = None
    note: str = ""


@dataclasses.dataclass
class Case:
    """One model on its inputs, once on the CPU and once on the device."""

    name: str
    cpu: sl.Model
    dev: sl.Model
    x_cpu: Any  # a tensor, or texts
    x_dev: Any
    target: Callable[[], Any]  # a fresh target per call (text targets bind to a model)
    options: dict[str, dict[str, Any]]


# -- helpers ---------------------------------------------------------------------------------------


def make_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[Any, float]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖₂ / ‖a‖₂ over the finite entries (0 when both are all zero).

    The L2 norm, not the largest entry: gradients at a ReLU6 kink may round to either side on
    two devices, which moves a few pixels of a map by a lot and the map as a whole by ~1e-5.
    """
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    ok = torch.isfinite(a) & torch.isfinite(b)
    if not ok.any():
        return 0.0
    diff = float((a[ok] - b[ok]).norm())
    scale = float(a[ok].norm())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.detach().double().cpu().flatten()
    b = b.detach().double().cpu().flatten()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    if den == 0:
        return 1.0 if torch.equal(a, b) else math.nan
    return float(a @ b) / den


def on_device(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type


def short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def state_of(module: torch.nn.Module) -> dict[str, Any]:
    """What must come back unchanged: tensors, training flags, requires_grad, grads."""
    return {
        "tensors": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "training": {n: m.training for n, m in module.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in module.named_parameters()},
        "grad": {n: p.grad is not None for n, p in module.named_parameters()},
    }


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def state_problems(module: torch.nn.Module, before: dict[str, Any]) -> list[str]:
    after = state_of(module)
    problems = []
    hooked = [
        f"{n or '<root>'}.{h}"
        for n, m in module.named_modules()
        for h in HOOK_DICTS
        if getattr(m, h, None)
    ]
    if hooked:
        problems.append(f"hooks left: {', '.join(hooked[:5])}{' …' if len(hooked) > 5 else ''}")
    glob = torch.nn.modules.module
    left = [h for h in GLOBAL_HOOKS if getattr(glob, h, None)]
    if left:
        problems.append(f"global hooks left: {', '.join(left)}")
    changed = [
        k
        for k, v in before["tensors"].items()
        if k not in after["tensors"] or not torch.equal(v, after["tensors"][k])
    ]
    if changed or set(after["tensors"]) != set(before["tensors"]):
        problems.append(f"tensors changed: {', '.join(changed[:5]) or 'keys differ'}")
    for key in ("training", "requires_grad", "grad"):
        diff = [n for n, v in before[key].items() if after[key].get(n) != v]
        if diff or set(after[key]) != set(before[key]):
            problems.append(f"{key} changed: {', '.join(diff[:5]) or 'keys differ'}")
    return problems


# -- models ----------------------------------------------------------------------------------------


def method_options(size: int, quick: bool) -> dict[str, dict[str, Any]]:
    """Options per method name (filtered by what each method takes)."""
    out = {}
    for spec in sl.methods():
        opts = {k: v for k, v in METHOD_OPTIONS.items() if k in spec.options}
        opts.update(METHOD_OVERRIDES.get(spec.name, {}))
        if quick and "n_samples" in opts:
            opts["n_samples"] = max(16, opts["n_samples"] // 2)
        out[spec.name] = opts
    window = max(8, size // 4)  # occlusion: 4 × 4 windows
    out["occlusion"] = {"window": window, "stride": window}
    return out


def load_case(name: str, device: torch.device, quick: bool) -> Case:
    cpu = sl.load_model(name)
    dev = sl.load_model(name).to(device)  # a second copy, loaded the same way, then moved
    if name == "minilm":
        return Case(
            name,
            cpu,
            dev,
            TEXTS,
            TEXTS,
            lambda: sl.similarity_to(COMPARE_TEXT),
            method_options(64, quick),
        )
    if name == "efficientnet_lite0":
        x = cpu.preprocess([sl.sample_image(n) for n in sl.sample_images()[:2]])
    else:
        x = sl.data.shapes.make(4, seed=0).images
    with torch.no_grad():
        target = cpu(x).argmax(1).tolist()  # the CPU's prediction, for both
    return Case(
        name,
        cpu,
        dev,
        x,
        x.to(device),
        lambda: target,
        method_options(x.shape[-1], quick),
    )


# -- methods ---------------------------------------------------------------------------------------


def explain(model: sl.Model, x: Any, method: str, options: dict[str, Any], target: Any):
    return sl.explain(model, x, methods={method: options}, target=target)[method]


def check_method(case: Case, method: str, device: torch.device, args) -> Row:
    row = Row("method", case.name, method)
    opts = case.options.get(method, {})
    sync = make_sync(device)
    try:
        a_cpu, row.cpu_s = timed(
            lambda: explain(case.cpu, case.x_cpu, method, opts, case.target()), sync
        )
    except sl.SaliencelabError as e:
        a_cpu, cpu_err = None, e
    except Exception as e:  # a crash on the CPU is a failure too
        row.status, row.note = "FAIL", f"cpu: {short(e)}"
        return row
    try:
        a_dev, row.dev_s = timed(
            lambda: explain(case.dev, case.x_dev, method, opts, case.target()), sync
        )
    except Exception as e:
        if a_cpu is None and isinstance(e, sl.SaliencelabError):
            row.status, row.note = "n/a", str(cpu_err).splitlines()[0][:100]
        else:
            row.status = "FAIL"
            row.note = f"{device.type}: {short(e)}"
            if args.verbose:
                traceback.print_exc()
        return row
    if a_cpu is None:
        row.status, row.note = "FAIL", f"only the CPU raised: {short(cpu_err)}"
        return row
    return compare_maps(row, a_cpu, a_dev, device, args)


def compare_maps(row: Row, a_cpu: Attribution, a_dev: Attribution, device, args) -> Row:
    m_cpu, m_dev = a_cpu.maps, a_dev.maps
    problems = []
    if m_cpu.shape != m_dev.shape:
        problems.append(f"shape {tuple(m_dev.shape)} != cpu {tuple(m_cpu.shape)}")
    for what, t in (("maps", m_dev), ("attributions", a_dev.attributions)):
        if not on_device(t, device):
            problems.append(f"{what} on {t.device}")
        if not torch.isfinite(t).all():
            problems.append(f"{what} not finite")
    if not torch.isfinite(m_cpu).all():
        problems.append("cpu maps not finite")
    notes = []
    if not on_device(a_dev.target, device):
        notes.append(f"target on {a_dev.target.device}")
    if problems:
        row.status, row.note = "FAIL", "; ".join(problems + notes)
        return row
    row.rel, row.corr = rel_diff(m_cpu, m_dev), pearson(m_cpu, m_dev)
    if row.rel <= args.rtol:
        row.status = "ok"
    elif row.name in SAMPLED_METHODS and row.corr >= args.min_corr:
        row.status = "sampled"
    else:
        row.status = "FAIL"
        notes.append(
            f"rel > {args.rtol:g}"
            + (f", corr < {args.min_corr:g}" if row.name in SAMPLED_METHODS else "")
        )
    row.note = "; ".join(notes)
    return row


def check_viz(case: Case, device: torch.device) -> Row:
    """Drawing device maps: pixels as from CPU maps (overlay, heatmap); the gallery runs."""
    import numpy as np

    from saliencelab.viz import heatmap

    row = Row(
        "viz", case.name, "overlay, heatmap, gallery" if case.name != "minilm" else "text_html"
    )
    methods = ["saliency"] if case.name == "minilm" else ["saliency", "gradcam"]
    photo = sl.sample_image(sl.sample_images()[0])

    def draw(model: sl.Model, x: Any) -> list[Any]:
        ex = sl.explain(model, x, methods, target=case.target())
        if case.name == "minilm":
            from saliencelab.text.render import text_html

            return [text_html(ex)]
        pictures = [sl.overlay(photo, ex["saliency"]), heatmap(ex["gradcam"], sample=1)]
        return [np.asarray(p, dtype=np.int16) for p in pictures] + [sl.gallery(photo, ex).size]

    try:
        on_cpu = draw(case.cpu, case.x_cpu)
    except Exception as e:
        row.status, row.note = "FAIL", f"cpu: {short(e)}"
        return row
    try:
        on_dev = draw(case.dev, case.x_dev)
    except Exception as e:
        row.status, row.note = "FAIL", f"{device.type}: {short(e)}"
        return row
    if case.name == "minilm":
        return row  # the html holds the scores as text: it ran, that is the check
    diff = max(int(np.abs(a - b).max()) for a, b in zip(on_cpu[:2], on_dev[:2], strict=True))
    row.rel = diff / 255
    # Each device explains on its own: a few kink pixels may differ, so allow a few levels.
    if diff > 8 or on_cpu[2] != on_dev[2]:
        row.status, row.note = "FAIL", f"pixels differ by {diff} or gallery size differs"
    return row


# -- metrics ---------------------------------------------------------------------------------------


def metric_options(name: str, quick: bool) -> dict[str, Any]:
    accepted = set(inspect.signature(sl.metrics.get(name).__init__).parameters)
    opts = {k: v for k, v in METRIC_OPTIONS.get(name, {}).items() if k in accepted}
    if quick:
        for key in ("n_samples", "n_perturbations"):
            if key in opts:
                opts[key] = max(2, opts[key] // 2)
    return opts


def moved(a: Attribution, device: torch.device) -> Attribution:
    return dataclasses.replace(a).to(device)  # a copy: Attribution.to moves in place


def check_metrics(case: Case, device: torch.device, args, names: list[str]) -> list[Row]:
    data = sl.data.shapes.make(4, seed=0)
    masks_cpu, masks_dev = data.masks, data.masks.to(device)
    # focus scores 2×2 mosaics: its masks must be unions of quadrants (two per sample here)
    quads = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    h, w = data.masks.shape[-2:]
    mosaic = quads.view(4, 2, 2).repeat_interleave(h // 2, 1).repeat_interleave(w // 2, 2)
    opts = {m: case.options.get(m, {}) for m in METRIC_MAPS}
    ex = sl.explain(case.cpu, case.x_cpu, methods=opts, target=case.target())
    maps_cpu = {m: ex[m] for m in METRIC_MAPS}
    maps_dev = {m: moved(ex[m], device) for m in METRIC_MAPS}
    sync = make_sync(device)
    rows = []
    for name in names:
        options = metric_options(name, args.quick)
        m_cpu, m_dev = (mosaic, mosaic.to(device)) if name == "focus" else (masks_cpu, masks_dev)

        def run(model, x, maps, masks, options=options, name=name):
            rep = sl.evaluate(
                model, x, maps, metrics={name: options}, masks=masks, references=False
            )
            return {m: rep[m][name].values for m in METRIC_MAPS}

        for method in METRIC_MAPS:
            rows.append(Row("metric", case.name, f"{name}[{method}]"))
        try:
            v_cpu, cpu_s = timed(lambda m=m_cpu: run(case.cpu, case.x_cpu, maps_cpu, m), sync)
        except Exception as e:
            for row in rows[-len(METRIC_MAPS) :]:
                row.status, row.note = "FAIL", f"cpu: {short(e)}"
            continue
        try:
            v_dev, dev_s = timed(lambda m=m_dev: run(case.dev, case.x_dev, maps_dev, m), sync)
        except Exception as e:
            for row in rows[-len(METRIC_MAPS) :]:
                row.status, row.note = "FAIL", f"{device.type}: {short(e)}"
            if args.verbose:
                traceback.print_exc()
            continue
        for row, method in zip(rows[-len(METRIC_MAPS) :], METRIC_MAPS, strict=True):
            row.cpu_s, row.dev_s = cpu_s / len(METRIC_MAPS), dev_s / len(METRIC_MAPS)
            compare_values(row, name, v_cpu[method], v_dev[method], args)
    return rows


def compare_values(row: Row, name: str, a: torch.Tensor, b: torch.Tensor, args) -> None:
    a, b = a.double().cpu(), b.double().cpu()
    if a.shape != b.shape:
        row.status, row.note = "FAIL", f"shape {tuple(b.shape)} != cpu {tuple(a.shape)}"
        return
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
        row.status, row.note = "FAIL", f"finite entries differ: cpu {a.tolist()} dev {b.tolist()}"
        return
    row.rel = rel_diff(a, b)
    row.corr = pearson(a, b) if a.numel() > 1 else None
    if row.rel <= args.rtol:
        return
    if (
        name in DISCRETE_METRICS
        and float((a - b)[torch.isfinite(a)].abs().max()) <= args.discrete_tol
    ):
        row.note = f"counts differ slightly (≤ --discrete-tol {args.discrete_tol:g})"
        return
    ok = torch.isfinite(a)
    mean_a = float(a[ok].mean()) if ok.any() else 0.0
    mean_b = float(b[ok].mean()) if ok.any() else 0.0
    if name in SAMPLED_METRICS:
        row.note = f"mean cpu {mean_a:.4g} dev {mean_b:.4g}"
        loose = max(0.5 * max(abs(mean_a), abs(mean_b)), 0.1)
        row.status = "sampled" if abs(mean_a - mean_b) <= loose else "FAIL"
        return
    row.status = "FAIL"
    row.note = f"rel > {args.rtol:g}; mean cpu {mean_a:.6g} dev {mean_b:.6g}"


# -- main ------------------------------------------------------------------------------------------


COLUMNS = "{:<6} {:<18} {:<46} {:<7} {:>8} {:>7} {:>7} {:>7}  {}"


def print_row(row: Row) -> None:
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    cells = (row.kind, row.model, row.name, row.status, num(row.rel, ".1e"))
    times = (num(row.corr, ".4f"), num(row.cpu_s, ".3f"), num(row.dev_s, ".3f"), row.note)
    print(COLUMNS.format(*cells, *times), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="device compared with the CPU (default cuda)")
    p.add_argument("--quick", action="store_true", help="shapes models only, fewer samples")
    p.add_argument("--models", help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    p.add_argument("--methods", help="comma-separated subset of the registered methods")
    p.add_argument("--metrics", help="comma-separated subset of the registered metrics")
    p.add_argument("--rtol", type=float, default=5e-3, help="max rel diff of deterministic rows")
    p.add_argument(
        "--discrete-tol", type=float, default=0.05, help="max abs diff of values, counting metrics"
    )
    p.add_argument("--min-corr", type=float, default=0.5, help="min correlation, sampled maps")
    p.add_argument("--out", type=Path, help="write every row as JSON here")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of device failures")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: CUDA is not available; use --device cpu to test the script.")
    if not args.verbose:  # e.g. "guided_backprop: the model has no nn.ReLU module" on MiniLM
        warnings.filterwarnings("ignore", category=UserWarning, module="saliencelab")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    models = (
        args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else ALL_MODELS)
    )
    methods = args.methods.split(",") if args.methods else [s.name for s in sl.methods()]
    metrics = args.metrics.split(",") if args.metrics else sl.metrics.available()
    start = time.perf_counter()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check: cpu vs {device} ({gpu}), torch {torch.__version__}")
    print(
        COLUMNS.format("kind", "model", "name", "status", "rel", "corr", "cpu_s", "dev_s", "note")
    )

    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        print_row(row)

    for name in models:
        try:
            case = load_case(name, device, args.quick)
        except (ImportError, sl.SaliencelabError, FileNotFoundError) as e:
            add(Row("load", name, "-", "n/a", note=short(e)))  # e.g. transformers missing
            continue
        except Exception as e:
            add(Row("load", name, "-", "FAIL", note=short(e)))
            continue
        before = {"cpu": state_of(case.cpu.module), "dev": state_of(case.dev.module)}
        for model, x in ((case.cpu, case.x_cpu), (case.dev, case.x_dev)):  # warm up (cuDNN, caches)
            try:
                sl.explain(model, x, "saliency", target=case.target())
            except Exception:
                pass  # the saliency row reports it
        for method in methods:
            add(check_method(case, method, device, args))
        add(check_viz(case, device))
        if name == "shapes_cnn" and metrics:
            for row in check_metrics(case, device, args, metrics):
                add(row)
        for side, model in (("cpu", case.cpu), ("dev", case.dev)):
            problems = state_problems(model.module, before[side])
            status = "FAIL" if problems else "ok"
            what = f"model on {model.device.type} ({side}) restored"
            add(Row("state", name, what, status, note="; ".join(problems)))

    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "sampled", "n/a", "FAIL")}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    print(f"({time.perf_counter() - start:.0f} s)")
    print(
        f"gpu_check: {counts['ok']} ok, {counts['sampled']} sampled, {counts['n/a']} n/a, "
        f"{counts['FAIL']} FAIL"
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
