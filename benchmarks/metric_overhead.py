"""Where a small metric call's time goes beyond its passes: completeness on the shapes CNN.

    .venv/bin/python benchmarks/metric_overhead.py [--images 8] [--chunk N] [--repeats 40]
        [--threads 1] [--malloc reuse|default]

Completeness (metrics/axiomatic/completeness.py) with a shared zero baseline needs B + 1 forward
rows: the B inputs and one baseline row. Every contender below runs exactly those rows, in
chunks of `--chunk` then the rest (default B + 1: one chunk, as the engine's plan runs 9 rows at
a found size of 8; the engine's chunk size is fixed to it, so all run the same passes), on
channels-last rows, with freed memory reused as in every benchmark (`--malloc`), and they are
timed interleaved (CPU time of one torch thread, the median of `--repeats` rounds of 10 calls;
ratios are medians of the per-round ratios):

- `floor`: the plain forwards of those rows, the model as it is (metrics_floor.py's floor);
- `floor, folded`: the same with BatchNorm folded (core/fused.py), as the engine runs them;
- `by hand`: the metric written out in a few lines of torch: rows built, folded forwards, the
  target logits gathered, the gap |Σa − (f(x) − f(0))| computed;
- `engine`: the same through `Engine.forwards` (its session, chunk plan, finiteness checks,
  target scores);
- `metric`: `Completeness().update(...)` and `compute()`, as a user calls it.

Checked in the same run: `by hand`, `engine` and `metric` give the same values. The steps
between neighbours say what each layer of the library adds. Last, the cost of one tiny torch op
alone and right after a forward of the model: the forward leaves the caches cold for the Python
code that follows it, so each chunk's bookkeeping costs several times what it costs in a loop.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import saliencelab as sl
from saliencelab.core.engine import Engine
from saliencelab.core.fused import folded
from saliencelab.core.targets import Target
from saliencelab.metrics.axiomatic.completeness import Completeness
from saliencelab.metrics.base import make_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_malloc_option, use_malloc  # noqa: E402


def contenders(
    model: sl.Model, x: torch.Tensor, chunk: int
) -> dict[str, Callable[[], torch.Tensor | None]]:
    module = model.module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    b = x.shape[0]
    with torch.inference_mode():
        t = module(x).argmax(1)
    saliency = sl.explain(model, x, methods=["saliency"], target=t)["saliency"]
    a, maps = saliency.attributions, saliency.maps
    nhwc = torch.channels_last
    chunks = [(lo, min(lo + chunk, b + 1)) for lo in range(0, b + 1, chunk)]

    def rows(lo: int, hi: int) -> torch.Tensor:
        out = torch.empty((hi - lo, *x.shape[1:]), memory_format=nhwc)
        k = max(0, min(hi, b) - lo)
        out[:k].copy_(x[lo : lo + k])
        out[k:].zero_()
        return out

    fed = [rows(lo, hi) for lo, hi in chunks]

    def floor() -> None:
        with torch.inference_mode():
            for r in fed:
                module(r)

    def floor_folded() -> None:
        with torch.inference_mode(), folded(module, x[:1]):
            for r in fed:
                module(r)

    def gap(logits: torch.Tensor) -> torch.Tensor:
        f_x = logits[:b].gather(1, t[:, None])[:, 0].double()
        f_0 = logits[b, t].double()
        return (a.flatten(1).double().sum(1) - (f_x - f_0)).abs()

    def by_hand() -> torch.Tensor:
        with torch.inference_mode(), folded(module, x[:1]):
            return gap(torch.cat([module(rows(lo, hi)) for lo, hi in chunks]))

    def engine() -> torch.Tensor:
        passes = Engine(model, chunk_size=chunk).forwards(
            b + 1, lambda r: rows(int(r[0]), int(r[-1]) + 1), lambda r: r % b, Target(t)
        )
        return gap(torch.cat([c.logits for c in passes]))

    metric = Completeness()

    def full() -> torch.Tensor:
        batch = make_batch(
            maps, x=x, model=model, target=t, attributions=a, engine=Engine(model, chunk_size=chunk)
        )
        metric.reset()
        metric.update(batch=batch)
        return metric.compute().values

    return {
        "floor": floor,
        "floor, folded": floor_folded,
        "by hand": by_hand,
        "engine": engine,
        "metric": full,
    }


def cold_op(model: sl.Model, x: torch.Tensor, n: int = 300) -> tuple[float, float]:
    """Seconds of one tiny op ((rows + 1) % 8 on 8 indices) alone, and right after a forward."""
    rows = torch.arange(8)
    alone, after = [], []
    with torch.inference_mode():
        xn = x.contiguous(memory_format=torch.channels_last)
        for _ in range(n):
            start = time.perf_counter()
            (rows + 1) % 8
            alone.append(time.perf_counter() - start)
            model.module(xn)
            start = time.perf_counter()
            (rows + 1) % 8
            after.append(time.perf_counter() - start)
    return statistics.median(alone), statistics.median(after)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=None, help="rows per chunk (B + 1)")
    parser.add_argument("--threads", type=int, default=1)
    add_malloc_option(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(use_malloc(args))
    model = sl.load_model("shapes_cnn")
    x = sl.data.shapes.make(args.images, seed=0).images.contiguous()
    fns = contenders(model, x, args.chunk or args.images + 1)
    values = {k: fn() for k, fn in fns.items()}
    ref = values["by hand"]
    for k in ("engine", "metric"):
        assert torch.allclose(values[k].double(), ref, rtol=1e-5, atol=1e-3), k
    for fn in fns.values():  # warm-up: the fold probe, the layout probe, allocator
        for _ in range(20):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            start = time.process_time()
            for _ in range(10):
                fn()
            times[k].append((time.process_time() - start) / 10)
    floor = times["floor"]
    print(f"completeness, shapes CNN, {args.images} images ({args.images + 1} forward rows)")
    result = {}
    for k, ts in times.items():
        ratio = statistics.median(t / f for t, f in zip(ts, floor, strict=True))
        result[k] = {"ms": statistics.median(ts) * 1e3, "over_floor": ratio}
        print(f"  {k:14s} {result[k]['ms']:7.2f} ms   / floor {ratio:5.3f}")
    alone, after = cold_op(model, x)
    print(f"one tiny op: {alone * 1e6:.1f} µs alone, {after * 1e6:.1f} µs right after a forward")
    result["tiny_op_us"] = {"alone": alone * 1e6, "after_forward": after * 1e6}
    return result


if __name__ == "__main__":
    main()
