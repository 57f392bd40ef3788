"""Activations in place (core/inplace.py) against the same calls with every switch left off.

    .venv/bin/python benchmarks/inplace_activations.py [--cases shapes:deletion,...]
        [--repeats 15] [--threads 1] [--malloc reuse|default]

Each case is a call a user makes that runs the engine's plain forward passes, where the engine
turns the switches of the qualifying activation modules on (`nn.ReLU` of the shapes CNN, the
33 `nn.ReLU6` of EfficientNet-Lite0). The same call is timed with `Engine` as it is ("in
place") and with `core.engine.inplace_activations` replaced by a context that switches nothing
("off"), alternated in one process after warm-up (CPU time of one torch thread, freed memory
reused as in every benchmark). Reported: the median of the per-round ratios in place / off,
and the largest difference of the two calls' values (the activations write the same values,
so 0 is expected).

Cases:
- `shapes:deletion`, `shapes:completeness`: the metric on 8 shapes images (saliency maps of the
  predicted classes; deletion with 16 steps);
- `shapes:occlusion`: `sl.explain` of occlusion on 8 shapes images (8×8 windows, stride 4,
  `incremental=False`: the incremental passes hook the model, and run with the switches off);
- `lite0:forwards`: `Engine.forwards` of 8 rows of 2 photos at 224×224 (the passes of every
  perturbation method and metric on EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

import saliencelab as sl
import saliencelab.core.engine as engine_module
from saliencelab.core.engine import Engine
from saliencelab.metrics.base import metric_classes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ab_swapped, add_malloc_option, benchmark_inputs, use_malloc  # noqa: E402

CASES = ("shapes:deletion", "shapes:completeness", "shapes:occlusion", "lite0:forwards")


@contextmanager
def _switched_off(*args, **kwargs) -> Iterator[int]:
    yield 0


def _case(name: str) -> Callable[[], torch.Tensor]:
    """The call of one case, set up (model, inputs, maps) outside what is timed."""
    model_name, what = name.split(":")
    if model_name == "lite0":
        model, x, _ = benchmark_inputs("efficientnet_lite0", 2)
        rows = x.repeat(4, 1, 1, 1)
        engine = Engine(model)

        def forwards() -> torch.Tensor:
            chunks = engine.forwards(
                rows.shape[0], lambda r: rows[r], lambda r: r % 2, example=rows[:1]
            )  # fmt: skip
            return torch.cat([c.logits for c in chunks])

        return forwards
    model = sl.load_model("shapes_cnn")
    x = sl.data.shapes.make(8, seed=0).images.contiguous()
    with torch.inference_mode():
        target = model.module.eval()(x).argmax(1)
    if what == "occlusion":  # full forwards (incremental occlusion hooks the model)
        methods = {"occlusion": {"window": 8, "stride": 4, "incremental": False}}
        return lambda: sl.explain(model, x, methods=methods, target=target)["occlusion"].maps
    saliency = sl.explain(model, x, methods=["saliency"], target=target)["saliency"]
    settings = {"deletion": {"steps": 16}}.get(what, {})
    metric = metric_classes()[what](**settings)

    def call() -> torch.Tensor:
        metric.reset()
        metric.update(
            saliency.maps, x=x, model=model, target=target, attributions=saliency.attributions
        )
        return metric.compute().values

    return call


def compare(name: str, repeats: int) -> dict:
    call = _case(name)
    ways = {"in place": engine_module.inplace_activations, "off": _switched_off}
    ab = ab_swapped(engine_module, "inplace_activations", ways, call, repeats, "in place", "off")
    row = {"case": name, "in_place_ms": ab["new_ms"], "off_ms": ab["old_ms"],
           "in_place_over_off": ab["ratio"], "max_diff": ab["max_diff"]}  # fmt: skip
    print(
        f"{name:20s} in place {row['in_place_ms']:7.1f} ms, off {row['off_ms']:7.1f} ms, "
        f"in place / off {ab['ratio']:.3f}, max |diff| {ab['max_diff']:.1e}"
    )
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    add_malloc_option(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(use_malloc(args))
    return [compare(name, args.repeats) for name in args.cases.split(",")]


if __name__ == "__main__":
    main()
