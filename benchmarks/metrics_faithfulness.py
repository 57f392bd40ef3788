"""Faithfulness metrics: saliencelab against Quantus 0.6.0, and against the floor.

    .venv/bin/python benchmarks/metrics_faithfulness.py [--device cpu|cuda] [--clock cpu]
        [--threads 1] [--models efficientnet_lite0,shapes_cnn] [--methods gradcam,saliency]
        [--images 2] [--shapes-images 8] [--repeats 2] [--chunk K]
        [--out benchmarks/out/metrics_faithfulness.json]

For each model (EfficientNet-Lite0 at 224×224 on `sl.sample_images()`, the shapes CNN at 64×64
on `sl.data.shapes.make`), each method's maps (`sl.explain`, targets = predicted classes) and
each metric, with the SAME settings on both sides:

- pixel flipping: ours `deletion(steps=S)` vs `quantus.PixelFlipping(features_in_step=
  C·H·W/S, perturb_baseline=0)` (S whole-pixel steps; Quantus' check that features_in_step
  divides H·W is switched off, as it cannot hold together with whole pixels when H·W has no
  factor 3); Quantus' curve is ours without its k = 0 point;
- region perturbation: ours `aopc_morf(patch_size=P, regions=L)` vs
  `quantus.RegionPerturbation(patch_size=P, regions_evaluation=L, order="morf")`;
- faithfulness correlation: ours `faithfulness_correlation(unit="element")` fed the very
  subsets Quantus draws (numpy seeded and replayed) vs `quantus.FaithfulnessCorrelation`;

all with Quantus' default scores (softmax for the first two, logits for faithfulness
correlation, as ours), `normalise=False, abs=False` in Quantus, and maps made tie-free (a
1e-6 raster ramp in float64, given to both) so both rank pixels identically.

Warm-up: ours is called until the engine's chunk-size search is closed across calls and two
calls ran the same forwards (`harness.settle`); the last of those calls gives the chunk size
(the most common batch size of its forwards) and the memory layout its rows ran in. The floor
is the forwards ours ran × the measured cost of one plain forward (inference mode, weights
frozen) at that chunk size, in that layout (channels-last on CPU where the engine picks it),
so that ours/floor measures overhead, not layout. Quantus and the floor get one untimed call.

Agreement gates every ratio: our curves (without the k = 0 point) or values against Quantus',
max |diff| ≤ `TOL` (`harness.max_abs_agreement`: NaN on one side only, or NaN everywhere,
fails; NaN on both sides, a constant side such as a saturated probability, is allowed). The
line of each case prints the check and its verdict, the JSON keeps it; a ratio whose agreement
fails is None (`harness.valid_ratio`), and the script exits 1 (`harness.exit_status`). Ratios
are medians of the per-repeat ratios (`harness.paired`).

Reported per case: ours/floor, Quantus/ours and the agreement. `--clock cpu` (process CPU
time) is the steady measure on a shared machine; use it with `--threads 1` (the defaults on
CPU). With `--device cuda` the model, inputs, maps and targets live on the GPU, Quantus runs
with `device="cuda"`, every timer synchronises the GPU, and the clock defaults to wall (CPU
time does not count GPU work); `--threads` is then left to torch unless given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

import saliencelab as sl
from saliencelab.core.engine import Engine
from saliencelab.metrics import make_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    Agreement,
    Contender,
    Stopwatch,
    add_device_options,
    add_metric_inputs,
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

# max |ours − Quantus| allowed: the curves are probabilities in [0, 1]; the faithfulness
# correlation is a correlation in [−1, 1] of logit drops, where float32 round-off of the logits
# (our rows channels-last in chunks, Quantus' NCHW per step) is divided by the drops' spread.
TOL = {"curve": 1e-4, "value": 1e-3}


def forward_floor(
    module, x: torch.Tensor, rows: int, chunk: int, sync, channels_last: bool = False
) -> Contender:
    """(wall, cpu) of `rows` rows as plain forwards of `chunk` rows (median of 3, scaled), the
    rows in channels-last memory layout when `channels_last` (the layout our passes ran in:
    `PassLog.ran_channels_last()`), else contiguous."""
    chunk = max(1, min(chunk, rows))
    full, rest = divmod(rows, chunk)
    layout = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
    batch = x.repeat(-(-chunk // len(x)), 1, 1, 1)[:chunk].contiguous(memory_format=layout)

    def one(n: int) -> Stopwatch:
        with frozen(module), torch.inference_mode(), Stopwatch(sync) as sw:
            module(batch[:n])
        return sw

    def run() -> tuple[float, float]:
        per = [one(chunk) for _ in range(3)]
        wall = full * statistics.median(p.wall for p in per)
        cpu = full * statistics.median(p.cpu for p in per)
        if rest:
            last = one(rest)
            wall, cpu = wall + last.wall, cpu + last.cpu
        return wall, cpu

    return Contender("floor", run, self_timed=True)


def cases(args, model, x, maps, targets):
    """(name, ours fn → (values, curves), quantus fn → same, compare key) per metric."""
    import quantus

    module = model.module
    b, c, h, w = x.shape

    def run(metric):
        """The metric on the batch, as `metric(maps, x=..., model=..., target=...)` runs it;
        with `--chunk k` through an engine of fixed chunk size k (sl.evaluate(chunk_size=k))."""

        def call():
            engine = Engine(model, chunk_size=args.chunk) if args.chunk else None
            batch = make_batch(maps, x=x, model=model, target=targets, engine=engine)
            metric.reset()
            metric.update(batch=batch)
            return metric.compute()

        return call

    # Quantus takes numpy arrays and moves them to `device` itself (torch.Tensor(x).to(device)).
    xn, yn, an = x.cpu().numpy(), targets.cpu().numpy(), maps[:, None].cpu().numpy()
    common = {"normalise": False, "abs": False, "disable_warnings": True}
    call = {"model": module, "x_batch": xn, "y_batch": yn, "a_batch": an, "device": args.device}
    out = []

    steps = args.steps
    if (h * w) % steps:
        raise SystemExit(f"--steps must divide H·W = {h * w}")
    deletion = sl.metrics.get("deletion")(steps=steps)
    pf = quantus.PixelFlipping(features_in_step=c * h * w // steps, perturb_baseline=0.0, **common)
    # Quantus asserts features_in_step | H·W; whole pixels need C | features_in_step, and with
    # C = 3 and H·W = 2^k·7^2 both never hold. The assert only checks; switch it off.
    pf.custom_preprocess = lambda **kwargs: None
    out.append(
        (
            f"deletion(steps={steps})",
            run(deletion),
            lambda: np.asarray(pf(**call, softmax=True)),
            "curve",
        )
    )

    patch, regions = args.patch, args.regions
    aopc = sl.metrics.get("aopc_morf")(patch_size=patch, regions=regions)
    rp = quantus.RegionPerturbation(
        patch_size=patch, regions_evaluation=regions, order="morf", perturb_baseline=0.0, **common
    )
    out.append(
        (
            f"aopc_morf(patch={patch}, regions={regions})",
            run(aopc),
            lambda: np.asarray(rp(**call, softmax=True)),
            "curve",
        )
    )

    runs, size = args.runs, args.subset
    np.random.seed(0)
    draws = [
        [np.random.choice(c * h * w, size, replace=False) for _ in range(b)] for _ in range(runs)
    ]
    subsets = torch.from_numpy(np.array(draws)).transpose(0, 1)
    fc = sl.metrics.get("faithfulness_correlation")(
        subset_size=size, n_samples=runs, unit="element", subsets=subsets
    )
    qfc = quantus.FaithfulnessCorrelation(
        nr_runs=runs, subset_size=size, perturb_baseline=0.0, return_aggregate=False, **common
    )

    def quantus_fc():
        np.random.seed(0)  # the draws replayed above
        return np.asarray(qfc(**call, softmax=False))

    out.append(
        (
            f"faithfulness_correlation(runs={runs}, subset={size})",
            run(fc),
            quantus_fc,
            "value",
        )
    )
    return out


def bench_model(
    args, name: str, device: torch.device, sync, agreements: list[Agreement]
) -> list[dict]:
    model = sl.load_model(name).to(device)
    module = model.module.eval()
    if name == "shapes_cnn":
        from saliencelab.data import shapes

        # contiguous: the einsum in shapes.make gives another layout on some torch versions
        x = shapes.make(args.shapes_images, seed=0).images.to(device).contiguous()
    else:
        photos = sl.sample_images()
        names = [photos[i % len(photos)] for i in range(args.images)]
        x = model.preprocess([sl.sample_image(n) for n in names]).to(device)
    with torch.inference_mode():
        targets = module(x).argmax(1)
    ex = sl.explain(model, x, methods=args.methods.split(","), target=targets)
    rows = []
    for method in args.methods.split(","):
        maps = tie_free(ex[method].maps.to(device))
        for label, ours_fn, quantus_fn, key in cases(args, model, x, maps, targets):
            print(f"{name} {tuple(x.shape)} {method} {label}", flush=True)
            # Until the chunk-size search is closed across calls (core/batching.py): the last
            # call's forwards are what every timed call runs.
            log, result = settle(ours_fn, module)
            chunk = Counter(n for n, _ in log.calls).most_common(1)[0][0]
            channels_last = log.ran_channels_last()
            n_rows = int(round(result.forwards * len(x)))
            ours = Contender("ours", ours_fn)
            peer = Contender("quantus", quantus_fn)
            floor = forward_floor(module, x, n_rows, chunk, sync, channels_last)
            measure([ours, peer, floor], args.repeats, sync)
            agreement = agree(ours.last, peer.last, key)
            row = {
                "model": name,
                "input": list(x.shape),
                "method": method,
                "metric": label,
                "forwards_per_sample": result.forwards,
                "chunk": chunk,
                "channels_last": channels_last,
                "seconds": {c.name: c.median for c in (ours, peer, floor)},
                "ours_over_floor": valid_ratio(paired(ours, floor), [agreement]),
                "quantus_over_ours": valid_ratio(paired(peer, ours), [agreement]),
                "agreement": agreement.as_dict(),
            }
            print(
                f"  ours/floor {fmt(row['ours_over_floor'], '.3f')}   quantus/ours "
                f"{fmt(row['quantus_over_ours'], '.2f')}   {agreement.text()}",
                flush=True,
            )
            rows.append(row)
            agreements.append(agreement)
    return rows


def agree(ours: Any, quantus: Any, key: str) -> Agreement:
    """Our curves without their k = 0 point (Quantus' curve starts after the first step), or our
    values, against Quantus' (numpy, on the CPU)."""
    mine = ours.curves[:, 1:] if key == "curve" else ours.values
    q = torch.as_tensor(quantus, dtype=torch.float64)
    return max_abs_agreement(mine, q, TOL[key], f"max |ours − quantus| of the {key}s")


def fmt(ratio: float | None, spec: str) -> str:
    return "None (disagree)" if ratio is None else format(ratio, spec)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_metric_inputs(parser, methods="gradcam,saliency")
    parser.add_argument("--steps", type=int, default=16, help="deletion steps (divides H·W)")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--regions", type=int, default=16)
    parser.add_argument("--runs", type=int, default=16, help="faithfulness correlation draws")
    parser.add_argument("--subset", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--chunk", type=int, default=None, help="fixed chunk size (default: the engine's)"
    )
    add_device_options(parser)
    parser.add_argument("--out", default="benchmarks/out/metrics_faithfulness.json")
    args = parser.parse_args(argv)
    device = setup_device(args)
    warnings.filterwarnings("ignore")
    sync = make_sync(device)
    rows: list[dict] = []
    agreements: list[Agreement] = []
    for name in args.models.split(","):
        rows += bench_model(args, name, device, sync, agreements)
    result = {
        "settings": {
            **vars(args),
            "device_name": device_name(device),
            "torch": torch.__version__,
            "quantus": "0.6.0",
        },
        "rows": rows,
    }
    print("\nmodel               method    metric                                   "
          "ours/floor  quantus/ours  max|diff| (tol)  agreement")  # fmt: skip
    for r in rows:
        a = r["agreement"]
        nan = f", {a['nan_mismatches']} NaN mismatches" if a["nan_mismatches"] else ""
        nan += ", all NaN" if a["all_nan"] else ""
        print(
            f"{r['model']:19s} {r['method']:9s} {r['metric']:40s} "
            f"{fmt(r['ours_over_floor'], '10.3f'):>10s}"
            f"  {fmt(r['quantus_over_ours'], '12.2f'):>12s}"
            f"  {a['diff']:.1e} ({a['tol']:.0e}{nan})  {'ok' if a['ok'] else '**DISAGREE**'}"
        )
    result["exit_status"] = exit_status(agreements)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    sys.exit(main()["exit_status"])
