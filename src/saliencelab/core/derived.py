"""Tensors derived from a layer's parameters, kept across passes until a source changes.

Passes need tensors computed from the weights: BatchNorm folded into the layer before it (the
engine's forward passes, `core/fused.py`; LRP's canonizer, `methods/relevance/lrp/canonizers.py`),
the positive, negative or absolute parts of a weight and constant biases (LRP's rules). Each costs
a few small kernels per layer; on a GPU at small batches a pass is bound by kernel launches, so
they are computed once and kept, per owner module and key.

A kept value is rebuilt when a source changes: another tensor object, new storage (a move to
another device or dtype, a `.data` assignment) or a new in-place version (`_version`, bumped by
in-place ops in `torch.no_grad()` as optimisers, `load_state_dict` and `reset_parameters` do).
Not seen: an in-place edit through `.data`, which bypasses version counting (as in
`core/fused.py`). A train-mode BatchNorm forward updates its running statistics without a version
bump, so its `num_batches_tracked` counter (which does get one) is a source of the merge too.

Memory: one copy of each kept tensor, alive as long as its owner module (weakly referenced).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")

_KEPT: weakref.WeakKeyDictionary[nn.Module, dict[Any, tuple[tuple, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _stamp(sources: Sequence[torch.Tensor | None]) -> tuple | None:
    """(tensor, version, storage address) per source; None if one has no version counter
    (an inference tensor: its edits could not be seen, so nothing is kept)."""
    try:
        return tuple(None if t is None else (t, t._version, t.data_ptr()) for t in sources)
    except RuntimeError:
        return None


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        x is y or (x is not None and y is not None and x[0] is y[0] and x[1:] == y[1:])
        for x, y in zip(a, b, strict=True)
    )


def kept(
    owner: nn.Module, key: Any, sources: Sequence[torch.Tensor | None], make: Callable[[], T]
) -> T:
    """`make()` (run without autograd), kept on `owner` under `key` (hashable: a name and any
    numbers it depends on) until one of `sources` changes."""
    stamp = _stamp(sources)
    entries = _KEPT.setdefault(owner, {}) if stamp is not None else None
    if entries is not None:
        hit = entries.get(key)
        if hit is not None and _same(hit[0], stamp):
            return hit[1]
    with torch.no_grad():
        value = make()
    if entries is not None:
        entries[key] = (stamp, value)
    return value


def forget(model: nn.Module) -> None:
    """Drop the tensors kept for `model` and its submodules (they are rebuilt when needed)."""
    for m in model.modules():
        _KEPT.pop(m, None)
