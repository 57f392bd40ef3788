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
  Agreement: max |filled image − Quantus'| ≤ `IMPUTE_TOL` × the images' value range for
  `ours` (an exact solve), ≤ `CG_TOL` × that range for `cg` (float32 CG to a relative
  residual 1e-5 leaves errors near 1e-3 of the value range, see `road._conjugate_gradients`;
  on CUDA `ours` is that, and gets that tolerance, also in (b)).
(b) `metric_vs_quantus`: ours `road_morf(percentages=P, noise=0)` against `quantus.ROAD(
  noise=0, normalise=False, abs=False)` on the same maps. Quantus 0.6.0's ROAD cannot run on
  images with C > 1 channels: `evaluate_batch` broadcasts the (B, 1, H, W) map to x's
  (B, C, H, W), sorts the C·H·W entries and hands their indices to `noisy_linear_imputation`,
  which takes pixel indices (< H·W): IndexError (the same with a (B, C, H, W) map; C = 1, as on
  MNIST, works). To run it here its `perturb_func` maps each index i to pixel i mod H·W
  (deduplicated) and its percentages are chosen so that its top int(H·W·p'/100) entries cover
  exactly our floor(p·H·W/100) pixels (a pixel's C tied entries sit together in its order); the
  wrapper checks the pixel counts. Quantus returns, per percentage, the fraction of images
  still predicted as their target (accuracy, MoRF only). One more untimed call of each, with a
  forward hook on the model, gives the inputs the model saw and its logits. Agreements:
  - the model's inputs, ours against Quantus' row by row: max |diff| ≤ `IMPUTE_TOL` × range;
  - our metric's own output: the curves `road_morf` returned (the target's probability per
    percentage) against the softmax of the logits its rows produced, at the targets, and its
    values against the trapezoid areas of those: ≤ `SCORE_TOL`;
  - the same curves against the softmax of the logits of Quantus' rows: ≤ `PEER_SCORE_TOL`
    (≤ `CG_VALUE_TOL` on CUDA, where our rows are filled by the conjugate gradients);
  - accuracy (argmax = target) read from our rows' logits against Quantus' returned accuracy:
    equal. Where it is 0 at every percentage on both sides (MoRF removal of even the smallest
    percentage flips every prediction), or 1 (none flips), the accuracy check tells little:
    the JSON (`accuracy_informative`) and the output say so; the probability checks above still
    hold the metric to Quantus. Percentages around where predictions flip make it informative
    (on the shapes CNN with 2 images and saliency maps: `--percentages 1,50`).
(c) `floor`: ours `road(percentages=P)` (MoRF and LeRF, default noise) against its floor = the
  forwards it ran (`record_passes`: batch sizes and layout) each timed as a plain forward under
  `torch.inference_mode()`, weights frozen (median of up to 3) × how often it ran; and against
  floor + imputation: the same rows' `linear_imputation` (as (a)'s `ours`), timed in the same
  repeats. `ours_cg` is the same metric with the conjugate gradients (the CPU path before); its
  values against ours: max |diff| ≤ `CG_VALUE_TOL`. Our road's curves (LeRF − MoRF) against the
  softmax of the logits of its rows (one more untimed call with a forward hook): ≤ `SCORE_TOL`.

Warm-up: ours is called until the engine's chunk-size search is closed across calls and two
calls ran the same forwards (`harness.settle`, which also records each forward's layout); that
is done before (a) (the chunk size (a) cuts its rows by) and again before (c) (the forwards the
floor replays), and every contender gets one more untimed call (`harness.measure`).

Contenders are timed interleaved (`harness.measure`); ratios are medians of the per-repeat
ratios (`harness.paired`). Agreement gates them: a ratio is None where a check behind it fails
(`harness.valid_ratio`; (a)'s and (b)'s ratios need their part's checks, (c)'s need (b)'s check
of our curves and (c)'s own), every check is printed with its verdict and kept in the JSON, and
the script exits 1 on any failure (`harness.exit_status`). `--clock cpu --threads 1` are the
CPU defaults. With `--device cuda` models, inputs and maps live on the GPU
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
from saliencelab.metrics.faithfulness import road
from saliencelab.metrics.faithfulness.perturbation import ranks_of
from saliencelab.metrics.stats import pixel_order

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    Agreement,
    Contender,
    Stopwatch,
    add_device_options,
    add_metric_inputs,
    benchmark_inputs,
    device_name,
    exit_status,
    frozen,
    make_sync,
    max_abs_agreement,
    measure,
    paired,
    settle,
    setup_device,
    tie_free,
    valid_ratio,
    write_json,
)

IMPUTE_TOL = 1e-5  # × the images' value range: exact solves (float64 inside, float32 out)
CG_TOL = 2e-3  # × the images' value range: float32 conjugate gradients to residual 1e-5
SCORE_TOL = 1e-5  # our probabilities (float32 softmax) against the float64 softmax of its logits
PEER_SCORE_TOL = 1e-4  # against Quantus' logits (its inputs, and layout, differ by round-off)
CG_VALUE_TOL = 1e-3  # road values (areas of probabilities) with CG imputation against ours


def road_masks(maps: torch.Tensor, percentages: list[float]) -> torch.Tensor:
    """(B · 2 · P, 1, H, W) removed pixels of ROAD's rows, in the metric's row order (image,
    then MoRF/LeRF, then percentage), as `road._Road.curves` builds them."""
    b, h, w = maps.shape
    counts = (torch.tensor(percentages, dtype=torch.float64) * h * w / 100).long()
    ranks = torch.stack([ranks_of(pixel_order(maps, descending=o)) for o in (True, False)], 1)
    rows = [ranks[i, o] < n for i in range(b) for o in range(2) for n in counts.tolist()]
    return torch.stack(rows).view(-1, 1, h, w)


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


def settled_calls(fn, module) -> list[tuple[int, bool]]:
    """`harness.settle(fn, module)`: call `fn` until the engine's chunk-size search is closed
    across calls and two calls ran the same forwards; the last call's forwards as (batch size,
    channels-last or not)."""
    log, _ = settle(fn, module)
    return [(n, bool(nhwc)) for (n, _), nhwc in zip(log.calls, log.layouts, strict=True)]


def target_probabilities(logits: torch.Tensor, targets: torch.Tensor, per: int) -> torch.Tensor:
    """(B, per) softmax probability of each row's target, rows image-major (`per` per image)."""
    t = targets.cpu().repeat_interleave(per)
    p = logits.double().softmax(-1).gather(1, t[:, None])[:, 0]
    return p.view(-1, per)


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


def bench(args, name: str, method: str, model, x, targets, maps, device, sync, agreements) -> dict:
    module = model.module
    percentages = [float(p) for p in args.percentages.split(",")]
    b, c, h, w = x.shape
    p = len(percentages)
    masks = road_masks(maps, percentages)
    xs = x.repeat_interleave(2 * p, 0)  # row r is image r // (2P)
    n_rows = len(masks)
    value_range = float(x.max() - x.min()) or 1.0
    # On CUDA our imputation is the conjugate gradients: its tolerances, not an exact solve's.
    exact = device.type == "cpu"
    fill_tol = (IMPUTE_TOL if exact else CG_TOL) * value_range
    peer_score_tol = PEER_SCORE_TOL if exact else CG_VALUE_TOL
    print(f"{name} {method}: {b} images {tuple(x.shape[1:])}, {n_rows} rows", flush=True)
    result: dict = {"model": name, "method": method, "images": b, "rows": n_rows}

    def checked(part: str, checks: list[Agreement]) -> None:
        """Print the checks of a part with their verdicts, keep them, and give them to the JSON."""
        for a in checks:
            print(f"   {a.text()}", flush=True)
        agreements.extend(checks)
        result.setdefault("agreements", {})[part] = [a.as_dict() for a in checks]

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
        contenders.append(Contender("cg", impute(cg)))
    contenders.append(Contender("quantus", quantus_impute))
    print("  (a) imputation alone", flush=True)
    measure(contenders, args.repeats, sync)
    by = {k.name: k for k in contenders}
    q = torch.from_numpy(by["quantus"].last).double()
    tols = {"ours": fill_tol, "cg": CG_TOL * value_range}
    impute_checks = {
        k.name: max_abs_agreement(
            k.last, q, tols[k.name], f"imputation: max |{k.name} − quantus| of the filled images"
        )
        for k in contenders[:-1]
    }
    result["imputation"] = {
        "median_s": {k.name: k.median for k in contenders},
        "quantus_over_ours": valid_ratio(
            paired(by["quantus"], by["ours"]), [impute_checks["ours"]]
        ),
    }
    if "cg" in by:
        result["imputation"]["cg_over_ours"] = valid_ratio(
            paired(by["cg"], by["ours"]), list(impute_checks.values())
        )
    print("  ", json.dumps(result["imputation"]), flush=True)
    checked("imputation", list(impute_checks.values()))

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
    # What the model saw and answered: our rows (image-major), Quantus' (percentage-major).
    ours_in, ours_out = seen_by(module, ours_morf)
    q_in, q_out = seen_by(module, peer.fn)
    q_in = q_in.view(p, b, c, h, w).transpose(0, 1).reshape(b * p, c, h, w)
    q_out = q_out.view(p, b, -1).transpose(0, 1).reshape(b * p, -1)
    curves = mine.last.curves.double().cpu()  # what road_morf returned: P(target) per percentage
    from_logits = target_probabilities(ours_out, targets, p)
    from_quantus = target_probabilities(q_out, targets, p)
    x_axis = torch.tensor(percentages, dtype=torch.float64) / 100
    hits = ours_out.argmax(1).view(b, p) == targets.cpu()[:, None]
    accuracy = hits.double().mean(0)
    both = torch.cat([accuracy, peer.last])
    informative = not (bool((both == 0).all()) or bool((both == 1).all()))
    morf_checks = [
        max_abs_agreement(ours_in, q_in, fill_tol, "road_morf: max |ours − quantus| of the inputs"),
        max_abs_agreement(
            curves, from_logits, SCORE_TOL, "road_morf: max |curves − softmax(its logits)|"
        ),
        max_abs_agreement(
            mine.last.values,
            torch.trapezoid(from_logits, x_axis, dim=-1),
            SCORE_TOL,
            "road_morf: max |values − area of softmax(its logits)|",
        ),
        max_abs_agreement(
            curves,
            from_quantus,
            peer_score_tol,
            "road_morf: max |curves − softmax(quantus logits)|",
        ),
        max_abs_agreement(
            accuracy, peer.last, 1e-12, "road_morf: max |accuracy − quantus accuracy|"
        ),
    ]
    result["metric_vs_quantus"] = {
        "median_s": {"ours": mine.median, "quantus": peer.median},
        "quantus_over_ours": valid_ratio(paired(peer, mine), morf_checks),
        "accuracy_ours": accuracy.tolist(),
        "accuracy_quantus": peer.last.tolist(),
        "accuracy_informative": informative,
        "curve_ours_mean": curves.mean(0).tolist(),
    }
    print("  ", json.dumps(result["metric_vs_quantus"]), flush=True)
    checked("metric_vs_quantus", morf_checks)
    if not informative:
        print(
            f"   accuracy check uninformative: {accuracy.tolist()} on both sides (every "
            "prediction flipped, or none, at every percentage); percentages around where they "
            "flip make it informative",
            flush=True,
        )

    # (c) the metric against its floor (settled again: (a) and (b) ran other passes)
    calls = settled_calls(ours_metric, module)
    ours = Contender("ours", ours_metric)
    imputation = Contender("imputation", impute(road.linear_imputation))
    floor = forward_floor(module, x, calls, sync)
    contenders = [ours, floor, imputation]
    if device.type == "cpu":
        contenders.insert(1, Contender("ours_cg", cg_metric))
    print("  (c) road vs its floor", flush=True)
    measure(contenders, args.repeats, sync)
    by = {k.name: k for k in contenders}
    _, road_out = seen_by(module, ours_metric)
    probs = target_probabilities(road_out, targets, 2 * p).view(b, 2, p)  # (image, order, pct)
    floor_checks = [
        max_abs_agreement(
            ours.last.curves,
            probs[:, 1] - probs[:, 0],
            SCORE_TOL,
            "road: max |curves − softmax(its logits), LeRF − MoRF|",
        )
    ]
    if "ours_cg" in by:
        floor_checks.append(
            max_abs_agreement(
                by["ours_cg"].last.values,
                ours.last.values,
                CG_VALUE_TOL,
                "road: max |ours_cg − ours| of the values",
            )
        )
    gate = [*floor_checks[:1], morf_checks[1], morf_checks[2]]  # our metric's own output
    plus_imputation = statistics.median(
        o / (f + i) for o, f, i in zip(ours.times, floor.times, imputation.times, strict=True)
    )
    result["floor"] = {
        "median_s": {k.name: k.median for k in contenders},
        "ours_over_floor": valid_ratio(paired(ours, floor), gate),
        "ours_over_floor_plus_imputation": valid_ratio(plus_imputation, gate),
        "forwards": Counter(f"{n}{' nhwc' if nhwc else ''}" for n, nhwc in calls),
    }
    if "ours_cg" in by:
        result["floor"]["ours_cg_over_floor"] = valid_ratio(
            paired(by["ours_cg"], floor), gate + floor_checks[1:]
        )
    print("  ", json.dumps(result["floor"]), flush=True)
    checked("floor", floor_checks)
    return result


def fmt(ratio: float | None, width: int) -> str:
    return f"{'None':>{width}s}" if ratio is None else f"{ratio:{width}.2f}"


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
    agreements: list[Agreement] = []
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
            rows.append(
                bench(args, name, method, model, x, targets, maps, device, sync, agreements)
            )
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
          "quantus/ours | road: ours/floor ours_cg/floor ours/(floor+imp) | checks")  # fmt: skip
    nan = float("nan")
    for r in rows:
        imp, met, fl = r["imputation"], r["metric_vs_quantus"], r["floor"]
        every = [a for part in r["agreements"].values() for a in part]
        failed = sum(not a["ok"] for a in every)
        verdict = f"{failed} of {len(every)} DISAGREE" if failed else f"all {len(every)} agree"
        if not met["accuracy_informative"]:
            verdict += " (accuracy uninformative)"
        print(
            f"{r['model']:19s} {r['method']:9s} {fmt(imp.get('cg_over_ours', nan), 19)}"
            f" {fmt(imp['quantus_over_ours'], 12)} | {fmt(met['quantus_over_ours'], 21)} |"
            f" {fmt(fl['ours_over_floor'], 15)} {fmt(fl.get('ours_cg_over_floor', nan), 13)}"
            f" {fmt(fl['ours_over_floor_plus_imputation'], 16)} | {verdict}"
        )
    result["exit_status"] = exit_status(agreements)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    sys.exit(main()["exit_status"])
