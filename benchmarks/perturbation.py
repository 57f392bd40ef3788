"""Occlusion on EfficientNet-Lite0 at 224×224: saliencelab against Captum, and against the floor.

    .venv/bin/python benchmarks/perturbation.py [--images 8] [--window 16] [--stride 8]
        [--ppe 1,2,4,8] [--repeats 1] [--device cpu|cuda] [--threads N]
        [--out benchmarks/out/perturbation.json]

Contenders, on the same module, images, targets (the predicted classes) and settings:

- `ours`: `sl.explain(..., methods="occlusion")` as a user calls it (incremental inference on:
  the early layers are recomputed only around each window, see
  `methods/perturbation/incremental.py`);
- `ours_full`: the same with `incremental=False` (one full forward per window, like Captum);
- `captum_ppe{k}`: Captum's `Occlusion` with sliding_window_shapes=(3, w, w),
  strides=(3, s, s), for each `perturbations_per_eval` k (a forward of k × images rows);
- `floor`: the rows ours_full ran × the measured cost of one plain forward (inference mode) of
  the chunk size the engine settled on.

Reported: wall seconds and process CPU seconds (all threads) of each, the ratio best Captum /
ours, ours_full / floor and ours / floor, the chunk size, and the max abs difference of the maps
(ours vs the best Captum run, ours vs ours_full). On a machine shared with other jobs, wall
times are noisy; with `--threads 1` CPU seconds are the steadier measure. With `--device cuda`
the module, images and targets live on the GPU, every timer synchronises it, and wall seconds
are the measure (CPU seconds count only the host's work); each contender runs once untimed
first, and the maps are compared on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from captum.attr import Occlusion

import saliencelab as sl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (also: true float32 on CUDA)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    """(fn(), wall seconds, process CPU seconds), the device synchronised before and after."""
    _sync(device)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start_wall, time.process_time() - start_cpu


class _Rows:
    """Batch sizes of every forward of a module (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.sizes: list[int] = []
        self.handle = module.register_forward_pre_hook(
            lambda m, args: self.sizes.append(int(args[0].shape[0]))
        )

    def chunk(self) -> int:
        return Counter(self.sizes).most_common(1)[0][0]

    def close(self) -> None:
        self.handle.remove()


def _forward_cost(module, x, rows: int, reps: int = 3) -> tuple[float, float]:
    """(wall, cpu) seconds of one plain forward of `rows` rows, median of `reps`."""
    batch = x.repeat(-(-rows // len(x)), 1, 1, 1)[:rows].contiguous()
    with torch.inference_mode():
        module(batch)
        runs = [_timed(lambda: module(batch), x.device)[1:] for _ in range(reps)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--ppe", default="1,2,4,8", help="Captum perturbations_per_eval sweep")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    harness.add_malloc_option(parser)
    parser.add_argument("--out", default="benchmarks/out/perturbation.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(harness.use_malloc(args), flush=True)
    if device.type == "cuda":
        device_name = f"cuda ({torch.cuda.get_device_name(device)})"
        where = f"{device_name}; wall seconds are the measure"
    else:
        device_name, where = "cpu", f"cpu, torch threads {torch.get_num_threads()}"

    model, x, _ = harness.benchmark_inputs("efficientnet_lite0", args.images)
    model, x = model.to(device), x.to(device)
    module = model.module.eval()
    with torch.inference_mode():
        targets = module(x).argmax(1)
    w, s = args.window, args.stride
    n_win = (-(-(224 - w) // s) + 1) ** 2
    print(
        f"occlusion window {w} stride {s}: {n_win} windows × {len(x)} images = "
        f"{n_win * len(x)} forwards; {where}",
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
                sliding_window_shapes=(3, w, w),
                strides=(3, s, s),
                baselines=0.0,
                target=targets,
                perturbations_per_eval=ppe,
            )

        return run

    contenders = {"ours": ours(True), "ours_full": ours(False)}
    contenders |= {f"captum_ppe{k}": captum(int(k)) for k in args.ppe.split(",")}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in contenders}
    outputs, chunks, incremental_layer = {}, {}, None
    names_order = list(contenders)
    if device.type == "cuda":  # first CUDA calls load kernels and pick algorithms: not timed
        for fn in contenders.values():
            fn()
    for r in range(args.repeats):
        order = names_order[r % len(names_order) :] + names_order[: r % len(names_order)]
        for name in order:
            rows = _Rows(module)
            try:
                out, wall, cpu = _timed(contenders[name], device)
            finally:
                rows.close()
            times[name].append((wall, cpu))
            if name.startswith("ours"):
                chunks[name] = rows.chunk()
                if name == "ours":
                    incremental_layer = out.extras["incremental"]
                out = out.attributions
            outputs[name] = out.detach().cpu()  # compared on the CPU
            print(f"  {name:14s} wall {wall:8.2f} s   cpu {cpu:8.2f} s", flush=True)

    med = {
        k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
        for k, v in times.items()
    }
    captums = [k for k in med if k.startswith("captum")]
    best_wall = min(captums, key=lambda k: med[k][0])
    best_cpu = min(captums, key=lambda k: med[k][1])
    per_wall, per_cpu = _forward_cost(module, x, chunks["ours_full"])
    n_rows = n_win * len(x)
    floor = (n_rows / chunks["ours_full"] * per_wall, n_rows / chunks["ours_full"] * per_cpu)
    result = {
        "settings": {
            "images": len(x),
            "window": w,
            "stride": s,
            "windows": n_win,
            "forwards": n_rows,
            "device": device_name,
            "threads": torch.get_num_threads(),
            "captum": __import__("captum").__version__,
            "torch": torch.__version__,
        },
        "median_seconds": {k: {"wall": v[0], "cpu": v[1]} for k, v in med.items()},
        "floor_seconds": {"wall": floor[0], "cpu": floor[1], "chunk": chunks["ours_full"]},
        "chunk_sizes": chunks,
        "incremental_from": incremental_layer,
        "ratios": {
            "best_captum_over_ours_wall": med[best_wall][0] / med["ours"][0],
            "best_captum_over_ours_cpu": med[best_cpu][1] / med["ours"][1],
            "best_captum_wall": best_wall,
            "best_captum_cpu": best_cpu,
            "ours_full_over_floor_wall": med["ours_full"][0] / floor[0],
            "ours_full_over_floor_cpu": med["ours_full"][1] / floor[1],
            "ours_over_floor_wall": med["ours"][0] / floor[0],
            "ours_over_floor_cpu": med["ours"][1] / floor[1],
        },
        "max_abs_diff": {
            "ours_vs_captum": float((outputs["ours"] - outputs[best_wall]).abs().max()),
            "ours_full_vs_captum": float((outputs["ours_full"] - outputs[best_wall]).abs().max()),
            "ours_vs_ours_full": float((outputs["ours"] - outputs["ours_full"]).abs().max()),
            "map_scale": float(outputs[best_wall].abs().max()),
        },
    }
    print(json.dumps(result["ratios"], indent=2))
    print(json.dumps(result["max_abs_diff"], indent=2))
    print(json.dumps(result["floor_seconds"], indent=2))
    harness.write_json(args.out, result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
