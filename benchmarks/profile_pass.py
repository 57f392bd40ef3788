"""Where one forward+backward pass of EfficientNet-Lite0 spends its time, and what would cut it.

    .venv/bin/python benchmarks/profile_pass.py [--rows 8] [--repeats 6] [--no-profile]
                                                [--cpu-time]

1. A torch.profiler table of one plain pass (frozen parameters, gradient to the input): the
   floor every gradient method in run.py is measured against.
2. The same pass on rewritten copies of the model, timed interleaved against the plain one
   (median of per-repeat ratios), with the largest gradient difference:
   - `fold`: each BatchNorm folded into the convolution before it (eval mode only), the
     BatchNorm replaced by `nn.Identity` so module names and hooked outputs are unchanged;
   - `channels_last`: weights and input in channels-last memory format;
   - `fold+channels_last`, and that plus `sym-pad`: "same" padding passed to the convolution
     itself when it is symmetric, instead of an `F.pad` copy before each convolution.
These are the candidates for an engine-side "fast path" (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

if "--cpu-time" in sys.argv:  # before torch loads its OpenMP runtime (see run.py --clock cpu)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import saliencelab as sl  # noqa: E402
from saliencelab.models.efficientnet_lite import Conv2dSame, same_padding  # noqa: E402

IMAGES = ("chelsea", "astronaut", "coffee", "motorcycle", "rocket", "retina")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every (conv, BatchNorm) pair of this architecture folded."""
    model = copy.deepcopy(model).eval()
    pairs = (
        ("_conv_stem", "_bn0"),
        ("_expand_conv", "_bn0"),
        ("_depthwise_conv", "_bn1"),
        ("_project_conv", "_bn2"),
        ("_conv_head", "_bn1"),
    )
    for parent in model.modules():
        for conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
                continue
            if conv.out_channels != bn.num_features:
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            with torch.no_grad():
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                bias = bn.bias - bn.running_mean * scale
                if conv.bias is not None:
                    bias = bias + conv.bias * scale
                conv.bias = nn.Parameter(bias)
            setattr(parent, bn_name, nn.Identity())
    return model


class _SymmetricSameConv(Conv2dSame):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        top, bottom = same_padding(x.shape[-2], kh, self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], kw, self.stride[1], self.dilation[1])
        if top == bottom and left == right:
            return F.conv2d(
                x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups
            )
        return super().forward(x)


def symmetric_padding(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if type(m) is Conv2dSame:
            m.__class__ = _SymmetricSameConv
    return model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time process CPU time with OMP_WAIT_POLICY=PASSIVE (for a shared machine)",
    )
    args = p.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter

    model = sl.load_model("efficientnet_lite0")
    plain = model.module.eval()
    x = model.preprocess([sl.sample_image(n) for n in IMAGES])
    x = x.repeat(-(-args.rows // len(x)), 1, 1, 1)[: args.rows].contiguous()
    with torch.no_grad():
        target = plain(x).argmax(1)

    folded = fold_batchnorm(plain)
    variants = {
        "plain": (plain, False),
        "fold": (folded, False),
        "channels_last": (copy.deepcopy(plain).to(memory_format=torch.channels_last), True),
        "fold+channels_last": (
            copy.deepcopy(folded).to(memory_format=torch.channels_last),
            True,
        ),
    }
    variants["fold+channels_last+sym-pad"] = (
        symmetric_padding(variants["fold+channels_last"][0]),
        True,
    )
    for m, _ in variants.values():
        m.requires_grad_(False)

    def one_pass(m: nn.Module, cl: bool) -> torch.Tensor:
        xi = x.to(memory_format=torch.channels_last) if cl else x.clone()
        xi.requires_grad_(True)
        score = m(xi).gather(1, target[:, None]).sum()
        return torch.autograd.grad(score, xi)[0]

    try:
        if not args.no_profile:
            from torch.profiler import ProfilerActivity, profile

            one_pass(plain, False)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                one_pass(plain, False)
            print(
                prof.key_averages().table(
                    sort_by="self_cpu_time_total", row_limit=16, max_name_column_width=40
                )
            )

        reference = one_pass(plain, False)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for name, (m, cl) in variants.items():
            g = one_pass(m, cl)  # also the warm-up
            err = float((g - reference).abs().max() / reference.abs().max())
            print(f"{name:28s} max |grad - plain| / max |plain| = {err:.1e}")
        names = list(variants)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = clock()
                one_pass(*variants[name])
                times[name].append(clock() - start)
        kind = "process CPU time" if args.cpu_time else "wall time"
        print(f"\n{args.rows} rows per pass, {args.repeats} interleaved repeats, {kind}")
        for name in names:
            pairs = zip(times["plain"], times[name], strict=True)
            ratio = statistics.median(a / b for a, b in pairs)
            per_row = statistics.median(times[name]) / args.rows * 1e3
            print(f"{name:28s} {per_row:8.1f} ms/row   speed-up over plain {ratio:.2f}x")
    finally:
        plain.requires_grad_(True)


if __name__ == "__main__":
    main()
