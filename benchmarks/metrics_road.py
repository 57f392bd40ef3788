"""ROAD: its imputation and the whole metric, saliencelab against Quantus 0.6.0 and the floor.

    .venv/bin/python benchmarks/metrics_road.py [--models shapes_cnn,efficientnet_lite0]
        [--methods saliency,gradcam] [--images 2] [--shapes-images 8]
        [--percentages 10,20,30,40,50,60,70,80,90] [--repeats 2] [--device cpu|cuda]
        [--clock cpu] [--threads 1] [--out benchmarks/out/metrics_road.json]

Inputs: the shapes CNN on `sl.data.shapes.make(8, seed=0)` (64×64) and EfficientNet-Lite0 on
2 photos of `harness.benchmark_inputs` (224×224); targets = the predicted classes; maps = each
method's `sl.explain` maps made tie-free (a 1e-6 raster ramp, float64) so that every pixel
order is the same for everyone. The removed pixels of each row are ROAD's: for each image,
order (MoRF, LeRF) and percentage p, the floor(p·H·W/100) top or bottom pixels of the map.

(a) `imputation`: all those rows (B · 2 · P) filled without noise by
  - `ours`: `linear_imputation` (on the CPU an exact solve per row: LAPACK's band Cholesky
    while the band is narrow, 64×64 images and the sparser 224×224 rows, else SciPy's SuperLU
    in nested dissection order), in chunks of the metric's chunk size;
  - `cg`: the batched conjugate gradients (`road._conjugate_gradients`: the CUDA path, and the
    CPU path before the direct solve), same chunks; on CUDA it is `ours` and is left out;
  - `quantus`: `quantus.functions.perturb_func.noisy_linear_imputation(x_i, pixel indices,
    noise=0)` per row (the same system; SciPy `spsolve` of a LIL-built matrix).
  Values compared: the largest |difference| of the filled images against Quantus.
(b) `metric_vs_quantus`: ours `road_morf(percentages=P, noise=0)` against `quantus.ROAD(
  noise=0, normalise=False, abs=False)` on the same maps. Quantus 0.6.0's ROAD cannot run on
  images with C > 1 channels: `evaluate_batch` broadcasts the (B, 1, H, W) map to x's
  (B, C, H, W), sorts the C·H·W entries and hands their indices to `noisy_linear_imputation`,
  which takes pixel indices (< H·W): IndexError (the same with a (B, C, H, W) map; C = 1, as on
  MNIST, works). To run it here its `perturb_func` maps each index i to pixel i mod H·W
  (deduplicated) and its percentages are chosen so that its top int(H·W·p'/100) entries cover
  exactly our floor(p·H·W/100) pixels (a pixel's C tied entries sit together in its order); the
  wrapper checks the pixel counts. Quantus returns, per percentage, the fraction of images
  still predicted as their target (accuracy, MoRF only); ours is compared on the same quantity,
  read from the logits of the rows our metric ran, and the inputs the model saw on both sides
  are compared row by row (forward hooks, one more untimed call each).
(c) `floor`: ours `road(percentages=P)` (MoRF and LeRF, default noise) against its floor = the
  forwards it ran (`record_passes`: batch sizes and layout) each timed as a plain forward under
  `torch.inference_mode()`, weights frozen (median of up to 3) × how often it ran; and against
  floor + imputation (a)'s `ours`. `ours_cg` is the same metric with the conjugate gradients
  (the CPU path before); values of both compared.

Contenders are timed interleaved (`harness.measure`, median; ratios of medians). `--clock cpu
--threads 1` are the CPU defaults. With `--device cuda` models, inputs and maps live on the GPU
(Quantus works on numpy copies and runs its model with `device="cuda"`), timers synchronise
the GPU and the clock is wall.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import saliencelab as sl
from saliencelab.core import batching
from saliencelab.metrics.faithfulness import road
from saliencelab.metrics.faithfulness.perturbation import ranks_of
from saliencelab.metrics.stats import pixel_order

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    Contender,
    Stopwatch,
    add_device_options,
    add_metric_inputs,
    benchmark_inputs,
    device_name,
    frozen,
    make_sync,
    measure,
    setup_device,
    tie_free,
    write_json,
)


def road_masks(maps: torch.Tensor, percentages: list[float]) -> torch.Tensor:
    """(B · 2 · P, 1, H, W) removed pixels of ROAD's rows, in the metric's row order (image,
    then MoRF/LeRF, then percentage), as `road._Road.curves` builds them."""
    b, h, w = maps.shape
    counts = (torch.tensor(percentages, dtype=torch.float64) * h * w / 100).long()
    ranks = torch.stack([ranks_of(pixel_order(maps, descending=o)) for o in (True, False)], 1)
    rows = [ranks[i, o] < n for i in range(b) for o in range(2) for n in counts.tolist()]
    return torch.stack(rows).view(-1, 1, h, w)


class LayoutLog:
    """Batch size and memory layout (channels-last or not) of every forward of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[tuple[int, bool]] = []

        def pre(mod: torch.nn.Module, args: tuple) -> None:
            x = args[0]
            nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            self.calls.append((int(x.shape[0]), bool(nhwc)))

        self.handle = module.register_forward_pre_hook(pre)

    def close(self) -> None:
        self.handle.remove()


def forward_floor(module, x: torch.Tensor, calls: list[tuple[int, bool]], sync) -> Contender:
    """The recorded forwards as plain forwards (inference mode, weights frozen), each distinct
    (batch size, layout) timed up to 3 times (median) × how often it ran."""
    counts = Counter(calls)
    inputs = {}
    for rows, nhwc in counts:
        batch = x.repeat(-(-rows // len(x)), 1, 1, 1)[:rows].contiguous()
        inputs[rows, nhwc] = batch.contiguous(memory_format=torch.channels_last) if nhwc else batch

    def one(key: tuple[int, bool]) -> Stopwatch:
        with frozen(module), torch.inference_mode(), Stopwatch(sync) as sw:
            module(inputs[key])
        return sw

    def run() -> tuple[float, float]:
        wall = cpu = 0.0
        for key, times in counts.items():
            per = [one(key) for _ in range(min(3, times))]
            wall += times * statistics.median(p.wall for p in per)
            cpu += times * statistics.median(p.cpu for p in per)
        return wall, cpu

    return Contender("floor", run, self_timed=True)


def seen_by(module, fn) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and outputs of every forward of `module` during `fn()`, concatenated (CPU)."""
    inputs, outputs = [], []

    def hook(mod: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs.append(args[0].detach().float().cpu())
        outputs.append(out.detach().float().cpu())

    handle = module.register_forward_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return torch.cat(inputs), torch.cat(outputs)


def settled_calls(fn, module, tries: int = 16) -> list[tuple[int, bool]]:
    """Call `fn` until the engine's chunk-size search has settled (no search left open in
    `core.batching`) and two calls in a row ran the same forwards; the last call's forwards."""
    last = None
    for _ in range(tries):
        log = LayoutLog(module)
        try:
            fn()
        finally:
            log.close()
        if log.calls == last and not batching._PARTIAL:
            break
        last = log.calls
    return log.calls


def quantus_road(module, x, maps, targets, percentages, device: str):
    """Quantus' ROAD (MoRF accuracy per percentage, noise 0) made to run on C-channel images
    (see the module docstring); returns (B,)-mean accuracies (P,)."""
    import quantus
    from quantus.functions.perturb_func import noisy_linear_imputation

    b, c, h, w = x.shape
    counts = [int(p * h * w / 100) for p in percentages]
    # int(H·W·p'/100) = C·(n - 1) + 1 entries: n - 1 whole pixels and one entry of the n-th.
    p_quantus = [100 * (c * (n - 1) + 1.5) / (h * w) for n in counts]
    seen: list[int] = []

    def pixels(arr, indices, **kwargs):
        pix = np.unique(np.asarray(indices) % (h * w))
        seen.append(pix.size)
        return noisy_linear_imputation(arr, pix, **kwargs)

    metric = quantus.ROAD(
        percentages=p_quantus,
        noise=0.0,
        perturb_func=pixels,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(
            model=module,
            x_batch=x.cpu().numpy(),
            y_batch=targets.cpu().numpy(),
            a_batch=maps[:, None].cpu().numpy(),  # float64: float32 would tie pixels again
            device=device,
        )
    expected = [n for n in counts for _ in range(b)]
    if seen != expected:
        raise SystemExit(f"Quantus removed {seen[:8]}... pixels, expected {expected[:8]}...")
    return torch.tensor([out[p] for p in p_quantus], dtype=torch.float64)


def bench(args, name: str, method: str, model, x, targets, maps, device, sync) -> dict:
    module = model.module
    percentages = [float(p) for p in args.percentages.split(",")]
    b, c, h, w = x.shape
    masks = road_masks(maps, percentages)
    xs = x.repeat_interleave(2 * len(percentages), 0)  # row r is image r // (2P)
    n_rows = len(masks)
    print(f"{name} {method}: {b} images {tuple(x.shape[1:])}, {n_rows} rows", flush=True)
    result: dict = {"model": name, "method": method, "images": b, "rows": n_rows}

    # (c) first: the metric's forwards and chunk size (also used by (a)).
    road_metric = sl.metrics.get("road")(percentages=percentages)

    def ours_metric():
        return road_metric(maps, x=x, model=model, target=targets)

    def cg_metric():
        saved = road.linear_imputation
        road.linear_imputation = lambda x, r, tol=None, max_iter=None: road._conjugate_gradients(
            x, r, tol, max_iter
        )
        try:
            return ours_metric()
        finally:
            road.linear_imputation = saved

    calls = settled_calls(ours_metric, module)
    chunk = Counter(n for n, _ in calls).most_common(1)[0][0]
    result["chunk"] = chunk
    result["forward_rows"] = sum(n for n, _ in calls)

    # (a) the imputation alone
    def impute(fn):
        def run():
            return torch.cat(
                [fn(xs[i : i + chunk], masks[i : i + chunk]) for i in range(0, n_rows, chunk)]
            )

        return run

    from quantus.functions.perturb_func import noisy_linear_imputation

    x_np = xs.cpu().numpy()
    idx = [m.flatten().nonzero()[:, 0].cpu().numpy() for m in masks]

    def quantus_impute():
        return np.stack(
            [noisy_linear_imputation(x_np[i], idx[i], noise=0.0) for i in range(n_rows)]
        )

    contenders = [Contender("ours", impute(road.linear_imputation))]
    if device.type == "cpu":
        cg = lambda x, r: road._conjugate_gradients(x, r, None, None)  # noqa: E731
        contenders.append(Contender("cg", impute(cg), warmup=0))  # slow; no one-off costs
    contenders.append(Contender("quantus", quantus_impute))
    print("  (a) imputation alone", flush=True)
    measure(contenders, args.repeats, sync)
    by = {k.name: k for k in contenders}
    q = torch.from_numpy(by["quantus"].last).double()
    result["imputation"] = {
        "median_s": {k.name: k.median for k in contenders},
        "quantus_over_ours": by["quantus"].median / by["ours"].median,
        "max_abs_diff_vs_quantus": {
            k.name: float((k.last.double().cpu() - q).abs().max()) for k in contenders[:-1]
        },
    }
    if "cg" in by:
        result["imputation"]["cg_over_ours"] = by["cg"].median / by["ours"].median
    print("  ", json.dumps(result["imputation"]), flush=True)

    # (b) the metric against Quantus' ROAD (MoRF accuracy per percentage, noise 0)
    morf = sl.metrics.get("road_morf")(percentages=percentages, noise=0.0)

    def ours_morf():
        return morf(maps, x=x, model=model, target=targets)

    peer = Contender(
        "quantus", lambda: quantus_road(module, x, maps, targets, percentages, args.device)
    )
    mine = Contender("ours", ours_morf)
    print("  (b) road_morf vs quantus.ROAD", flush=True)
    measure([mine, peer], args.repeats, sync)
    # What the model saw: our rows (image-major) and Quantus' (percentage-major), and logits.
    ours_in, ours_out = seen_by(module, ours_morf)
    q_in, _ = seen_by(module, peer.fn)
    p = len(percentages)
    q_in = q_in.view(p, b, c, h, w).transpose(0, 1).reshape(b * p, c, h, w)
    hits = ours_out.argmax(1).view(b, p) == targets.cpu()[:, None]
    accuracy = hits.double().mean(0)
    result["metric_vs_quantus"] = {
        "median_s": {"ours": mine.median, "quantus": peer.median},
        "quantus_over_ours": peer.median / mine.median,
        "max_abs_diff_model_inputs": float((ours_in - q_in).abs().max()),
        "accuracy_ours": accuracy.tolist(),
        "accuracy_quantus": peer.last.tolist(),
        "max_abs_diff_accuracy": float((accuracy - peer.last).abs().max()),
    }
    print("  ", json.dumps(result["metric_vs_quantus"]), flush=True)

    # (c) the metric against its floor
    ours = Contender("ours", ours_metric, warmup=0)
    contenders = [ours, forward_floor(module, x, calls, sync)]
    if device.type == "cpu":
        contenders.insert(1, Contender("ours_cg", cg_metric, warmup=0))
    print("  (c) road vs its floor", flush=True)
    measure(contenders, args.repeats, sync)
    by = {k.name: k for k in contenders}
    floor, impute_s = by["floor"].median, result["imputation"]["median_s"]["ours"]
    result["floor"] = {
        "median_s": {k.name: k.median for k in contenders},
        "imputation_s": impute_s,
        "ours_over_floor": ours.median / floor,
        "ours_over_floor_plus_imputation": ours.median / (floor + impute_s),
        "forwards": Counter(f"{n}{' nhwc' if nhwc else ''}" for n, nhwc in calls),
    }
    if "ours_cg" in by:
        result["floor"]["ours_cg_over_floor"] = by["ours_cg"].median / floor
        diff = (by["ours_cg"].last.values - ours.last.values).abs().max()
        result["floor"]["max_abs_diff_values_ours_cg"] = float(diff)
    print("  ", json.dumps(result["floor"]), flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_metric_inputs(parser, methods="saliency,gradcam")
    parser.add_argument("--percentages", default="10,20,30,40,50,60,70,80,90")
    parser.add_argument("--repeats", type=int, default=2)
    add_device_options(parser)
    parser.add_argument("--out", default="benchmarks/out/metrics_road.json")
    args = parser.parse_args(argv)
    device = setup_device(args)
    sync = make_sync(device)
    rows = []
    for name in args.models.split(","):
        if name == "shapes_cnn":
            model = sl.load_model(name)
            x = sl.data.shapes.make(args.shapes_images, seed=0).images.contiguous()
        else:
            model, x, _ = benchmark_inputs(name, args.images)
        model, x = model.to(device), x.to(device).contiguous()
        module = model.module.eval()
        with torch.inference_mode():
            targets = module(x).argmax(1)
        ex = sl.explain(model, x, methods=args.methods.split(","), target=targets)
        for method in args.methods.split(","):
            maps = tie_free(ex[method].maps)
            rows.append(bench(args, name, method, model, x, targets, maps, device, sync))
    result = {
        "settings": {
            **vars(args),
            "device_name": device_name(device),
            "torch": torch.__version__,
            "quantus": __import__("quantus").__version__,
        },
        "rows": rows,
    }
    print("\nmodel               method    imputation: cg/ours quantus/ours | road_morf: "
          "quantus/ours | road: ours/floor ours_cg/floor ours/(floor+imp)")  # fmt: skip
    for r in rows:
        imp, met, fl = r["imputation"], r["metric_vs_quantus"], r["floor"]
        print(
            f"{r['model']:19s} {r['method']:9s} {imp.get('cg_over_ours', float('nan')):19.2f}"
            f" {imp['quantus_over_ours']:12.2f} | {met['quantus_over_ours']:21.2f} |"
            f" {fl['ours_over_floor']:15.2f} {fl.get('ours_cg_over_floor', float('nan')):13.2f}"
            f" {fl['ours_over_floor_plus_imputation']:16.2f}"
        )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
