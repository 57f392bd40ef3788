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
  forward+backward pass (weights frozen) at the chunk size our engine used.

Reported: ours/floor, quantus/ours, captum/ours (median over interleaved repeats, the chosen
clock), and the max relative difference of the values. The shapes CNN is `sl.load_model(
"shapes_cnn")` when it exists; otherwise a small 64×64 CNN stand-in (said so in the output).

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

import numpy as np
import torch

import saliencelab as sl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    Contender,
    Floor,
    add_device_options,
    benchmark_inputs,
    device_name,
    make_sync,
    measure,
    paired,
    recorded,
    setup_device,
    write_json,
)


def run_model(config: str, args: argparse.Namespace, device: torch.device) -> dict:
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

    c_ours = recorded("ours", ours, module)
    contenders = [c_ours]
    c_ours.fn()  # first call: records our passes (and warms up)
    c_ours.warmup = 0
    chunk = c_ours.passes.chunk() or b * n
    chunk_box["chunk"] = chunk
    floor = Floor(module, x, targets, sync).contender(b * n, chunk)
    contenders += [
        Contender("quantus", quantus_run),
        Contender("captum", captum_run),
        floor,
    ]
    repeats = args.repeats if name == "efficientnet_lite0" else args.small_repeats
    measure(contenders, repeats, sync)
    by = {c.name: c for c in contenders}
    v_ours = by["ours"].last.double().cpu()  # compared on the CPU
    agree = {
        k: float(((by[k].last.double().cpu() - v_ours).abs() / v_ours.abs().clamp_min(1e-12)).max())
        for k in ("quantus", "captum")
    }
    grad_rows = c_ours.passes.rows("grad")
    result = {
        "model": label,
        "images": b,
        "samples": n,
        "radius": radius,
        "chunk": chunk,
        "grad_rows_ours": grad_rows,
        "forward_rows_ours": c_ours.passes.rows("forward"),
        "median_s": {c.name: c.median for c in contenders},
        "ratios": {
            "ours_over_floor": paired(by["ours"], floor),
            "quantus_over_ours": paired(by["quantus"], by["ours"]),
            "captum_over_ours": paired(by["captum"], by["ours"]),
        },
        "max_rel_diff_of_values": agree,
        "values_ours": v_ours.tolist(),
    }
    print(json.dumps(result["ratios"], indent=2), flush=True)
    print("max rel diff:", agree, "grad rows", grad_rows, "chunk", chunk, flush=True)
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
    results = {
        "settings": {
            "device": device_name(device),
            "clock": args.clock,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "quantus": __import__("quantus").__version__,
            "captum": __import__("captum").__version__,
        },
        "models": [run_model(c, args, device) for c in args.configs.split(",")],
    }
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
