"""How LRP runs: a `BackwardRule` for the engine, and the registered method `lrp`.

:class:`LRPRule` installs, for one pass, the canonizers (reversible surgery) and one forward hook
per layer that has a rule in the composite. A layer's hook keeps its output value and replaces
its backward by the rule (a custom autograd function whose backward runs the rule's gradient
trick, see `rules.py`); an activation's hook gives it the pass-through backward. What flows
backwards is the modified gradient g (relevance per unit of activation, R = a ⊙ g):

- at the logits g = ∂S/∂logits, so the initial relevance is logits ⊙ ∂S/∂logits: the target
  logit on its class, 0 elsewhere (for a callable target S, its gradient times the logits);
- a layer with relevance R = z ⊙ g_out at its output z sends back g_in with R_in = a ⊙ g_in;
- a forward pre-hook on the model turns g into relevance at the input, R = x ⊙ g, so the
  engine's input gradient *is* the relevance map. Rules that are not proportional to the input
  (z-box, flat, w-square) run on the layer reading the input and return its relevance directly.

The relevance conservation gap Σ R − S is returned per sample as `extras["delta"]` (non-zero
where biases, ε or non-conservative rules absorb or add relevance).

Reached are modules only: an operation written in `forward` gets its plain gradient, which is
LRP-0 for linear operations (sums, means, padding, reshapes) but not LRP for products (gating,
attention). Each hooked module call is handled separately, so modules used twice work. If none
of the layers given a rule ran in the first forward (their functional form was called), or the
model is compiled (TorchScript, torch.export), the pass raises instead of returning
gradient × input; a Python model where no layer gets a rule only warns.

Kernels per pass (on a GPU at small batches the pass is bound by kernel launches, so they are
counted: `benchmarks/lrp.py`). A hooked layer returns its own output, not a copy: its rule
reads it back, and recomputes it if it was changed in place since (`out += x`, an in-place
ReLU after a merged BatchNorm). A pass-through activation right after a hooked layer (ReLU6 of
conv → BN → ReLU6) is fused into that layer: the layer's relevance is f(z) ⊙ g directly, instead
of a ratio f(z) / z computed forward and multiplied backward. Weight copies (merged BatchNorm,
W⁺, |W|, ...) are kept across passes until the weights change (`core/derived.py`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from ....core.backward import refuse_compiled, require_hooks_ran
from ....core.context import Context, MethodOutput
from ....core.errors import SaliencelabError
from ....core.registry import quoted, register
from ....core.state import Hooks
from ....models.model import parameter_dtype, rounding_eps
from ...options import check_flag, is_number
from .canonizers import Canonizer, default_canonizers
from .composites import PRESETS, Composite, composite_from_name
from .rules import (
    NONNEGATIVE_ACTIVATIONS,
    NONNEGATIVE_MARK,
    LayerView,
    Pass,
    Rule,
    pass_through,
    zero_at_zero,
)

CALL_MARK = "_saliencelab_lrp_call"  # on a hooked layer's output: its `_Call`
DEFAULT_EPSILON = 1e-6  # the `lrp` method's defaults (also `composite_from_name`'s)
DEFAULT_GAMMA = 0.25


@dataclass
class LayerRecord:
    """The relevance entering (at the output) and leaving (at the inputs) one hooked layer."""

    name: str
    rule: Rule
    relevance_out: torch.Tensor
    relevance_in: tuple[torch.Tensor, ...]


class _LayerRelevance(torch.autograd.Function):
    """Forward: the layer's output as computed (an alias, not a copy). Backward: its rule."""

    @staticmethod
    def forward(ctx, call: _Call, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.call = call
        ctx.save_for_backward(*inputs)
        out, call.returned = call.returned, None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grads = ctx.call.backward(ctx.saved_tensors, grad)
        needed = ctx.needs_input_grad[1:]
        return (None, *(g if n else None for g, n in zip(grads, needed, strict=True)))


class _InputRelevance(torch.autograd.Function):
    """Identity forward on the model's input; backward turns g into relevance x ⊙ g."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * x


@dataclass(eq=False)
class _Activation:
    """A pass-through activation fused into the layer whose output it reads (see `_Fused`)."""

    module: nn.Module
    out: torch.Tensor  # f(z), an alias of the activation's output
    version: int
    returned: torch.Tensor | None = None
    grad: torch.Tensor | None = None  # g at f(z), set by the backward

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """f(z) as the forward computed it (recomputed if changed in place since)."""
        if self.out._version == self.version:
            return self.out
        with torch.no_grad():
            return self.module.forward(z)


class _Fused(torch.autograd.Function):
    """A pass-through activation right after a hooked layer, R(z) = R(f(z)): forward f(z) as
    computed; backward hands g = ∂S/∂f(z) on unchanged (no kernel) and leaves it to the layer,
    whose relevance is then f(z) ⊙ g: the same as z ⊙ (g ⊙ f(z) / z) of `pass_through`, without
    the ratio's two kernels forward and one backward."""

    @staticmethod
    def forward(ctx, act: _Activation, z: torch.Tensor) -> torch.Tensor:
        ctx.act = act
        out, act.returned = act.returned, None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.act.grad = grad
        return None, grad


@dataclass(eq=False)
class _Call:
    """One call of a hooked layer: what its backward needs."""

    owner: LRPRule
    name: str
    module: nn.Module
    rule: Rule
    z: torch.Tensor  # the output, an alias of what the layer returned
    version: int = 0  # z's in-place version when the layer returned it
    returned: torch.Tensor | None = None  # handed to `_LayerRelevance` (another alias)
    graph: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None  # (output, inputs)
    nonnegative: bool = False  # its input came out of a ReLU-like activation
    activation: _Activation | None = None  # fused into this call

    def _vjp(self, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(∂z/∂input)ᵀ s through the layer's own graph from the forward (no recomputation)."""
        out, inputs = self.graph
        self.graph = None
        need = [t for t in inputs if t.requires_grad]
        # Inside a non-reentrant torch.utils.checkpoint the graph's saved tensors were dropped:
        # this backward (a graph task of its own) recomputes the checkpointed region, which must
        # save what its forward saved, so the hooks run there as in the forward (not `_busy`).
        owner, busy = self.owner, self.owner._busy
        owner._busy = False
        try:
            grads = torch.autograd.grad(out, need, s, allow_unused=True, materialize_grads=True)
        finally:
            owner._busy = busy
        grads = iter(grads)
        return tuple(next(grads) if t.requires_grad else torch.zeros_like(t) for t in inputs)

    def unchanged(self) -> bool:
        return self.z._version == self.version

    def _output(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """z as the forward computed it: recomputed when the returned output was changed in
        place since (e.g. `out += x` or an in-place activation after a merged BatchNorm)."""
        if self.unchanged():
            return self.z
        self.graph = None  # its output was changed too
        with torch.no_grad():
            return self.module.forward(*inputs)

    def _relevance(self, z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """R = z ⊙ g at the output; with a fused activation f, R = f(z) ⊙ g_f + z ⊙ g_other,
        where g = g_f + g_other sums what f and any other reader of z sent back."""
        act, self.activation = self.activation, None
        if act is None or act.grad is None:
            return z * grad
        f, g_f = act.value(z), act.grad
        if grad is g_f:  # f is z's only reader (autograd handed its gradient on as it was)
            return f * g_f
        return torch.sub(grad, g_f).mul_(z).addcmul_(f, g_f)

    def backward(self, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor):
        owner, busy = self.owner, self.owner._busy
        owner._busy = True  # a rule's recomputation must not re-enter the hooks
        try:
            inputs = tuple(t.detach() for t in inputs)
            z = self._output(inputs)
            relevance = self._relevance(z, grad)
            recorded = relevance.clone() if owner.record else None
            vjp = self._vjp if self.graph is not None else None
            view = LayerView(self.module, inputs, z, vjp, known_nonnegative=self.nonnegative)
            with torch.enable_grad():
                result = self.rule.propagate(view, relevance)
        finally:
            owner._busy = busy
            self.graph = None
        if owner.record:
            r_in = (
                tuple(a * g for a, g in zip(inputs, result, strict=True))
                if self.rule.proportional
                else result
            )
            owner.records.append(LayerRecord(self.name, self.rule, recorded, r_in))
        return result


@dataclass(eq=False)
class LRPRule:
    """Layer-wise relevance propagation as a backward rule for the engine.

    >>> rule = LRPRule(composite_from_name("epsilon_plus"))
    >>> relevance = ctx.capture(input_grad=True, backward=rule).input_grad

    `record=True` keeps a :class:`LayerRecord` per hooked layer call in `records` (tests,
    debugging; memory grows with the model).
    """

    composite: Composite
    canonizers: Sequence[Canonizer] = field(default_factory=default_canonizers)
    record: bool = False
    records: list[LayerRecord] = field(default_factory=list, init=False, repr=False)
    _input: torch.Tensor | None = field(default=None, init=False, repr=False)
    _wrapped: torch.Tensor | None = field(default=None, init=False, repr=False)
    _busy: bool = field(default=False, init=False, repr=False)
    # Layers given a (non pass-through) rule at install, and calls of their hooks since.
    _layers: list[str] = field(default_factory=list, init=False, repr=False)
    _fired: int = field(default=0, init=False, repr=False)
    method: ClassVar[str] = "lrp"

    def install(self, model: nn.Module, hooks: Hooks) -> None:
        for canonizer in self.canonizers:
            canonizer.apply(model, hooks)
        hooks.on_exit(self._forget_input)
        hooks.add(model.register_forward_pre_hook(self._wrap_input))
        self._layers, self._fired = [], 0
        for name, module, rule in self.composite.assign(model):
            if isinstance(rule, Pass):
                hook = self._pass_hook
                if getattr(module, "inplace", False):  # its input is needed: out-of-place
                    hooks.on_exit(partial(setattr, module, "inplace", True))
                    module.inplace = False
            else:
                hook = partial(self._layer_hook, name, rule)
                self._layers.append(name or "(model)")
            hooks.add(module.register_forward_hook(hook))

    def check_forward(self, reached_output: bool) -> None:
        """After the first forward: the layers given a rule must have run (an error, not a map
        that is silently gradient × input). Layers that exist but are not all called are fine
        (unused heads); a forward stopped by a layer target is not checked."""
        require_hooks_ran("lrp", "layers", self._layers, self._fired, reached_output)

    # -- hooks --------------------------------------------------------------------------------

    def _forget_input(self) -> None:
        self._input = self._wrapped = None

    def _wrap_input(self, module: nn.Module, args: tuple[Any, ...]):
        if self._busy or not args or not isinstance(args[0], torch.Tensor):
            return None
        x = args[0]
        if not x.requires_grad:
            return None
        self._input = x
        self._wrapped = _InputRelevance.apply(x)
        return (self._wrapped, *args[1:])

    def _reads_input(self, inputs: tuple[Any, ...]) -> bool:
        """Whether a layer's only input is the model's input as wrapped by `_wrap_input`. A
        non-reentrant torch.utils.checkpoint's recomputation may unpack it as another tensor
        object: the same node's output (its grad_fn) is that input too."""
        wrapped = self._wrapped
        if wrapped is None or len(inputs) != 1:
            return False
        a = inputs[0]
        return a is wrapped or (a.grad_fn is not None and a.grad_fn is wrapped.grad_fn)

    def _pass_hook(self, module: nn.Module, inputs: tuple[Any, ...], out: Any):
        if self._busy or not isinstance(out, torch.Tensor) or not inputs:
            return None
        z = inputs[0]
        if not isinstance(z, torch.Tensor) or not z.requires_grad or z.shape != out.shape:
            return None
        call = getattr(z, CALL_MARK, None)
        if (
            call is not None
            and call.activation is None
            and call.unchanged()  # z is the layer's output as computed
            and zero_at_zero(module)  # f(z) ⊙ g = z ⊙ (g ⊙ f(z) / z), also at z = 0
        ):
            held = out.detach()
            act = _Activation(module, held, held._version, returned=out.detach())
            call.activation = act
            result = _Fused.apply(act, z)
        else:
            result = pass_through(z, out)
        if isinstance(module, NONNEGATIVE_ACTIVATIONS):
            setattr(result, NONNEGATIVE_MARK, True)
        return result

    def _layer_hook(self, name: str, rule: Rule, module: nn.Module, inputs, out):
        if self._busy:
            return None
        self._fired += 1
        if not isinstance(out, torch.Tensor) or not all(
            isinstance(t, torch.Tensor) for t in inputs
        ):
            raise SaliencelabError(
                f"lrp: the layer {name} ({type(module).__name__}) takes or returns something "
                "other than tensors; give it no rule in the composite."
            )
        if not rule.proportional:
            if not self._reads_input(inputs):
                raise SaliencelabError(
                    f"lrp: the {rule.name} rule applies only to the layer that reads the model's "
                    f"input, but {name} reads another tensor; use it as a composite's first-layer "
                    "rule on a model whose first layer gets the input as it is."
                )
            inputs = (self._input,)
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in inputs):
            return None
        z = out.detach()
        call = _Call(self, name, module, rule, z, z._version, returned=out.detach())
        call.nonnegative = len(inputs) == 1 and getattr(inputs[0], NONNEGATIVE_MARK, False)
        if rule.proportional and rule.uses_vjp and out.grad_fn is not None and len(inputs) == 1:
            # Several inputs may depend on each other (h = f(x), h + x): their partial
            # derivatives need a recomputation on independent leaves, not this graph.
            call.graph = (out, tuple(inputs))
        result = _LayerRelevance.apply(call, *inputs)
        setattr(result, CALL_MARK, call)  # for an activation reading it (`_Fused`)
        return result


def _check_number(value: Any, name: str, example: str) -> float:
    """`value` as a float if it is a finite number >= 0 (a bool is refused, not read as 0 / 1)."""
    if not is_number(value) or value < 0:
        raise SaliencelabError(
            f"lrp: {name} must be >= 0, a finite number (not a bool), got {value!r}; try {example}."
        )
    return float(value)


def _check_options(
    epsilon: Any, gamma: Any, composite: str | Composite, dtype: torch.dtype
) -> tuple[float, float]:
    """epsilon and gamma as floats; refused when not finite numbers >= 0, when epsilon does not
    fit in the model's dtype (the stabiliser is a tensor of it), or when the composite does not
    use them (a value other than the default would be ignored, as low / high are refused)."""
    epsilon = _check_number(epsilon, "epsilon", "1e-6")
    gamma = _check_number(gamma, "gamma", "0.25")
    largest = torch.finfo(dtype).max
    if epsilon > largest:
        kind = str(dtype).removeprefix("torch.")
        raise SaliencelabError(
            f"lrp: epsilon must be >= 0, a finite number the model's {kind} can hold (at most "
            f"{largest:.3g}), got {epsilon!r}; try 1e-6."
        )
    known = isinstance(composite, Composite) or (
        isinstance(composite, str) and composite in PRESETS
    )
    name = composite if isinstance(composite, str) else "a Composite"
    if known and gamma != DEFAULT_GAMMA and composite != "epsilon_gamma_box":
        raise SaliencelabError(
            f"lrp: gamma is the parameter of the LRP-γ rule of composite='epsilon_gamma_box', "
            f"which composite={name!r} does not use (it would be ignored); pick that composite, "
            "or give your Composite's Gamma(gamma) itself."
        )
    if epsilon != DEFAULT_EPSILON and isinstance(composite, Composite):
        raise SaliencelabError(
            "lrp: epsilon is the parameter of the presets' LRP-ε rule, which a Composite does not "
            "use (it would be ignored); give your Composite's Epsilon(epsilon) itself."
        )
    return epsilon, gamma


def _check_same_logits(ctx: Context, logits: torch.Tensor) -> None:
    """The canonized model must compute what the model computes (else the surgery was wrong).

    Equal up to rounding: max |difference| within max(1e-3, 32 ε) · max |logit|, ε the machine
    epsilon of the logits' (or the model's, if coarser) dtype: 1e-3 in float32 and float64,
    0.031 in float16, 0.25 in bfloat16. A wrong merge is off by the size of the outputs.
    """
    if ctx.logits is None or ctx.logits.shape != logits.shape:
        return
    clean = ctx.logits.to(logits.dtype)
    scale = clean.abs().max().clamp(min=1.0)
    gap = (logits - clean).abs().max()
    eps = rounding_eps(logits.dtype, parameter_dtype(ctx.model))
    # TF32 convolutions (PyTorch's default on CUDA) keep 10 bits of mantissa, as float16.
    if logits.is_cuda and (
        torch.backends.cudnn.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    ):
        eps = max(eps, 2.0**-10)
    if gap > max(1e-3, 32 * eps) * scale:
        raise SaliencelabError(
            f"lrp: the canonized model's outputs differ from the model's by {float(gap):.3g}: a "
            "BatchNorm was merged into a layer it does not follow, or a hook on a merged layer "
            "depends on its weights; pass canonize=False."
        )


@register(
    "lrp",
    family="relevance",
    cost="1",
    reduction="signed sum over channels",
    choices={"composite": (*quoted(PRESETS), "an lrp Composite")},
)
def lrp(
    ctx: Context,
    *,
    composite: str | Composite = "epsilon_plus",
    epsilon: float = DEFAULT_EPSILON,
    gamma: float = DEFAULT_GAMMA,
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
    canonize: bool = True,
) -> MethodOutput:
    """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019).

    Relevance R_out = target logit is sent back layer by layer, R_j = Σ_k c_jk / Σ_j' c_j'k R_k,
    with the contributions c_jk of each layer's rule (see `methods/relevance/lrp/rules.py`).
    Options: `composite` (rules per layer) "epsilon_plus" | "epsilon" | "epsilon_plus_flat" |
    "epsilon_gamma_box" | "epsilon_alpha2_beta1" | a `Composite`; `epsilon` of LRP-ε (dense
    layers, pooling, sums); `gamma` of LRP-γ (epsilon_gamma_box only); `low` / `high` the pixel
    bounds of z-box (default: each sample's min / max); epsilon and gamma are finite numbers
    >= 0, and one a chosen composite would ignore is refused; `canonize` merges BatchNorm into
    the layer before it and routes residual sums through a proportional rule (undone after).
    extras["delta"] (B,) is Σ R − S.
    """
    dtype = parameter_dtype(ctx.model) or torch.float32
    epsilon, gamma = _check_options(epsilon, gamma, composite, dtype)
    canonize = check_flag(canonize, "canonize", "lrp")
    box = composite == "epsilon_gamma_box" if isinstance(composite, str) else False
    if (low is not None or high is not None) and not box:
        name = composite if isinstance(composite, str) else "a Composite"
        raise SaliencelabError(
            f"lrp: low / high are the pixel bounds of the z-box rule of "
            f"composite='epsilon_gamma_box', which composite={name!r} does not use (they would "
            "be ignored); pick that composite, or give your Composite's ZBox(low, high) itself."
        )
    if isinstance(composite, str):
        composite = composite_from_name(composite, epsilon, gamma, low, high)
    elif not isinstance(composite, Composite):
        raise SaliencelabError(
            f"lrp: composite must be one of {', '.join(PRESETS)} or a Composite, not "
            f"{type(composite).__name__}."
        )
    refuse_compiled(ctx.model.module, "lrp")  # before the warning below, which it would explain
    if not composite.assign(ctx.model.module):
        warnings.warn(
            "lrp: no layer of the model gets a rule from this composite, so the result is "
            "gradient × input.",
            stacklevel=2,
        )
    read = ctx.target_layer()  # a neuron / channel target's layer keeps its own output
    canonizers = default_canonizers(keep=() if read is None else (read,)) if canonize else ()
    rule = LRPRule(composite, canonizers=canonizers)
    cap = ctx.capture(input_grad=True, backward=rule)
    _check_same_logits(ctx, cap.logits)
    relevance = cap.input_grad
    delta = relevance.flatten(1).sum(1) - cap.scores.to(relevance.dtype)
    return MethodOutput(relevance, extras={"delta": delta})
