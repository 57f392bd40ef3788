"""Max-sensitivity of saliency maps: saliencelab against Quantus and Captum, and against the floor.

    .venv/bin/python benchmarks/metrics_robustness.py
        [--configs efficientnet_lite0:2x8,shapes_cnn:2x16,shapes_cnn:8x16] [--radius 0.02]
        [--repeats 3] [--small-repeats 9] [--device cpu|cuda] [--clock cpu] [--threads 1]
        [--out benchmarks/out/metrics_robustness.json]

Each config is MODEL:IMAGESxSAMPLES.

On each model, with the same module, images, targets (the predicted classes), maps and noise:

- `ours`: `sl.metrics.get("max_sensitivity")(radius, n_samples).update(maps, x=..., model=...,
  explainer="saliency")`: all B · n noisy copies explained in one explainer call, chunked by the
  engine;
- `quantus`: `quantus.MaxSensitivity(nr_samples=n, normalise=False, abs=False)` with Captum's
  `Saliency(abs=True)` summed over channels as `explain_func` (a Quantus user's setup), fed our
  noise through its `perturb_func` so the values can be compared exactly; it explains one noise
  step (B rows) per pass;
- `captum`: `captum.metrics.sensitivity_max` with the same explanation function and noise,
  `max_examples_per_batch` = our chunk size (it also recomputes e(x), B more rows);
- `floor`: the B · n forward+backward rows the metric needs × the measured cost of one plain
  forward+backward pass (weights frozen) at the chunk size our engine used, the rows in the
  memory layout our passes ran in (`PassLog.ran_channels_last`: channels-last on CPU where the
  engine picks it), so that ours/floor measures overhead, not layout.

Warm-up: ours is called until the engine's chunk-size search is closed across calls and two
calls ran the same passes (`harness.settle`); the last of those calls gives the chunk size and
the layout. Every contender then gets one more untimed call (`harness.measure`).

Agreement gates the ratios: Quantus' and Captum's values against ours, max relative
difference |peer − ours| / |ours| ≤ `REL_TOL` per value (NaN on one side only, or everywhere,
fails: `harness.max_abs_agreement`). Each check is printed with its verdict and kept in the
JSON; a ratio whose agreement fails is None (`harness.valid_ratio`: ours/floor needs both, a
peer's ratio its own), and the script exits 1 (`harness.exit_status`).

Reported: ours/floor, quantus/ours, captum/ours (median over interleaved repeats of the
per-repeat ratios, `harness.paired`, the chosen clock), and the agreements. The shapes CNN is
`sl.load_model("shapes_cnn")` when it exists; otherwise a small 64×64 CNN stand-in (said so in
the output).

With `--device cuda` the module, images, targets, maps and noise live on the GPU (Quantus gets
`device="cuda"` and numpy copies, its explanation function moves them back), every timer
synchronises the GPU, and the clock defaults to wall (CPU time does not count GPU work);
`--threads` is then left to torch unless given. On CPU: `--clock cpu --threads 1`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import saliencelab as sl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    Agreement,
    Contender,
    Floor,
    add_device_options,
    benchmark_inputs,
    device_name,
    exit_status,
    make_sync,
    max_abs_agreement,
    measure,
    paired,
    settle,
    setup_device,
    valid_ratio,
    write_json,
)

# Max relative difference |peer − ours| / |ours| of the values: the same noise and maps on every
# side, so only float32 round-off of the gradients differs (our rows channels-last in chunks,
# the peers' NCHW in other batches), relative to a max of norms.
REL_TOL = 1e-4


def relative_agreement(ours: Any, peer: Any, what: str) -> Agreement:
    """max |peer − ours| / |ours| (|ours| at least 1e-12) per value, NaN-aware: both sides are
    divided by the same scale (1 where ours is not finite), so NaN stays where it was."""
    o = torch.as_tensor(ours).detach().double().cpu()
    p = torch.as_tensor(peer).detach().double().cpu()
    scale = o.abs().nan_to_num(nan=1.0, posinf=1.0).clamp_min(1e-12)
    return max_abs_agreement(o / scale, p / scale, REL_TOL, what)


def run_model(
    config: str, args: argparse.Namespace, device: torch.device, agreements: list[Agreement]
) -> dict:
    import quantus
    from captum.attr import Saliency
    from captum.metrics import sensitivity_max

    name, _, sizes = config.partition(":")
    images, samples = (int(v) for v in (sizes or "2x8").split("x"))
    model, x, label = benchmark_inputs(name, images)  # on the CPU
    model, x = model.to(device), x.to(device).contiguous()  # shapes: layout varies by torch
    module = model.module.eval()
    sync = make_sync(device)
    with torch.no_grad():
        targets = module(x).argmax(1)
    b, n, radius = x.shape[0], samples, args.radius
    maps = sl.explain(model, x, "saliency", target=targets)["saliency"].maps
    metric = sl.metrics.get("max_sensitivity")(radius=radius, n_samples=n, seed=0)
    from saliencelab.metrics.robustness._noisy import draw_noise

    noise = draw_noise(x, n, radius, "uniform", 0)  # the same noise for everyone (x's device)
    steps = noise.view(b, n, -1).cpu().numpy()  # Quantus perturbs numpy arrays
    print(f"{label}: {b} images {tuple(x.shape[1:])}, {n} samples, radius {radius}", flush=True)

    def ours():
        metric.reset()
        metric.update(maps, x=x, model=model, target=targets, explainer="saliency")
        return metric.compute().values

    def saliency_maps(inputs, target):
        if isinstance(inputs, tuple):  # Captum's sensitivity_max hands (and wants) tuples
            return (saliency_maps(inputs[0], target),)
        return Saliency(module).attribute(inputs, target=target, abs=True).sum(1)

    def quantus_run():
        state = {"s": 0}

        def perturb(arr, indices=None, **kwargs):
            out = arr + steps[:, state["s"]]
            state["s"] += 1
            return out

        def explain(model, inputs, targets, **kwargs):  # numpy in, numpy out
            t = torch.as_tensor(targets, device=device).long()
            xs = torch.as_tensor(inputs, device=device)
            return saliency_maps(xs, t)[:, None].detach().cpu().numpy()

        q = quantus.MaxSensitivity(
            nr_samples=n, perturb_func=perturb, normalise=False, abs=False, disable_warnings=True
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = q(
                model=module,
                x_batch=x.cpu().numpy(),
                y_batch=targets.cpu().numpy(),
                a_batch=maps[:, None].cpu().numpy(),
                explain_func=explain,
                device=args.device,
            )
        return torch.tensor(np.asarray(out), dtype=torch.float64)

    chunk_box = {"chunk": 8}

    def captum_run():
        state = {"s": 0}
        per_sample = noise.view(b, n, *x.shape[1:])

        def perturb(inp):  # Captum asks for k copies of each sample per call, sample-major
            k = inp.shape[0] // b
            d = per_sample[:, state["s"] : state["s"] + k].reshape(inp.shape)
            state["s"] += k
            return inp + d

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = sensitivity_max(
                saliency_maps,
                x,
                perturb_func=perturb,
                n_perturb_samples=n,
                max_examples_per_batch=max(b, min(b * n, chunk_box["chunk"])),
                target=targets,
            )
        return values.double()

    # Until the chunk-size search is closed across calls: the last call's passes are what
    # every timed call runs (its chunk size, its layout).
    log, _ = settle(ours, module)
    chunk = log.chunk() or b * n
    chunk_box["chunk"] = chunk
    channels_last = log.ran_channels_last()
    floor = Floor(module, x, targets, sync, channels_last=channels_last).contender(b * n, chunk)
    contenders = [
        Contender("ours", ours),
        Contender("quantus", quantus_run),
        Contender("captum", captum_run),
        floor,
    ]
    repeats = args.repeats if name == "efficientnet_lite0" else args.small_repeats
    measure(contenders, repeats, sync)
    by = {c.name: c for c in contenders}
    v_ours = by["ours"].last.double().cpu()  # compared on the CPU
    checks = {
        k: relative_agreement(v_ours, by[k].last, f"max rel |{k} − ours| of the values")
        for k in ("quantus", "captum")
    }
    grad_rows = log.rows("grad")
    result = {
        "model": label,
        "images": b,
        "samples": n,
        "radius": radius,
        "chunk": chunk,
        "channels_last": channels_last,
        "grad_rows_ours": grad_rows,
        "forward_rows_ours": log.rows("forward"),
        "median_s": {c.name: c.median for c in contenders},
        "ratios": {
            "ours_over_floor": valid_ratio(paired(by["ours"], floor), list(checks.values())),
            "quantus_over_ours": valid_ratio(
                paired(by["quantus"], by["ours"]), [checks["quantus"]]
            ),
            "captum_over_ours": valid_ratio(paired(by["captum"], by["ours"]), [checks["captum"]]),
        },
        "agreements": {k: a.as_dict() for k, a in checks.items()},
        "values_ours": v_ours.tolist(),
    }
    print(json.dumps(result["ratios"], indent=2), flush=True)
    for a in checks.values():
        print(f"  {a.text()}", flush=True)
    print(f"  grad rows {grad_rows}, chunk {chunk}, channels-last {channels_last}", flush=True)
    agreements.extend(checks.values())
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", default="efficientnet_lite0:2x8,shapes_cnn:2x16,shapes_cnn:8x16"
    )
    parser.add_argument("--radius", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3, help="on EfficientNet-Lite0")
    parser.add_argument("--small-repeats", type=int, default=9, help="on the 64×64 CNN")
    add_device_options(parser)
    parser.add_argument("--out", default="benchmarks/out/metrics_robustness.json")
    args = parser.parse_args(argv)
    device = setup_device(args)
    agreements: list[Agreement] = []
    results = {
        "settings": {
            "device": device_name(device),
            "clock": args.clock,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "quantus": __import__("quantus").__version__,
            "captum": __import__("captum").__version__,
        },
        "models": [run_model(c, args, device, agreements) for c in args.configs.split(",")],
    }
    results["exit_status"] = exit_status(agreements)
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    sys.exit(main()["exit_status"])
