"""Near-equal chunks against the old cut (chunks of the found size, then the rest).

    .venv/bin/python benchmarks/chunk_cut.py [--images 8,20] [--metrics completeness,deletion]
        [--repeats 21] [--per-row] [--threads 1] [--malloc reuse|default]

Once the engine's chunk search has found a size, `ChunkPlan.chunks` cuts the rows left into
near-equal chunks (core/batching.py, `_balanced`): 9 rows at a found 8 run as one chunk of 9.
The old cut ran them as 8 and a lone row. This script times the same metric call (shapes CNN,
saliency maps, the predicted classes, a user's `update` then `compute`) under both cuts,
alternated in one process after warm-up, CPU time of one torch thread, and reports the median
of the per-round ratios new / old. The two cuts' values are checked equal (to float rounding:
the rows are the same, only the batches they run in differ).

`--per-row` first prints what a row costs at each chunk size (1 to 32 rows: a plain forward, and
a forward + `torch.autograd.grad` to the input, weights frozen, channels-last rows; median of
15 rounds): why a lone last row is worth avoiding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import saliencelab as sl
from saliencelab.core import batching
from saliencelab.metrics.base import metric_classes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ab_swapped, add_malloc_option, use_malloc  # noqa: E402

SETTINGS = {"deletion": {"steps": 16}, "insertion": {"steps": 16}}


def old_cut(rows: int, size: int, cap: int) -> int:
    """The cut before near-equal chunks: the found size (within the cap), then the rest."""
    return min(size, cap, rows)


def per_row_costs(repeats: int = 15) -> dict[str, dict[int, float]]:
    """Milliseconds per row of the shapes CNN's forward and gradient passes by chunk size."""
    module = sl.load_model("shapes_cnn").module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    x = sl.data.shapes.make(32, seed=0).images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # (an inference-mode tensor could not index the gradient pass)
        target = module(x).argmax(1)

    def forward(n: int) -> None:
        with torch.inference_mode():
            module(x[:n])

    def gradient(n: int) -> None:
        rows = x[:n].clone().requires_grad_(True)
        torch.autograd.grad(module(rows).gather(1, target[:n, None]).sum(), rows)

    sizes = (1, 2, 4, 8, 16, 32)
    out = {}
    for kind, fn in (("forward", forward), ("forward + input gradient", gradient)):
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for n in sizes:
            fn(n)
        for _ in range(repeats):
            for n in sizes:
                calls = max(1, 32 // n)
                start = time.process_time()
                for _ in range(calls):
                    fn(n)
                times[n].append((time.process_time() - start) / calls / n)
        out[kind] = {n: statistics.median(t) * 1e3 for n, t in times.items()}
        shown = ", ".join(f"{n}: {ms:.2f}" for n, ms in out[kind].items())
        print(f"{kind}, ms per row by chunk size: {shown}")
    return out


def compare(name: str, images: int, repeats: int) -> dict:
    model = sl.load_model("shapes_cnn")
    x = sl.data.shapes.make(images, seed=0).images.contiguous()
    with torch.inference_mode():
        target = model.module(x).argmax(1)
    saliency = sl.explain(model, x, methods=["saliency"], target=target)["saliency"]
    metric = metric_classes()[name](**SETTINGS.get(name, {}))

    def call() -> torch.Tensor:
        metric.reset()
        metric.update(
            saliency.maps, x=x, model=model, target=target, attributions=saliency.attributions
        )
        return metric.compute().values

    ways = {"old": old_cut, "new": batching._balanced}
    ab = ab_swapped(batching, "_balanced", ways, call, repeats, "new", "old", warmup=15)
    assert ab["max_diff"] < 1e-5, f"{name}: the cuts disagree by {ab['max_diff']}"
    row = {"metric": name, "images": images, "old_ms": ab["old_ms"], "new_ms": ab["new_ms"],
           "new_over_old": ab["ratio"], "max_diff": ab["max_diff"]}  # fmt: skip
    print(
        f"{name:14s} {images:3d} images: old {row['old_ms']:7.1f} ms, new {row['new_ms']:7.1f} ms,"
        f" new / old {ab['ratio']:.3f}, max |diff| {ab['max_diff']:.1e}"
    )
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="8,20")
    parser.add_argument("--metrics", default="completeness,deletion")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--per-row", action="store_true", help="cost per row by chunk size")
    parser.add_argument("--threads", type=int, default=1)
    add_malloc_option(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(use_malloc(args))
    if args.per_row:
        per_row_costs()
    return [
        compare(name, int(n), args.repeats)
        for n in args.images.split(",")
        for name in args.metrics.split(",")
    ]


if __name__ == "__main__":
    main()
