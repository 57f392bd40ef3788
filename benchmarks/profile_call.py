"""What one `sl.explain` call costs beyond its passes: the per-call overhead, op by op.

    python benchmarks/profile_call.py [--device cuda] [--methods saliency,gradcam] [--rows 8]
        [--repeats 20] [--out benchmarks/out/profile_call.txt]

On EfficientNet-Lite0 at 224×224 (`--rows` sample photos, explicit targets), for each method:

1. wall time of `sl.explain(model, x, method, target=t)` and of the plain pass it needs (one
   forward + `torch.autograd.grad` of the summed target logits to the input, weights frozen),
   interleaved, medians over `--repeats`; their difference is the call's overhead;
2. a torch.profiler table of one call (CPU and, on CUDA, GPU activity) sorted by self CPU time,
   with the counts of kernel launches, synchronisations and host/device copies, next to the
   same counts for the plain pass;
3. a cProfile of `--repeats` calls: the saliencelab functions with the most cumulative time.

On a GPU the overhead is launches and waits rather than arithmetic: this shows which.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import saliencelab as sl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import benchmark_inputs, frozen, make_sync  # noqa: E402

RUNTIME_CALLS = ("cudaLaunchKernel", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy")


def runtime_counts(prof) -> dict[str, int]:
    """How many kernel launches, synchronisations and copies the profiled code made."""
    counts = dict.fromkeys(RUNTIME_CALLS, 0)
    for event in prof.key_averages():
        for name in RUNTIME_CALLS:
            if event.key.startswith(name):
                counts[name] += event.count
    counts["aten ops"] = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default="saliency,gradcam")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="benchmarks/out/profile_call.txt")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sync = make_sync(device)
    model, x, _ = benchmark_inputs("efficientnet_lite0", args.rows)
    model, x = model.to(device), x.to(device)
    module = model.module.eval()
    with torch.no_grad():
        target = module(x).argmax(1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    report = io.StringIO()

    def say(text: str = "") -> None:
        print(text, flush=True)
        report.write(text + "\n")

    def plain() -> None:
        with frozen(module):
            xx = x.clone().requires_grad_(True)
            score = module(xx).gather(1, target[:, None]).sum()
            torch.autograd.grad(score, xx)
        sync()

    say(f"EfficientNet-Lite0, {args.rows} images, device {device}, torch {torch.__version__}")
    for method in args.methods.split(","):

        def call(method: str = method) -> None:
            sl.explain(model, x, method, target=target)
            sync()

        for _ in range(3):  # warm-up: kernels, the chunk search, caches
            call()
            plain()
        times: dict[str, list[float]] = {"call": [], "plain": []}
        for _ in range(args.repeats):
            for name, fn in (("call", call), ("plain", plain)):
                start = time.perf_counter()
                fn()  # synchronises the device before it returns
                times[name].append(time.perf_counter() - start)
        c, f = statistics.median(times["call"]), statistics.median(times["plain"])
        say(f"\n== {method}: call {c * 1e3:.2f} ms, plain pass {f * 1e3:.2f} ms, "
            f"overhead {(c - f) * 1e3:.2f} ms ({c / f:.2f}x)")  # fmt: skip
        with profile(activities=activities) as prof_call:
            call()
        with profile(activities=activities) as prof_plain:
            plain()
        say(f"runtime calls, explain: {runtime_counts(prof_call)}")
        say(f"runtime calls, plain:   {runtime_counts(prof_plain)}")
        say(prof_call.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        stats_out = io.StringIO()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.repeats):
            call()
        prof.disable()
        stats = pstats.Stats(prof, stream=stats_out).sort_stats("cumulative")
        stats.print_stats("saliencelab", 25)
        say(stats_out.getvalue())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.getvalue())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
