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


def _key(x: torch.Tensor) -> tuple | None:
    if x.dim() != 4 or not x.is_floating_point() or x.device.type != "cpu":
        return None
    return (tuple(x.shape[1:]), x.dtype)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """`torch.channels_last` for a 4-D tensor laid out NHWC (and not plain contiguous as well,
    e.g. one channel), else `torch.contiguous_format`: the layout to make a tensor in that is
    combined with `t` without a conversion."""
    nhwc = t.dim() == 4 and not t.is_contiguous()
    if nhwc and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def channels_last_known(module: nn.Module, example: torch.Tensor) -> bool:
    """Whether an earlier probe found rows like `example` safe channels-last (never probes).

    Passes ask this, not `probe_channels_last`: by the time a pass runs, a method may have
    hooked the model (e.g. to record attention weights), and a probe forward would be recorded.
    """
    key = _key(example)
    return key is not None and _LAYOUT_OK.get(module, {}).get(key, False)


def probed(module: nn.Module, example: torch.Tensor) -> bool:
    """Whether rows like `example` need no probe (already probed, or never channels-last)."""
    key = _key(example)
    return key is None or key in _LAYOUT_OK.get(module, {})


def probe_channels_last(module: nn.Module, example: torch.Tensor) -> bool:
    """Whether rows like `example` (one row or more) may be fed to `module` channels-last.

    Call at the start of a call, before any method hooks the model, with the model in the
    state it will run in (eval mode, frozen); runs at most two one-row forwards per (model,
    shape, dtype), under `torch.inference_mode()`, through `module.forward` (the model's own
    top-level hooks do not see the probe).
    """
    x = example
    key = _key(x)
    if key is None:
        return False
    known = _LAYOUT_OK.setdefault(module, {})
    if key in known:
        return known[key]
    with torch.inference_mode():
        row = x[:1].detach().clone()  # (a copy: a model may change its input)
        try:
            plain = logits_of(module.forward(row.contiguous()))
        except Exception:  # noqa: BLE001  (the rows fail as they are: the pass will say why)
            return False  # nothing learnt about the layout: not remembered, the next call probes
        try:
            fast = logits_of(module.forward(row.contiguous(memory_format=torch.channels_last)))
            tol = 1e-4 * float(plain.abs().max()) + 1e-6
            ok = plain.shape == fast.shape and bool(((plain - fast).abs() <= tol).all())
        except Exception:  # noqa: BLE001  (any failure channels-last: keep the usual layout)
            ok = False
    known[key] = ok
    return ok
