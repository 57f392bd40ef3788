"""Torch operators one metric call dispatches, the model's and the rest: a count that, unlike a
timing, does not move with the machine's load.

    .venv/bin/python benchmarks/op_count.py [--metrics completeness,deletion,...] [--images 8]
        [--chunk 8] [--where]

The call is metrics_floor.py's `ours` on the shapes CNN (`sl.data.shapes.make(8, seed=0)`, the
saliency maps of the predicted classes, the metric's small settings from metrics_floor.py),
after warm-up calls, with the engines' chunk size fixed to `--chunk` (so the passes, and the
model's operators, are the same from run to run and between versions of the library). Every
ATen operator the call dispatches is counted (a `TorchDispatchMode`); those called from the
model's own modules (the stack passes through the model's `forward` or autograd's backward) are
"model", the rest is what the library adds: rows, scores, checks, bookkeeping. Each such
operator costs ~10 µs on this project's CPU in a loop and up to ~40 µs right after a forward
(metric_overhead.py), so their number bounds the per-call overhead at small batches. `--where`
lists the library's operators with the line that dispatched each.

Only forward-only metrics have a fixed count: the explanation passes of the others pick their
own chunk sizes (`sl.explain` is called with `chunk_size=None`).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import saliencelab as sl
import saliencelab.core.engine as engine_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics_floor import metric_classes, settings_for  # noqa: E402

MODEL_FILE = "models/shapes.py"


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen operators, as the model's (called under its forward or its
    backward) or the library's (with the line of the library that dispatched it)."""

    def __init__(self, where: bool) -> None:
        super().__init__()
        self.where = where
        self.model = 0
        self.library: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        stack = traceback.extract_stack()
        files = [f.filename for f in stack]
        in_model = any(MODEL_FILE in f for f in files) or any(
            "autograd/__init__.py" in f for f in files[-6:]
        )
        if in_model:
            self.model += 1
        else:
            ours = [f for f in stack if "/saliencelab/" in f.filename]
            line = f"{ours[-1].filename.split('src/')[-1]}:{ours[-1].lineno}" if ours else "?"
            self.library[f"{func}  {line}" if self.where else str(func)] += 1
        return func(*args, **(kwargs or {}))


def count(name: str, images: int, chunk: int, where: bool) -> OpCounter:
    model = sl.load_model("shapes_cnn")
    x = sl.data.shapes.make(images, seed=0).images.contiguous()
    with torch.no_grad():
        target = model.module.eval()(x).argmax(1)
    ex = sl.explain(model, x, methods=["saliency"], target=target)["saliency"]
    metric = metric_classes()[name](**settings_for(name, tuple(x.shape), False))

    def call():
        metric.reset()
        metric.update(
            ex.maps, x=x, model=model, target=target, attributions=ex.attributions,
            explainer="saliency",
        )  # fmt: skip
        return metric.compute()

    for _ in range(6):
        call()
    counter = OpCounter(where)
    with counter:
        call()
    return counter


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default="completeness,deletion,insertion,non_sensitivity")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--where", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # every engine of the call runs chunks of --chunk rows (a user's chunk_size is kept exactly)
    engine_module.Engine.__init__.__defaults__ = (args.chunk, None)
    result = {}
    print(f"shapes CNN, {args.images} images, chunks of {args.chunk} rows")
    print(f"{'metric':26s} {'model':>6s} {'library':>8s}")
    for name in args.metrics.split(","):
        c = count(name, args.images, args.chunk, args.where)
        result[name] = {"model": c.model, "library": sum(c.library.values())}
        print(f"{name:26s} {c.model:6d} {sum(c.library.values()):8d}")
        if args.where:
            for op, n in c.library.most_common():
                print(f"    {n:4d}  {op}")
    return result


if __name__ == "__main__":
    main()
