"""Memory layout of image batches in forward-only passes: channels-last (NHWC) on CPU when safe.

Forward-only passes of convolutional networks on CPU run faster per row when the input is
channels-last (oneDNN convolutions without layout conversions): measured 1.25× on
EfficientNet-Lite0 at 2 rows and 2× on the shapes CNN at 8 rows (benchmarks/README.md). The
engine uses it for 4-D float inputs on CPU only if one probe row through the model in both
layouts runs and gives the same output up to float rounding (a model may `.view` a conv output,
which fails on NHWC strides). The answer is cached per (model, input shape, dtype).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..models.model import logits_of

_LAYOUT_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {key: bool}


def channels_last_ok(module: nn.Module, example: torch.Tensor, gradients: bool = False) -> bool:
    """Whether rows like `example` (one row or more) may be fed to `module` channels-last.

    Forward-only: the logits of one probe row must agree within 1e-4 of their largest value.
    With `gradients=True` the probe row's input gradient (of its largest logit) must agree too.
    On real photos, EfficientNet-Lite0's float32 input gradients differ between layouts by up to
    4e-3 of their largest value on some images, because activations sitting on a ReLU6 kink
    round to the other side; against a float64 reference neither layout is closer (measured on
    8 sample photos: the worst sample is off by 1e-2 in both). Call with the model in the state
    it will run in (eval mode, frozen); the answer is cached per (model, shape, dtype, kind).
    """
    x = example
    if x.dim() != 4 or not x.is_floating_point() or x.device.type != "cpu":
        return False
    key = (tuple(x.shape[1:]), x.dtype, gradients)
    known = _LAYOUT_OK.setdefault(module, {})
    if key not in known:
        try:
            known[key] = _same_either_way(module, x[:1].detach(), gradients)
        except Exception:  # noqa: BLE001  (any failure: keep the model's usual layout)
            known[key] = False
    return known[key]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-4 * float(a.abs().max()) + 1e-7
    return a.shape == b.shape and bool(((a - b).abs() <= tol).all())


def _same_either_way(module: nn.Module, row: torch.Tensor, gradients: bool) -> bool:
    layouts = (torch.contiguous_format, torch.channels_last)
    if not gradients:
        with torch.inference_mode():
            plain, fast = (logits_of(module(row.contiguous(memory_format=f))) for f in layouts)
        return _close(plain, fast)
    grads = []
    with torch.enable_grad():
        for f in layouts:
            x = row.contiguous(memory_format=f).requires_grad_(True)
            logits = logits_of(module(x))
            (g,) = torch.autograd.grad(logits.flatten(1).max(1).values.sum(), x)
            grads.append(g.contiguous())
    return _close(*grads)
