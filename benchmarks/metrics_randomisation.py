"""Model-parameter randomisation (MPRT): saliencelab against Quantus, and against the floor.

    .venv/bin/python benchmarks/metrics_randomisation.py [--models efficientnet_lite0,shapes_cnn]
        [--images efficientnet_lite0=2,shapes_cnn=8] [--layers efficientnet_lite0=4,shapes_cnn=all]
        [--repeats 3] [--device cpu|cuda] [--clock cpu] [--threads 1]
        [--out benchmarks/out/metrics_randomisation.json]

On each model, with the same module, images, targets (the predicted classes), maps and the same
randomisation (cascading from the output, one parameterised layer per step, the top L layers):

- `ours`: `sl.metrics.get("model_randomisation")(granularity="layer", layers=L, seed=43,
  seeding="same", similarity="spearman_abs").update(maps, x=..., model=..., explainer="saliency")`
  (`seeding="same"`: Quantus' seeding, not our default per-layer seeds, so that the weights
  match Quantus'; the cost is the same either way): the L randomised models as one
  explanation call of L·B rows (each randomised layer computes each row with its step's
  weights, `core/row_versions.py`), chunked by the engine;
- `ours_stepwise`: the same with `batched=False`: the model randomised in place, one explanation
  call of B rows per step (its curves must equal ours to rounding);
- `quantus`: `quantus.MPRT(layer_order="top_down", seed=42, abs=True, normalise=True,
  similarity_func=correlation_spearman)` with Captum's `Saliency(abs=True)` summed over channels
  as `explain_func` (a Quantus user's setup). Quantus re-seeds `seed + 1` before each layer's
  `reset_parameters()`, the same draws as ours with seed 43 and `seeding="same"`, so the
  per-layer similarities must agree. Quantus randomises every module that has
  `reset_parameters`; to give it the same top L layers the other modules' `reset_parameters`
  are hidden from it (their class swapped for a subclass where the attribute raises
  AttributeError) for the duration of its call. It also recomputes the unrandomised
  explanation (its "original" entry): L + 1 explanation passes;
- `quantus_sl`: the same Quantus call with `sl.explain(..., "saliency")` as `explain_func`: the
  cost of Quantus' machinery around the same explanation as ours;
- `floor`: L explanation passes (B rows each, forward + backward, weights frozen) at the chunk
  size our engine used, the rows in the memory layout our passes ran in
  (`PassLog.ran_channels_last`: channels-last on CPU where the engine picks it), so that
  ours/floor measures overhead, not layout.

Warm-up: ours is called until the engine's chunk-size search is closed across calls and two
calls ran the same passes (`harness.settle`); the last of those calls gives the chunk size and
the layout. Every contender then gets one more untimed call (`harness.measure`).

Agreement gates the ratios: the per-layer similarity curves of ours_stepwise, quantus and
quantus_sl against ours, max |diff| ≤ `TOL` (Spearman correlations in [−1, 1]; NaN on one side
only, or everywhere, fails: `harness.max_abs_agreement`). Each check is printed with its
verdict and kept in the JSON; a ratio whose agreement fails is None (`harness.valid_ratio`:
a ratio needs the checks of the contenders in it; ours/floor needs all of them), and the
script exits 1 (`harness.exit_status`).

Reported: ours/floor, stepwise/ours, stepwise/floor, quantus/ours, quantus_sl/ours (median over
interleaved repeats of the per-repeat ratios, `harness.paired`, chosen clock), our explanation
calls, and the agreements. The
shapes CNN is `sl.load_model("shapes_cnn")` when it exists; otherwise a small 64×64 CNN stand-in
(said so in the output).

With `--device cuda` the module, images, targets and maps live on the GPU (Quantus gets
`device="cuda"` and numpy copies, the explanation functions move them back; ours draws the new
weights on the CPU, and so does Quantus here: the kept layers' `reset_parameters` moves the layer
to the CPU for the draw, so the randomisations still match), every timer synchronises the
GPU, and the clock defaults to wall (CPU time does not count GPU work); `--threads` is then left
to torch unless given. On CPU: `--clock cpu --threads 1`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

import saliencelab as sl
from saliencelab.metrics.randomisation import select_stages

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

# Max |diff| of the per-layer Spearman similarities (in [−1, 1]): the same randomised weights
# on every side, so only float32 round-off of the saliency maps differs (ours channels-last in
# chunks of L·B rows, the others NCHW per step); it can swap the ranks of near-equal pixels.
TOL = 1e-4


def _no_attribute(self):
    raise AttributeError("reset_parameters hidden for this benchmark")


def _reset_on_cpu(cls):
    """`cls.reset_parameters` drawn on the CPU and moved back (as ours draws, so that the same
    seed gives the same weights on a GPU; Quantus' own call would draw from the CUDA
    generator)."""

    def reset_parameters(self):
        device = next(t.device for t in self.state_dict().values())
        self.to("cpu")
        cls.reset_parameters(self)
        self.to(device)

    return reset_parameters


@contextmanager
def only_resettable(module: nn.Module, keep: set[str], draw_on_cpu: bool = False):
    """Hide `reset_parameters` of every module not in `keep` from `hasattr` (Quantus' test);
    with `draw_on_cpu`, the kept modules draw their new weights on the CPU."""
    swapped, made = [], {}
    for name, m in module.named_modules():
        if not hasattr(m, "reset_parameters"):
            continue
        cls, kept = type(m), name in keep
        if kept and not draw_on_cpu:
            continue
        if (cls, kept) not in made:
            reset = _reset_on_cpu(cls) if kept else property(_no_attribute)
            made[cls, kept] = type(cls.__name__, (cls,), {"reset_parameters": reset})
        m.__class__ = made[cls, kept]
        swapped.append((m, cls))
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls


def run_model(
    name: str,
    layers: int | None,
    images: int,
    args: argparse.Namespace,
    device: torch.device,
    agreements: list[Agreement],
) -> dict:
    import quantus
    from captum.attr import Saliency

    model, x, label = benchmark_inputs(name, images)  # on the CPU
    model, x = model.to(device), x.to(device).contiguous()  # shapes: layout varies by torch
    module = model.module.eval()
    sync = make_sync(device)
    with torch.no_grad():
        targets = module(x).argmax(1)
    plan = select_stages(module, layers, "layer")
    keep = {s.name for s in plan}
    n_layers, b = len(plan), x.shape[0]
    maps = sl.explain(model, x, "saliency", target=targets)["saliency"].maps
    # seeding="same": Quantus' scheme (the seed set before each layer), so the weights match
    metric = sl.metrics.get("model_randomisation")(
        granularity="layer", layers=layers, seed=43, seeding="same", similarity="spearman_abs"
    )
    print(f"{label}: {b} images {tuple(x.shape[1:])}, top {n_layers} layers", flush=True)

    stepwise = sl.metrics.get("model_randomisation")(
        granularity="layer",
        layers=layers,
        seed=43,
        seeding="same",
        similarity="spearman_abs",
        batched=False,
    )

    def run_metric(m):
        def run():
            m.reset()
            m.update(maps, x=x, model=model, target=targets, explainer="saliency")
            return m.compute().curves

        return run

    ours = run_metric(metric)

    # Quantus hands numpy arrays to these and wants numpy back.
    def captum_explain(model, inputs, targets, **kwargs):
        t = torch.as_tensor(targets, device=device).long()
        xs = torch.as_tensor(inputs, device=device)
        a = Saliency(model).attribute(xs, target=t, abs=True).sum(1)
        return a[:, None].detach().cpu().numpy()

    def sl_explain(model, inputs, targets, **kwargs):
        t = torch.as_tensor(targets, device=device).long()
        xs = torch.as_tensor(inputs, device=device)
        m = sl.explain(model, xs, "saliency", target=t)["saliency"].maps
        return m[:, None].cpu().numpy()

    def quantus_with(explain):
        def run():
            q = quantus.MPRT(
                similarity_func=quantus.similarity_func.correlation_spearman,
                layer_order="top_down",
                seed=42,
                abs=True,
                normalise=True,
                disable_warnings=True,
            )
            with warnings.catch_warnings(), only_resettable(module, keep, device.type != "cpu"):
                warnings.simplefilter("ignore")
                out = q(
                    model=module,
                    x_batch=x.cpu().numpy(),
                    y_batch=targets.cpu().numpy(),
                    a_batch=maps[:, None].cpu().numpy(),
                    explain_func=explain,
                    device=args.device,
                    batch_size=b,
                )
            steps = [k for k in out if k != "original"]
            return torch.tensor(np.array([out[k] for k in steps]).T, dtype=torch.float64)

        return run

    # Until the chunk-size search is closed across calls: the last call's passes are what
    # every timed call runs (its chunk size, its layout).
    log, _ = settle(ours, module)
    chunk = log.chunk() or b
    channels_last = log.ran_channels_last()
    floor = Floor(module, x, targets, sync, channels_last=channels_last)
    floor = floor.contender(n_layers * b, chunk)
    contenders = [
        Contender("ours", ours),
        Contender("ours_stepwise", run_metric(stepwise)),
        Contender("quantus", quantus_with(captum_explain)),
        Contender("quantus_sl", quantus_with(sl_explain)),
        floor,
    ]
    measure(contenders, args.repeats, sync)
    by = {c.name: c for c in contenders}
    curves = by["ours"].last.double().cpu()  # compared on the CPU
    peers = ("ours_stepwise", "quantus", "quantus_sl")
    checks = {
        k: max_abs_agreement(curves, by[k].last, TOL, f"max |{k} − ours| of the curves")
        for k in peers
    }
    every = list(checks.values())
    stepwise = [checks["ours_stepwise"]]
    result = {
        "model": label,
        "images": b,
        "layers": [s.name for s in plan],
        "chunk": chunk,
        "channels_last": channels_last,
        "grad_rows_ours": log.rows("grad"),
        "explanation_calls_ours": metric.compute().params["calls"],
        "median_s": {c.name: c.median for c in contenders},
        "ratios": {
            "ours_over_floor": valid_ratio(paired(by["ours"], floor), every),
            "stepwise_over_ours": valid_ratio(paired(by["ours_stepwise"], by["ours"]), stepwise),
            "stepwise_over_floor": valid_ratio(paired(by["ours_stepwise"], floor), stepwise),
            "quantus_over_ours": valid_ratio(
                paired(by["quantus"], by["ours"]), [checks["quantus"]]
            ),
            "quantus_sl_over_ours": valid_ratio(
                paired(by["quantus_sl"], by["ours"]), [checks["quantus_sl"]]
            ),
        },
        "agreements": {k: a.as_dict() for k, a in checks.items()},
        "curve_ours_mean": curves.mean(0).tolist(),
    }
    print(json.dumps(result["ratios"], indent=2), flush=True)
    for a in every:
        print(f"  {a.text()}", flush=True)
    print(
        f"  grad rows {result['grad_rows_ours']}, chunk {chunk}, channels-last {channels_last}",
        flush=True,
    )
    agreements.extend(every)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,shapes_cnn")
    parser.add_argument(
        "--images", default="efficientnet_lite0=2,shapes_cnn=8", help="images per model (name=n)"
    )
    parser.add_argument(
        "--layers",
        default="efficientnet_lite0=4,shapes_cnn=all",
        help="top layers randomised per model (name=k or name=all)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    add_device_options(parser)
    parser.add_argument("--out", default="benchmarks/out/metrics_randomisation.json")
    args = parser.parse_args(argv)
    device = setup_device(args)
    per = dict(kv.split("=") for kv in args.layers.split(",") if kv)
    n_images = {k: int(v) for k, v in (kv.split("=") for kv in args.images.split(",") if kv)}
    agreements: list[Agreement] = []
    results = {
        "settings": {
            "device": device_name(device),
            "clock": args.clock,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "quantus": __import__("quantus").__version__,
        },
        "models": [],
    }
    for m in args.models.split(","):
        k = per.get(m, "all")
        layers = None if k == "all" else int(k)
        results["models"].append(run_model(m, layers, n_images.get(m, 2), args, device, agreements))
    results["exit_status"] = exit_status(agreements)
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    sys.exit(main()["exit_status"])
