"""LRP on EfficientNet-Lite0: its cost over one plain forward+backward of the same batch.

    .venv/bin/python benchmarks/lrp.py [--batch 8] [--size 224] [--repeats 7]
        [--composites epsilon_plus,epsilon_gamma_box,epsilon_alpha2_beta1]
        [--device cpu] [--clock cpu] [--threads 1]

Contenders, timed interleaved (`harness.measure`: each repeat runs every contender once, order
rotated per repeat, so drift or a noisy neighbour hits all alike):

- floor: the model's forward + `torch.autograd.grad` of the target logits to the input, with
  parameters frozen, on the whole batch at once;
- lrp pass (per composite): the engine's LRP pass alone (canonizers + hooks + forward + LRP
  backward + undo), `Engine.gradients(..., backward=LRPRule(...))`, the whole batch in one chunk;
- sl.explain (epsilon_plus): the public call, which also runs a forward to resolve the target.

Reported per contender: the median time, the median of per-repeat ratios to the floor (clock
from `--clock`, CPU time by default on the CPU), and the **ops per pass**: ATen operators
dispatched by one pass (views, allocations and detaches left out), counted with a
`TorchDispatchMode`, with the host synchronisations (`.item()`-like reads) among them. On a GPU
at batch 8 every such op is a kernel launch, and the pass is launch-bound: the ops ratio to the
floor predicts the time ratio there better than CPU time at 224×224 does. (On the CPU the z⁺
rule checks the sign of inputs not known to be non-negative, 2 ops and a read each, the syncs;
on an accelerator it skips the check.) A small `--size` (8 or 32) with `--batch 1` makes the
arithmetic negligible on the CPU too, so the CPU time then measures the per-op and per-hook
overhead (a proxy for the launch-bound GPU, Python included).

Agreement: each LRP pass's map equals the `sl.explain` map of the same composite (max |diff| /
max |value| per sample), and its conservation gap Σ R − S is printed.

Target (issue 3): lrp pass / floor <= 2. Timings on a shared CPU are noisy: compare the ratios
of one run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import saliencelab as sl
from saliencelab.core.engine import Engine
from saliencelab.core.targets import Target
from saliencelab.methods.relevance.lrp import PRESETS, LRPRule, composite_from_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    IMAGES,
    Contender,
    add_device_options,
    compare,
    frozen,
    make_sync,
    measure,
    paired,
    setup_device,
)

TARGET_RATIO = 2.0
COMPOSITES = "epsilon_plus,epsilon_gamma_box,epsilon_alpha2_beta1"
# Dispatched ops that launch no kernel: allocations and detaches (views are found by schema).
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "detach", "lift_fresh"}
SYNCS = {"_local_scalar_dense", "item", "is_nonzero", "equal"}


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside the block, by name; views and allocations apart."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.is_view or name in NO_KERNEL:
            self.views += 1
        else:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def syncs(self) -> int:
        return sum(n for name, n in self.ops.items() if name in SYNCS)


def count_ops(fn: Callable[[], object]) -> OpCounter:
    with OpCounter() as counter:
        fn()
    return counter


def _batch(model: sl.Model, n: int, size: int) -> torch.Tensor:
    images = [sl.sample_image(IMAGES[i % len(IMAGES)]) for i in range(n)]
    x = model.preprocess(images).to(model.device)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--composites", default=COMPOSITES)
    parser.add_argument("--ops", action="store_true", help="print each contender's ops by name")
    add_device_options(parser)
    args = parser.parse_args()
    device = setup_device(args)
    composites = [c.strip() for c in args.composites.split(",") if c.strip()]
    for c in composites:
        if c not in PRESETS:
            parser.error(f"unknown composite {c!r}; choose from {', '.join(PRESETS)}")

    model = sl.load_model("efficientnet_lite0").to(device)
    sync = make_sync(device)
    x = _batch(model, args.batch, args.size)
    with torch.no_grad():
        targets = model.module(x).argmax(1)
    n = len(x)
    engine = Engine(model, chunk_size=n)
    engine.probe_layout(x)  # as sl.explain does: the same memory layout in both
    target = Target(targets)
    module = model.module

    def floor() -> None:
        with frozen(module):
            xx = x.detach().clone().requires_grad_(True)
            out = module(xx)
            torch.autograd.grad(out.gather(1, targets[:, None]).sum(), xx)

    def lrp_pass(name: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            rule = LRPRule(composite_from_name(name))
            (chunk,) = engine.gradients(n, lambda r: x[r], lambda r: r, target, backward=rule)
            return chunk.input_grad

        return run

    def explain(name: str) -> sl.Attribution:
        labels = targets.tolist()
        ex = sl.explain(model, x, methods="lrp", target=labels, chunk_size=n, composite=name)
        return ex["lrp"]

    contenders = [Contender("floor", floor)]
    contenders += [Contender(f"lrp pass {c}", lrp_pass(c)) for c in composites]
    contenders.append(Contender("sl.explain lrp epsilon_plus", lambda: explain("epsilon_plus")))

    print(
        f"EfficientNet-Lite0, batch {n} at {args.size}x{args.size}, {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.repeats} "
        "interleaved repeats after one warm-up"
    )
    print("\nagreement (max |pass - sl.explain| / max |sl.explain| per sample, worst sample):")
    for c in composites:
        ours = lrp_pass(c)()
        ref = explain(c)
        err = compare(ours, ref.attributions)["max_rel_err"]
        gap = ref.extras["delta"].abs().max()
        finite = bool(torch.isfinite(ours).all())
        print(f"  {c:22s} {err:.1e}  finite {finite}  max |Σ R − S| {float(gap):.3g}")
        if err > 1e-5 or not finite:
            raise SystemExit(f"{c}: the LRP pass and sl.explain disagree ({err:.2e})")

    counts = {}
    for c in contenders:
        c.fn()  # warm (first-call costs are not per-pass ops)
        counts[c.name] = count_ops(c.fn)
    measure(contenders, args.repeats, sync)

    floor_c = contenders[0]
    base = counts["floor"].total
    print(
        f"\n{'contender':30s} {'median s':>9s} {'x floor':>8s} {'ops/pass':>9s} "
        f"{'x floor':>8s} {'syncs':>6s}   ({args.clock} clock)"
    )
    for c in contenders:
        k = counts[c.name]
        ratio = paired(c, floor_c)
        print(
            f"{c.name:30s} {c.median:9.3f} {ratio:8.2f} {k.total:9d} {k.total / base:8.2f} "
            f"{k.syncs:6d}"
        )
    if args.ops:
        for name, k in counts.items():
            print(f"\nops of {name}: " + ", ".join(f"{o} {m}" for o, m in k.ops.most_common()))
    for c in contenders[1:-1]:
        ratio, ops = paired(c, floor_c), counts[c.name].total / base
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(
            f"{c.name}: {ratio:.2f}x the floor in {args.clock} time, {ops:.2f}x its ops — "
            f"{verdict} the {TARGET_RATIO}x target here"
        )


if __name__ == "__main__":
    main()
