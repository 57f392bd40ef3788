"""Modified backward passes through ReLU-like activations (guided backprop, deconvnet).

- guided backpropagation (Springenberg et al. 2015): at each ReLU, pass back only positive
  gradients where the input was positive: R_in = (x > 0) * max(R_out, 0).
- deconvnet (Zeiler & Fergus 2014): pass back the ReLU of the gradient, ignoring the input:
  R_in = max(R_out, 0).

Both act on activation modules (`nn.ReLU`, `nn.ReLU6`). ReLU6 keeps its own gate (0 < x < 6)
under guided backprop. (Captum 0.9 hooks `nn.ReLU` only: on a ReLU6 network such as
EfficientNet-Lite0 its GuidedBackprop and Deconvolution return the plain gradient; with each
ReLU6 replaced by an `nn.ReLU` subclass computing relu6 the two libraries agree exactly.)

Every mode that acts through hooks checks, after the first forward of a pass, that its hooks
took effect (`BackwardCheck`), since a hook that never runs leaves the plain gradient, silently:

- a compiled model (TorchScript, torch.export) runs its layers inside its graph, where no
  Python hook reaches them (or hides their types): refused at install, one sentence;
- guided / deconv: the first forward also counts the ReLU calls of the forward (`F.relu`,
  `torch.relu`, `Tensor.relu`, `F.relu6` and their aten ops, seen by a `TorchFunctionMode`) that
  were not an `nn.ReLU` module's. If none of the forward's ReLUs got the modified backward it
  is an error; if only some did (modules and functional ReLUs mixed), a warning. ReLUs written
  otherwise (`clamp(min=0)`, `torch.where`) are not recognised. A forward without any ReLU
  (a GELU network) is left as it is: its modified gradient is the plain one.
- rules (`BackwardRule`, e.g. LRP, DeepLIFT) may define `check_forward(reached_output)`, called
  after the first forward: they raise when layers they hooked exist but none of their hooks ran.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import SaliencelabError
from .state import Hooks

RELU_MODULES = (nn.ReLU, nn.ReLU6)
BACKWARD_MODES = ("plain", "guided", "deconv")
MODE_METHODS = {"guided": "guided_backprop", "deconv": "deconvnet"}

# The calls a ReLU can be written as in a forward (module or functional): an `nn.ReLU` module's
# forward makes exactly one of them (`F.relu`); an `nn.ReLU6` module's makes none (`F.hardtanh`).
RELU_FUNCTIONS = frozenset(
    {
        F.relu,
        F.relu_,
        F.relu6,
        torch.relu,
        torch.relu_,
        torch.Tensor.relu,
        torch.Tensor.relu_,
        torch.ops.aten.relu.default,
        torch.ops.aten.relu_.default,
    }
)


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward keeps only positive gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


class _DeconvReLU(torch.autograd.Function):
    """Forward = the module's output; backward = max(grad, 0) to the module's input."""

    @staticmethod
    def forward(ctx, inp, out):
        return out.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0), None


def _guided(module, inputs, out):
    # The module's own backward applies (x > 0); clamping the incoming gradient first gives
    # (x > 0) * max(grad, 0).
    return _PositiveGradient.apply(out)


class _Deconv:
    """Deconvnet's hooks: the output's gradient goes to the module's input as max(grad, 0),
    around the module's own backward. An in-place ReLU (`inplace=True`) overwrites its input,
    whose history then runs through the ReLU's own gated backward: its pre-hook keeps the
    input and feeds the module a copy (one copy per call, for in-place modules only)."""

    def __init__(self) -> None:
        self.kept: dict[nn.Module, torch.Tensor] = {}

    def before(self, module, inputs):
        if not getattr(module, "inplace", False):
            return None
        self.kept[module] = inputs[0]
        return (inputs[0].clone(), *inputs[1:])

    def __call__(self, module, inputs, out):
        return _DeconvReLU.apply(self.kept.pop(module, inputs[0]), out)


class BackwardRule(Protocol):
    """A modified backward pass (LRP rules, DeepLIFT multipliers…) given to the engine.

    `install` registers its hooks (and any reversible model surgery, undone with
    `hooks.on_exit(undo)`) on `model`; the engine removes them after the pass, also on error.
    A rule may also define `check_forward(reached_output: bool) -> None`, called after the
    pass's first forward (`reached_output`: it ran to the model's output, not stopped at a
    layer target's layer), to raise if its hooks did not take effect; and `method`, its name.
    """

    def install(self, model: nn.Module, hooks: Hooks) -> None: ...


Backward = Union[str, BackwardRule]  # noqa: UP007


def compiled_kind(model: nn.Module) -> str | None:
    """ "TorchScript" or "torch.export" for a model that runs its layers inside a compiled graph
    (so Python hooks on them never run, or their types are hidden), else None."""
    if isinstance(model, torch.jit.ScriptModule):
        return "TorchScript"
    try:
        from torch.export.unflatten import InterpreterModule, UnflattenedModule
    except ImportError:  # pragma: no cover (old PyTorch)
        return None
    if isinstance(model, (UnflattenedModule, InterpreterModule)):
        return "torch.export"
    # `ExportedProgram.module()`: one flat graph of aten operators.
    if isinstance(model, torch.fx.GraphModule) and any(
        isinstance(node.target, torch._ops.OpOverload) for node in model.graph.nodes
    ):
        return "torch.export"
    return None


def refuse_compiled(model: nn.Module, method: str, what: str = "layers") -> None:
    """One sentence if `model` is compiled and `method` needs hooks on its `what`."""
    kind = compiled_kind(model)
    if kind is None and any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        kind = "TorchScript"  # a scripted submodule inside a Python model
    if kind is not None:
        raise SaliencelabError(
            f"{method} works through hooks on the model's {what}, but a {kind} model runs them "
            "inside its compiled graph, where no Python hook reaches them: explain the Python "
            "model (load it from 'file.py:build'), or use a method without hooks such as saliency."
        )


def require_hooks_ran(
    method: str, what: str, hooked: list[str], fired: int, reached_output: bool
) -> None:
    """One sentence when a rule hooked modules (`hooked`, their names) but none of its hooks ran
    in a forward that reached the output (the model calls their functional form, or runs them
    compiled): its map would silently be the plain gradient's. Some may stay unused (heads)."""
    if hooked and not fired and reached_output:
        raise SaliencelabError(
            f"{method} applies its rules through hooks on the model's {what}, but none of the "
            f"{len(hooked)} hooked (e.g. {hooked[0]}) ran in its forward (it calls their "
            "functional form, or runs them compiled): explain a model whose forward calls those "
            "modules, or use input_x_gradient."
        )


class BackwardCheck:
    """Whether an installed mode's hooks took effect: `watch()` around the forwards, then
    `after_forward(reached_output)`; only the pass's first completed forward is checked."""

    def __init__(self, rule: Any = None) -> None:
        self.rule = rule
        self.done = False

    def watch(self) -> AbstractContextManager:
        return nullcontext()

    def after_forward(self, reached_output: bool) -> None:
        if self.done:
            return
        self.done = True
        check = getattr(self.rule, "check_forward", None)
        if check is not None:
            check(reached_output)


class _ReluCalls(TorchFunctionMode):
    """Counts the ReLU calls of a forward, module and functional (`RELU_FUNCTIONS`)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in RELU_FUNCTIONS:
            self.count += 1
        return func(*args, **(kwargs or {}))


class _ReluCheck(BackwardCheck):
    """Guided backprop / deconvnet: the ReLU module hooks that ran vs all ReLU calls."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.fired = 0  # ReLU / ReLU6 module calls whose backward was changed
        self.relu_fired = 0  # of which nn.ReLU (each made one counted `F.relu` call)
        self._calls: _ReluCalls | None = None

    def hook(self, fn):
        def hook(module, inputs, out):
            self.fired += 1
            if isinstance(module, nn.ReLU):
                self.relu_fired += 1
            return fn(module, inputs, out)

        return hook

    def watch(self) -> AbstractContextManager:
        if self.done:
            return nullcontext()
        self.fired = self.relu_fired = 0
        self._calls = _ReluCalls()
        return self._calls

    def after_forward(self, reached_output: bool) -> None:
        if self.done or self._calls is None:
            return
        self.done = True
        functional = max(self._calls.count - self.relu_fired, 0)
        if functional == 0:
            return  # every ReLU of the forward was a hooked module (or there was none)
        if self.fired == 0:
            raise SaliencelabError(
                f"{self.method} changes the backward of the model's nn.ReLU modules, but none "
                f"ran in its forward, which has {functional} functional ReLU call(s) (F.relu, "
                "torch.relu) that no hook reaches: make them nn.ReLU modules, or use saliency."
            )
        warnings.warn(
            f"{self.method}: {functional} of the {functional + self.fired} ReLU calls in the "
            "model's forward are functional (F.relu, torch.relu) and keep their plain backward; "
            "make them nn.ReLU modules for a fully modified backward.",
            stacklevel=2,
        )


def install_backward_mode(model: nn.Module, mode: Backward, hooks: Hooks) -> BackwardCheck | None:
    """Hook every ReLU module of `model` for `mode` (or install a rule).

    Returns the check the engine runs around the pass's first forward (None for "plain").
    A compiled model is refused (`refuse_compiled`) for every mode but "plain".
    """
    if not isinstance(mode, str):
        refuse_compiled(model, getattr(mode, "method", None) or type(mode).__name__)
        mode.install(model, hooks)
        return BackwardCheck(mode)
    if mode == "plain":
        return None
    if mode not in BACKWARD_MODES:
        raise ValueError(f"unknown backward mode {mode!r}")
    method = MODE_METHODS[mode]
    refuse_compiled(model, method, "nn.ReLU modules")
    check = _ReluCheck(method)
    deconv = _Deconv() if mode == "deconv" else None
    hook = check.hook(_guided if deconv is None else deconv)
    for m in model.modules():
        if isinstance(m, RELU_MODULES):
            if deconv is not None and getattr(m, "inplace", False):
                hooks.add(m.register_forward_pre_hook(deconv.before))
            hooks.add(m.register_forward_hook(hook))
    return check
