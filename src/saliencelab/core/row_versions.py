"""Two versions of some layers' weights in one pass: each row of a chunk picks its version.

The model-parameter randomisation test (`metrics/randomisation/parameter.py`) explains the same
batch under K randomised models. Rather than K calls of B rows, it runs one call of K·B rows
(the batch repeated K times: sample s belongs to step s // B) in which every randomised layer
computes its rows with the weights of their step. The layers between stay shared, so each step
costs what one row costs, and the passes are as large as memory allows.

How: the engine publishes the original sample index of every row of the chunk it is running
(`chunk_samples`). Each layer with two versions gets an instance-level `forward` that splits its
input's rows by version, runs the layer's own forward on each group with that version's
parameters and buffers swapped in, and joins the outputs in row order (the joins are
differentiable, so gradients reach every row through its own weights). Hooks on the layer still
run once, around the joined output.

This is exact only for layers whose rows are independent and whose first input's first axis
is the rows: convolutions, linear layers, embeddings and normalisation layers in eval mode
(`ROWWISE_LAYERS`). `weight_versions` refuses other layers, and a call whose first input does
not have the chunk's rows raises `NotRowwise` so the caller can run its steps one by one. Only
methods that reach the model through the engine's passes and explain each sample from its own
row alone can share a call this way (`MethodSpec.rowwise`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

ROWWISE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.Bilinear,
    nn.Embedding,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

_SAMPLES: ContextVar[torch.Tensor | None] = ContextVar("saliencelab_chunk_samples", default=None)


class NotRowwise(Exception):
    """A layer with two weight versions was called on something other than the chunk's rows."""


@contextmanager
def chunk_samples(samples: torch.Tensor) -> Iterator[None]:
    """Publish the sample index of each row of the chunk being run (set by the engine)."""
    token = _SAMPLES.set(samples)
    try:
        yield
    finally:
        _SAMPLES.reset(token)


def is_rowwise(module: nn.Module) -> bool:
    """Whether `module` is a leaf layer of a type whose rows are computed independently."""
    return isinstance(module, ROWWISE_LAYERS) and not module._modules


# A chunk whose rows change version at most this often runs each stretch of consecutive rows of
# one version on its own (`_runs`); rows interleaved more than that are gathered per version.
MAX_RUNS = 4


def _runs(flags: list[bool]) -> list[tuple[bool, int]]:
    """The stretches of consecutive rows with the same version, in row order: (version, rows)."""
    runs: list[tuple[bool, int]] = []
    for f in flags:
        if runs and runs[-1][0] is f:
            runs[-1] = (f, runs[-1][1] + 1)
        else:
            runs.append((f, 1))
    return runs


class _RowGroups:
    """The group of each row of the current chunk, computed once per chunk."""

    def __init__(self, group_of: Callable[[torch.Tensor], list[int]]) -> None:
        self.group_of = group_of
        self.samples: torch.Tensor | None = None
        self.groups: list[int] = []

    def __call__(self, samples: torch.Tensor) -> list[int]:
        if samples is not self.samples:
            self.groups = self.group_of(samples)
            self.samples = samples
        return self.groups


def _versioned_forward(
    module: nn.Module, other: dict[str, torch.Tensor], uses_other: list[bool], groups: _RowGroups
) -> Callable:
    own_forward = module.forward  # the class's forward (or an instance-level one) of the layer

    def run(version: bool, x: torch.Tensor) -> torch.Tensor:
        if not version:
            return own_forward(x)
        saved = []
        for key, value in other.items():
            store = module._parameters if key in module._parameters else module._buffers
            saved.append((store, key, store[key]))
            store[key] = value
        try:
            return own_forward(x)
        finally:
            for store, key, value in saved:
                store[key] = value

    def forward(*args, **kwargs):
        samples = _SAMPLES.get()
        x = args[0] if args else None
        if samples is None or len(args) != 1 or kwargs or not isinstance(x, torch.Tensor):
            if samples is None and isinstance(x, torch.Tensor) and x.shape[0] == 1:
                return own_forward(*args, **kwargs)  # a one-row probe outside a pass
            raise NotRowwise(type(module).__name__)
        if x.shape[0] != samples.shape[0]:
            raise NotRowwise(type(module).__name__)
        flags = [bool(uses_other[g]) for g in groups(samples)]
        runs = _runs(flags)
        if len(runs) == 1:
            return run(runs[0][0], x)
        if len(runs) <= MAX_RUNS:
            # Views of the stretches: their backward joins the rows' gradients with one cat,
            # in the layout the layers gave them. Indexing (`x[a:b]`, `x[idx]`) would write them
            # into zeros made in the default layout: with channels-last rows on the CPU the
            # layers below then convert every gradient (measured: 32 rows of 4 steps of the
            # shapes CNN took 1.6× a plain pass, 1.1× split).
            pieces = x.split([n for _, n in runs])
            return torch.cat([run(v, p) for (v, _), p in zip(runs, pieces, strict=True)])
        outs, order = [], []
        for version in (False, True):
            rows = torch.tensor([i for i, f in enumerate(flags) if f is version])
            outs.append(run(version, x[rows.to(x.device)]))
            order.append(rows)
        order_all = torch.cat(order)
        inverse = torch.empty_like(order_all)
        inverse[order_all] = torch.arange(len(order_all))
        return torch.cat(outs)[inverse.to(x.device)]

    return forward


@contextmanager
def weight_versions(
    model: nn.Module,
    others: dict[str, dict[str, torch.Tensor]],
    group_of: Callable[[torch.Tensor], list[int]],
    uses_other: dict[str, list[bool]],
) -> Iterator[None]:
    """Give the named layers a second version of their weights, per row, for the block.

    `others[name]` maps parameter and buffer names of layer `name` to the other version's
    tensors. `group_of(samples)` gives the group of each row of a chunk from the rows' sample
    indices (once per chunk), and row i of a chunk uses layer `name`'s other version when
    `uses_other[name][group_of(samples)[i]]`. Each layer's `forward` is restored afterwards.
    Raises ValueError for a layer that is not `is_rowwise`.
    """
    layers = {name: model.get_submodule(name) if name else model for name in others}
    for name, m in layers.items():
        if not is_rowwise(m):
            raise ValueError(f"{name or '<root>'} ({type(m).__name__}) is not a row-wise layer")
    groups = _RowGroups(group_of)
    installed: list[tuple[nn.Module, object]] = []
    try:
        for name, m in layers.items():
            previous = m.__dict__.get("forward")
            m.forward = _versioned_forward(m, others[name], uses_other[name], groups)
            installed.append((m, previous))
        yield
    finally:
        for m, previous in reversed(installed):
            if previous is None:
                del m.__dict__["forward"]
            else:
                m.__dict__["forward"] = previous
