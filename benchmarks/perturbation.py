"""Occlusion: saliencelab against Captum, and against the floor (EfficientNet-Lite0 at 224×224 by
default; `--model shapes_cnn` runs the bundled shapes CNN at 64×64, for a quick check).

    .venv/bin/python benchmarks/perturbation.py [--images 8] [--window 16] [--stride 8]
        [--ppe 1,2,4,8] [--repeats 1] [--device cpu|cuda] [--threads N] [--clock wall|cpu]
        [--model efficientnet_lite0|shapes_cnn] [--out benchmarks/out/perturbation.json]

Contenders, on the same module, images, targets (the predicted classes) and settings:

- `ours`: `sl.explain(..., methods="occlusion")` as a user calls it (incremental inference on:
  the early layers are recomputed only around each window, see
  `methods/perturbation/incremental.py`);
- `ours_full`: the same with `incremental=False` (one full forward per window, like Captum);
- `captum_ppe{k}`: Captum's `Occlusion` with sliding_window_shapes=(C, w, w),
  strides=(C, s, s), for each `perturbations_per_eval` k (a forward of k × images rows);
- `floor`: the rows ours_full ran (recorded by a forward pre-hook) as plain forwards (inference
  mode) at the chunk size the engine settled on, in the memory layout ours_full's forwards ran
  in (channels-last on CPU where the engine picks it: a floor in another layout would measure
  the layout, not our overhead).

Timing (`harness.measure`): every contender is warmed up untimed first, on every device: ours
and ours_full by `harness.settle` (until the engine's chunk-size search is closed and two calls
ran the same passes) and one more call without settle's recording hook (the first call after a
hook change rebuilds the incremental plan: 1.5 s on the shapes CNN), Captum once, the floor by
its own untimed forward. Each repeat then runs every contender once, interleaved, the order
rotated per repeat. Ratios are `harness.paired`: the median over repeats of the per-repeat
ratio, on the clock of `--clock` (wall by default; with `--threads 1` on a shared machine,
`--clock cpu` is the steadier one). Both clocks' times are recorded. With `--device cuda` the
module, images and targets live on the GPU and every timer synchronises it; the maps are
compared on the CPU.

The default `--repeats` stays 1: at the default settings one repeat runs about 6 × 5832
EfficientNet forwards (about 20 min on 2 CPU cores); give `--repeats 3` where there is time.

Agreement gates the ratios: ours vs each Captum run, ours_full vs the best Captum run and ours
vs ours_full must agree to max |diff| ≤ 1e-4 × max |Captum map| (`harness.max_abs_agreement`:
NaN on one side only, or everywhere, fails too). A ratio whose agreement fails is reported as
None (`harness.valid_ratio`) and the script exits 1 (`harness.exit_status`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from captum.attr import Occlusion

import saliencelab as sl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (also: true float32 on CUDA)
from harness import Contender, Stopwatch, measure, paired, settle, valid_ratio  # noqa: E402

REL_TOL = 1e-4  # max |ours − peer| ≤ REL_TOL × max |Captum map|


def forward_floor(module, x, rows: int, chunk: int, sync, channels_last: bool):
    """A self-timed contender's function: (wall, cpu) seconds of `rows` plain forwards
    (inference mode) of x's images in batches of `chunk`, in the given layout: one untimed
    forward, then up to 3 batches timed, their median scaled to the number of batches, plus the
    last partial batch."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch = x.repeat(-(-chunk // len(x)), 1, 1, 1)[:chunk].contiguous(memory_format=layout)
    full, rest = divmod(rows, chunk)

    def run() -> tuple[float, float]:
        with torch.inference_mode():
            module(batch)  # untimed
            timed = []
            for _ in range(min(3, full)):
                with Stopwatch(sync) as sw:
                    module(batch)
                timed.append(sw)
            wall = full * sorted(t.wall for t in timed)[len(timed) // 2] if timed else 0.0
            cpu = full * sorted(t.cpu for t in timed)[len(timed) // 2] if timed else 0.0
            if rest:
                with Stopwatch(sync) as sw:
                    module(batch[:rest])
                wall, cpu = wall + sw.wall, cpu + sw.cpu
        return wall, cpu

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--ppe", default="1,2,4,8", help="Captum perturbations_per_eval sweep")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    parser.add_argument(
        "--model", default="efficientnet_lite0", choices=["efficientnet_lite0", "shapes_cnn"]
    )
    harness.add_malloc_option(parser)
    parser.add_argument("--out", default="benchmarks/out/perturbation.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    harness.use_clock(args.clock)
    print(harness.use_malloc(args), flush=True)
    sync = harness.make_sync(device)
    if device.type == "cuda":
        device_name = f"cuda ({torch.cuda.get_device_name(device)})"
        where = f"{device_name}; wall seconds are the measure"
    else:
        device_name, where = "cpu", f"cpu, torch threads {torch.get_num_threads()}"

    model, x, label = harness.benchmark_inputs(args.model, args.images)
    model, x = model.to(device), x.to(device)
    module = model.module.eval()
    with torch.inference_mode():
        targets = module(x).argmax(1)
    w, s, ch, size = args.window, args.stride, x.shape[1], x.shape[-1]
    n_win = (-(-(size - w) // s) + 1) ** 2
    print(
        f"{label} occlusion window {w} stride {s}: {n_win} windows × {len(x)} images = "
        f"{n_win * len(x)} forwards; {where}; {args.clock} clock",
        flush=True,
    )

    def ours(incremental: bool):
        def run():
            ex = sl.explain(
                model, x, methods="occlusion", target=targets, window=w, stride=s,
                incremental=incremental,
            )  # fmt: skip
            return ex["occlusion"]

        return run

    def captum(ppe: int):
        def run():
            return Occlusion(module).attribute(
                x,
                sliding_window_shapes=(ch, w, w),
                strides=(ch, s, s),
                baselines=0.0,
                target=targets,
                perturbations_per_eval=ppe,
            )

        return run

    # Untimed warm-up of ours: until the chunk-size search is closed (what every timed call runs).
    logs = {
        name: settle(ours(inc), module)[0] for name, inc in (("ours", True), ("ours_full", False))
    }
    chunks = {k: Counter(n for n, _ in v.calls).most_common(1)[0][0] for k, v in logs.items()}
    rows_full = sum(n for n, _ in logs["ours_full"].calls)
    nhwc = logs["ours_full"].ran_channels_last()
    floor_fn = forward_floor(module, x, rows_full, chunks["ours_full"], sync, nhwc)

    # ... and one plain call each: a call under settle's recording hook leaves the incremental
    # plan to be rebuilt on the next call without it (1.5 s on the shapes CNN).
    contenders = [Contender("ours", ours(True)), Contender("ours_full", ours(False))]
    contenders += [Contender(f"captum_ppe{k}", captum(int(k))) for k in args.ppe.split(",")]
    contenders.append(Contender("floor", floor_fn, self_timed=True, warmup=0))  # warms itself
    by = {c.name: c for c in contenders}
    measure(contenders, args.repeats, sync, lambda m: print(m, flush=True))

    maps = {}
    for c in contenders[:-1]:
        out = c.last.attributions if c.name.startswith("ours") else c.last
        maps[c.name] = out.detach().cpu()  # compared on the CPU
    captums = [c.name for c in contenders if c.name.startswith("captum")]
    best = min(captums, key=lambda k: by[k].median)
    scale = float(maps[best].abs().max())
    tol = REL_TOL * scale

    def agree(a: str, b: str) -> harness.Agreement:
        return harness.max_abs_agreement(maps[a], maps[b], tol, f"max |{a} − {b}|")

    vs_captum = {k: agree("ours", k) for k in captums}
    full_vs_best, ours_vs_full = agree("ours_full", best), agree("ours", "ours_full")
    agreements = [*vs_captum.values(), full_vs_best, ours_vs_full]
    print(f"agreement (tol {REL_TOL:g} × max |{best} map| = {tol:.3g}):")
    for a in agreements:
        print(f"  {a.text()}")

    ours_ok = [vs_captum[best], ours_vs_full]
    ratios = {
        "clock": args.clock,
        "best_captum": best,
        "best_captum_over_ours": valid_ratio(paired(by[best], by["ours"]), [vs_captum[best]]),
        "captum_over_ours": {
            k: valid_ratio(paired(by[k], by["ours"]), [vs_captum[k]]) for k in captums
        },
        "best_captum_over_ours_full": valid_ratio(
            paired(by[best], by["ours_full"]), [full_vs_best]
        ),
        "ours_full_over_floor": valid_ratio(paired(by["ours_full"], by["floor"]), [full_vs_best]),
        "ours_over_floor": valid_ratio(paired(by["ours"], by["floor"]), ours_ok),
    }
    status = harness.exit_status(agreements)
    result = {
        "settings": {
            "model": label,
            "images": len(x),
            "size": size,
            "window": w,
            "stride": s,
            "windows": n_win,
            "forwards": n_win * len(x),
            "repeats": args.repeats,
            "clock": args.clock,
            "device": device_name,
            "threads": torch.get_num_threads(),
            "captum": __import__("captum").__version__,
            "torch": torch.__version__,
        },
        "seconds": {c.name: c.summary() for c in contenders},
        "floor": {"rows": rows_full, "chunk": chunks["ours_full"], "channels_last": nhwc},
        "chunk_sizes": chunks,
        "incremental_from": by["ours"].last.extras["incremental"],
        "ratios": ratios,
        "agreements": [a.as_dict() for a in agreements],
        "map_scale": scale,
        "exit_status": status,
    }
    print(json.dumps(ratios, indent=2))
    print(json.dumps(result["floor"]))
    harness.write_json(args.out, result)
    return result


if __name__ == "__main__":
    sys.exit(main()["exit_status"])
