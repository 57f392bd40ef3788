"""Activation modules run in place in the engine's plain forward passes.

An elementwise activation module with an `inplace` switch (`nn.ReLU`, `nn.ReLU6`, `nn.SiLU`, …)
may overwrite its input instead of writing a new tensor when nothing else reads that input: the
same values (the same kernel, written into the input's memory), one tensor less written and
read per activation. `benchmarks/inplace_activations.py` (one CPU thread, values equal, two
runs): deletion on 8 shapes images (4 ReLU) takes 0.89-0.90× the time it takes with the switches
off, full occlusion 0.90-0.96×, 8-row forwards of EfficientNet-Lite0 (33 ReLU6) 0.94-0.98×.

`inplace_activations(module, example)` turns the switches on for a `with` block and puts every
switch back on exit. Which activations may run in place is found once per model structure (and
per set of forwards replaced on the instance, as folding BatchNorm does, and per memory layout
of the rows: `.contiguous()` or `reshape` copy NCHW rows but may return a view of channels-last
ones, so the engine probes a row in its pass's layout) by a probe forward of one row
(`example[:1]`) that records every ATen operator (a `TorchDispatchMode`): an activation
qualifies when, at every call, its input

- is the output of an operator of this forward (not the model's input, a parameter or a buffer)
  and not a view of another tensor, and
- is read by no other operator of the forward (before or after the activation).

The choice is kept only if the probe's output with those activations in place equals the output
without them exactly. Reads the operators do not show are not seen (a tensor kept by the model
for later use outside its forward, `.data` aliases): the engine's passes read only the output.
Nor are reads that the probe's forward does not make: a forward whose Python reads an
activation's input only for some batch sizes, flags or values (a model with such a forward runs
as it is when it carries any hook: a hook turns every plain-pass speed-up off).

The engine runs its plain forward-only passes this way (`Engine.forwards`, where it folds
BatchNorm: no layer edit, no layer target, no hook on the model). Gradient passes run the model
as it is: measured in the eighteenth session (benchmarks/README.md), ReLU in place there saved
3-4 % on SmoothGrad and nothing measurable on a one-pass call, not worth a map that a model's
unseen read could change.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..models.model import logits_of
from .layout import memory_format_of
from .state import Hooks, submodules

# Elementwise activations whose `inplace` switch gives the same values written into the input.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.Threshold,
)

# module -> {(structure, folded): the activations that may run in place}
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def inplace_activations(
    module: nn.Module,
    example: torch.Tensor,
    probe: bool = True,
    modules: list[nn.Module] | None = None,
) -> Iterator[int]:
    """Run the model's qualifying activations in place inside the block (yields how many).

    `example`: a batch like the pass's inputs (its first row is probed). With `probe=False`
    only a choice found earlier is used. Call with the model in the state it runs in (eval
    mode, frozen, no hooks, BatchNorm folded or not), and add no hook inside the block.
    `modules`: its `submodules`, where the caller has them.
    """
    chosen = _activations(module, example, probe, modules)
    switched = [(m, m.inplace) for m in chosen if not m.inplace]
    try:
        for m, _ in switched:
            m.inplace = True
        yield len(chosen)
    finally:
        for m, before in switched:
            m.inplace = before


def _activations(
    module: nn.Module, example: torch.Tensor, probe: bool, modules: list[nn.Module] | None
) -> list[nn.Module]:
    """The activations of the model's current structure that may run in place (found by the
    probe on first use, kept per structure and per set of modules whose forward is replaced on
    the instance: BatchNorm folded (core/fused.py), layers with row versions)."""
    modules = submodules(module) if modules is None else modules
    key = (
        tuple(map(id, modules)),
        tuple(id(m) for m in modules if "forward" in m.__dict__),
        memory_format_of(example),  # a copy in one layout may be a view in the other
    )
    found = _FOUND.setdefault(module, {})
    if key in found:
        return found[key]
    if not probe:
        return []
    candidates = [m for m in modules if _is_switchable(m)]
    chosen: list[nn.Module] = []
    if candidates and not isinstance(module, torch.jit.ScriptModule):
        try:
            chosen = _probe(module, example[:1].detach().clone(), candidates)
        except Exception:  # noqa: BLE001  (a model the probe cannot run: leave it as it is)
            chosen = []
    found[key] = chosen
    return chosen


def _is_switchable(m: nn.Module) -> bool:
    return isinstance(m, ACTIVATIONS) and isinstance(getattr(m, "inplace", None), bool)


class _Reads(TorchDispatchMode):
    """Every operator's tensor inputs (how often each tensor is read) and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[int, int] = {}
        self.made: set[int] = set()
        self.alive: list[torch.Tensor] = []  # ids stay unique while the probe runs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        for t in inputs:
            self.reads[id(t)] = self.reads.get(id(t), 0) + 1
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.made.add(id(t))
                self.alive.append(t)
        self.alive.extend(inputs)
        return out


def _probe(module: nn.Module, row: torch.Tensor, candidates: list[nn.Module]) -> list[nn.Module]:
    """The candidates whose every call reads a tensor of its own (see the module docstring),
    checked to leave the probe's output unchanged."""
    fed: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in candidates}

    def pre(m: nn.Module, args: tuple) -> None:
        fed[m].append(args[0] if args and isinstance(args[0], torch.Tensor) else None)

    with torch.no_grad():
        with Hooks() as hooks:
            for m in candidates:
                hooks.add(m.register_forward_pre_hook(pre))
            with _Reads() as seen:
                plain = logits_of(module.forward(row))
        chosen = [
            m
            for m, inputs in fed.items()
            if not m.inplace
            and inputs
            and all(
                t is not None
                and t._base is None
                and id(t) in seen.made
                and seen.reads.get(id(t), 0) == 1
                for t in inputs
            )
        ]
        if not chosen:
            return []
        for m in chosen:
            m.inplace = True
        try:
            fast = logits_of(module.forward(row))
        finally:
            for m in chosen:
                m.inplace = False
    return chosen if torch.equal(fast, plain) else []
