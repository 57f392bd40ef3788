"""Activation modules run in place in the engine's plain forward passes.

An elementwise activation module with an `inplace` switch (`nn.ReLU`, `nn.ReLU6`, `nn.SiLU`, …)
may overwrite its input instead of writing a new tensor when nothing else reads that input: the
same values (the same kernel, written into the input's memory), one tensor less written and
read per activation. `benchmarks/inplace_activations.py` (one CPU thread, values equal, two
runs): deletion on 8 shapes images (4 ReLU) takes 0.89-0.90× the time it takes with the switches
off, full occlusion 0.90-0.96×, 8-row forwards of EfficientNet-Lite0 (33 ReLU6) 0.94-0.98×.

`inplace_activations(module, example)` turns the switches on for a `with` block and puts every
switch back on exit. Which activations may run in place is found once per model structure (and
per set of forwards replaced on the instance, as folding BatchNorm does) by a probe forward of
one row (`example[:1]`) that records every ATen operator (a `TorchDispatchMode`): an activation
qualifies when, at every call, its input

- is the output of an operator of this forward (not the model's input, a parameter or a buffer)
  and not a view of another tensor, and
- is read by no other operator of the forward (before or after the activation).

The choice is kept only if the probe's output with those activations in place equals the output
without them exactly. Reads the operators do not show are not seen (a tensor kept by the model
for later use outside its forward, `.data` aliases): the engine's passes read only the output.

The engine runs its plain forward-only passes this way (`Engine.forwards`, where it folds
BatchNorm: no layer edit, no layer target, no hook on the model), and its gradient passes with
the plain backward on a model without hooks (`Engine.gradients`: the saliency family,
integrated gradients, SmoothGrad, Grad-CAM and the other gradient CAMs, the explanations the
metrics recompute; a layer the pass captures is kept while the model goes on with a copy).
There backward must also not need what an activation overwrites. The gradient probe
(`grad=True`) records the forward with autograd on, where autograd keeping an operator's output
for its backward (e.g. a sigmoid's) shows as a read of it (`aten.detach`), and then runs the
row's backward with the activations in place: the choice is kept only if no error is raised
(autograd's version counters catch a kept tensor that was overwritten) and the input gradient
equals the one without them exactly (a custom `autograd.Function` may keep its output where no
counter sees it). An activation's own backward reads its result (ReLU, ReLU6) or its input
(SiLU, which autograd then keeps a copy of). Only `nn.ReLU` is switched there
(`GRAD_ACTIVATIONS`): measured on one CPU thread (forward + input gradient of 8 rows through
three 32-channel convolutions at 64×64, values equal), in place / off is 0.89-0.95 for ReLU,
0.94-1.05 for ReLU6, 1.04 for Hardtanh and Threshold, 1.0 for LeakyReLU, Hardswish and Mish,
and 1.13 for SiLU (autograd keeps a copy of its input). Forward + input gradient of the shapes
CNN (4 ReLU) on 8 rows as a bare loop: 0.93-0.95; in a call of one such pass (`sl.explain` of
saliency, random logit, MPRT, input invariance) 0.98-1.0, within noise; SmoothGrad of 8 shapes
images (200 rows): 0.96-0.97 (benchmarks/inplace_activations.py). Backward rules that hook
activations (guided backprop, deconvolution, DeepLIFT, LRP) and a user's hooks keep the
switches off: they may read the tensors an activation would overwrite.
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

# The activations switched in passes that run backward (see the module docstring).
GRAD_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU,)

# module -> {(grad, structure, replaced forwards): the activations that may run in place}
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def inplace_activations(
    module: nn.Module,
    example: torch.Tensor,
    probe: bool = True,
    modules: list[nn.Module] | None = None,
) -> Iterator[int]:
    """Run the model's qualifying activations in place inside the block (yields how many), for
    forward-only passes (passes that run backward: `inplace_choice(..., grad=True)` and
    `switched_on`).

    `example`: a batch like the pass's inputs (its first row is probed). With `probe=False`
    only a choice found earlier is used. Call with the model in the state it runs in (eval
    mode, frozen, no hooks, BatchNorm folded or not), and add no hook inside the block.
    `modules`: its `submodules`, where the caller has them.
    """
    chosen = inplace_choice(module, example, probe, modules)
    with switched_on(chosen):
        yield len(chosen)


@contextmanager
def switched_on(chosen: list[nn.Module]) -> Iterator[None]:
    """The `inplace` switches of `chosen` (from `inplace_choice`) on inside the block, each put
    back on exit (a few µs: a pass that yields between chunks switches around each chunk)."""
    switched = [m for m in chosen if not m.inplace]
    try:
        for m in switched:
            m.inplace = True
        yield
    finally:
        for m in switched:
            m.inplace = False


def inplace_choice(
    module: nn.Module,
    example: torch.Tensor,
    probe: bool = True,
    modules: list[nn.Module] | None = None,
    grad: bool = False,
) -> list[nn.Module]:
    """The activations of the model's current structure that may run in place (found by the
    probe on first use, kept per structure, per kind of pass and per set of modules whose
    forward is replaced on the instance: BatchNorm folded (core/fused.py), layers with row
    versions, input invariance's first layer). Arguments as `inplace_activations`; `grad`: for
    passes that run backward (only `GRAD_ACTIVATIONS`, checked by the gradient probe)."""
    modules = submodules(module) if modules is None else modules
    key = (
        grad,
        tuple(map(id, modules)),
        tuple(id(m) for m in modules if "forward" in m.__dict__),
    )
    found = _FOUND.setdefault(module, {})
    if key in found:
        return found[key]
    if not probe:
        return []
    candidates = [
        m for m in modules if _is_switchable(m) and (not grad or isinstance(m, GRAD_ACTIVATIONS))
    ]
    chosen: list[nn.Module] = []
    if candidates and not isinstance(module, torch.jit.ScriptModule):
        try:
            chosen = _probe(module, example[:1].detach().clone(), candidates, grad)
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


def _run(module: nn.Module, row: torch.Tensor, grad: bool) -> tuple[torch.Tensor, ...]:
    """The probe row's logits and, with `grad`, the gradient of their sum to the row."""
    if not grad:
        with torch.no_grad():
            return (logits_of(module.forward(row)),)
    leaf = row.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = logits_of(module.forward(leaf))
        (g,) = torch.autograd.grad(out.sum(), leaf)
    return out.detach(), g


def _probe(
    module: nn.Module, row: torch.Tensor, candidates: list[nn.Module], grad: bool = False
) -> list[nn.Module]:
    """The candidates whose every call reads a tensor of its own (see the module docstring),
    checked to leave the probe's output (and, with `grad`, its input gradient) unchanged."""
    fed: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in candidates}

    def pre(m: nn.Module, args: tuple) -> None:
        fed[m].append(args[0] if args and isinstance(args[0], torch.Tensor) else None)

    with Hooks() as hooks:
        for m in candidates:
            hooks.add(m.register_forward_pre_hook(pre))
        with torch.set_grad_enabled(grad):  # the forward as the pass runs it (no backward)
            with _Reads() as seen:
                plain_out = logits_of(module.forward(row.requires_grad_(grad)))
    del plain_out
    row = row.detach()
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
    plain = _run(module, row, grad)
    with switched_on(chosen):
        fast = _run(module, row, grad)  # autograd raises if a saved tensor was overwritten
    same = all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))
    return chosen if same else []
