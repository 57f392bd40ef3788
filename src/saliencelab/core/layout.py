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


def channels_last_ok(module: nn.Module, example: torch.Tensor) -> bool:
    """Whether rows like `example` (one row or more) may be fed to `module` channels-last.

    Call with the model in the state it will run in (eval mode, frozen); runs at most two
    one-row forwards per (model, shape, dtype), under `torch.inference_mode()`.
    """
    x = example
    if x.dim() != 4 or not x.is_floating_point() or x.device.type != "cpu":
        return False
    key = (tuple(x.shape[1:]), x.dtype)
    known = _LAYOUT_OK.setdefault(module, {})
    if key in known:
        return known[key]
    ok = False
    with torch.inference_mode():
        row = x[:1].detach()
        try:
            plain = logits_of(module(row.contiguous()))
            fast = logits_of(module(row.contiguous(memory_format=torch.channels_last)))
            tol = 1e-4 * float(plain.abs().max()) + 1e-6
            ok = plain.shape == fast.shape and bool(((plain - fast).abs() <= tol).all())
        except Exception:  # noqa: BLE001  (any failure: keep the model's usual layout)
            ok = False
    known[key] = ok
    return ok
