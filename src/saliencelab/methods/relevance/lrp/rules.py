"""LRP rules: *what* happens to relevance as it passes through one layer.

Layer-wise relevance propagation (Bach et al. 2015, "On Pixel-Wise Explanations for Non-Linear
Classifier Decisions by Layer-Wise Relevance Propagation", PLOS ONE; overview: Montavon et al.
2019, "Layer-Wise Relevance Propagation: An Overview", in *Explainable AI*, LNCS 11700) sends the
relevance R_k of each output neuron k of a layer back to its inputs j,

    R_j = Σ_k  c_jk / Σ_j' c_j'k · R_k,

where the contributions c_jk depend on the rule. For a layer z = W a + b (Linear, Conv, and for
epsilon any module linear in its inputs: average pooling, BatchNorm in eval, sums), with
a⁺ = max(a, 0), a⁻ = min(a, 0), w⁺ = max(w, 0), w⁻ = min(w, 0), (t)^σ = the part of t with the
sign σ:

- epsilon (LRP-ε; ε = 0 is LRP-0):  c_jk = a_j w_jk, denominator z_k + ε·sign(z_k) with z
  including the bias (the bias absorbs its share: conservative only for bias-free layers).
- gamma (LRP-γ): c_jk = a_j w_jk + γ (a_j w_jk)^σk, denominator + b_k + γ b_k^σk, where
  σk = sign(z_k): positive contributions are favoured on neurons with z ≥ 0 (for a ≥ 0 this is
  Montavon's ρ(w) = w + γw⁺), negative ones on neurons with z < 0, so |denominator| ≥ |z| and
  it never crosses zero (neurons with z < 0 carry relevance where no ReLU follows, e.g. the
  linear bottlenecks of MobileNet / EfficientNet).
- z-plus (z⁺ = α1β0; Montavon et al. 2017, "Explaining nonlinear classification decisions with
  deep Taylor decomposition", Pattern Recognition): c_jk = (a_j w_jk)⁺ = a⁺_j w⁺_jk + a⁻_j w⁻_jk,
  bias ignored: conservative.
- alpha-beta (LRP-αβ, Bach et al. 2015): R_j = Σ_k (α (a_j w_jk)⁺ / Σ_j'(a_j' w_j'k)⁺
  − β (a_j w_jk)⁻ / Σ_j'(a_j' w_j'k)⁻) R_k, bias ignored: conservative when α − β = 1.
- z-box (z^B, Montavon et al. 2017), for the input layer with pixels in [l, h]:
  c_jk = x_j w_jk − l_j w⁺_jk − h_j w⁻_jk (the bias cancels out).
- flat (Lapuschkin et al. 2019, "Unmasking Clever Hans predictors", Nat. Commun.): c_jk = 1 for
  each input j in k's receptive field.
- w-square (Montavon et al. 2017): c_jk = w_jk².

Every denominator d is stabilised as d + s·sign(d) (sign(0) = +1), with s = ε for epsilon and
s = `stabilizer` (1e-6) for the others; a zero denominator gives zero relevance.

**How a rule runs (the gradient trick).** Epsilon, gamma, z-plus and alpha-beta are
*proportional*: c_jk is positively homogeneous of degree 1 in a_j, so R_j = a_j g_j with

    g = ∂/∂a [ z'(a) · (R / z')_detached ],

the gradient of a modified forward z' (modified weights, clamped inputs). The LRP engine
propagates g ("relevance per unit of activation") from layer to layer, so a layer without a rule
(flatten, padding, dropout in eval, max pooling, additions in `forward`) passes it on as a plain
gradient, which for a bias-free linear map *is* LRP-0. The product Wᵀs needed by epsilon, gamma
and alpha-beta comes from the layer's own autograd graph (`LayerView.vjp`), so LRP-ε costs no
extra forward. Gamma and alpha-beta on signed inputs use (a w)^± = ½ (a w ± |a| |w|): one extra
forward q = |W| |a| gives the positive and the negative parts of every output. z-plus runs one
forward of W⁺ on non-negative inputs (known from a ReLU-like producer, else checked), and on
signed ones two, W⁺ a⁺ + W⁻ a⁻: sums of non-negative terms, so z⁺ ≈ 0 cannot come out ≤ 0.

Z-box, flat and w-square are not proportional (a zero pixel can get relevance): they return the
relevance itself and may only be used on the layer that reads the model's input.

Activations (ReLU6, SiLU…) pass relevance through unchanged, R(z) = R(f(z)), i.e.
g_z = g · f(z) / z (`pass_through`); for ReLU and LeakyReLU that is their own gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.conv import _ConvNd

from ....core.errors import SaliencelabError

Tensors = tuple[torch.Tensor, ...]

STABILIZER = 1e-6


def divide(num: torch.Tensor, den: torch.Tensor, eps: float) -> torch.Tensor:
    """num / (den + eps·sign(den)) with sign(0) = +1, and 0 where that denominator is 0."""
    if eps > 0:
        d = torch.copysign(den.new_full((), eps), den).add_(den)
        return torch.div(num, d, out=d) if num.shape == d.shape else num / d
    out = num / den
    return out.masked_fill_((den == 0).expand_as(out), 0.0)


@dataclass
class LayerView:
    """What a rule sees of one layer call: the module, its inputs and output (detached), and
    `vjp(s)` = (∂z/∂input)ᵀ s per input, from the layer's own autograd graph when kept."""

    module: nn.Module
    inputs: Tensors
    z: torch.Tensor
    _vjp: Callable[[torch.Tensor], Tensors] | None = None
    known_nonnegative: bool = False  # the first input is a ReLU-like output (no check needed)

    def vjp(self, s: torch.Tensor) -> Tensors:
        if self._vjp is not None:
            fn, self._vjp = self._vjp, None  # the graph is freed after one use
            return fn(s)
        leaves = _leaves(self.inputs)
        return _grad([self.module.forward(*leaves)], leaves, [s])


def _modified_forward(
    module: nn.Module, inputs: Sequence[torch.Tensor], weight: torch.Tensor
) -> torch.Tensor:
    """The module's own `forward` (padding included, e.g. TF "same" convs) with another weight
    and no bias; hooks are not run.

    The weight and bias are swapped in the module's parameter dict for this one call (much
    cheaper than `torch.func.functional_call`, which is used for parametrized modules).
    """
    params = module._parameters
    if "weight" not in params:
        overrides = {"weight": weight}
        if getattr(module, "bias", None) is not None:
            overrides["bias"] = None
        return functional_call(module, overrides, tuple(inputs))
    saved = dict(params)
    try:
        params["weight"] = weight
        if "bias" in params:
            params["bias"] = None
        return module.forward(*inputs)
    finally:
        params.update(saved)


def _weight(module: nn.Module, rule: str) -> torch.Tensor:
    if not isinstance(module, (nn.Linear, _ConvNd)) or getattr(module, "transposed", False):
        raise SaliencelabError(
            f"The {rule} rule needs a Linear or Conv layer, but got {type(module).__name__}; "
            "assign it only to Linear / Conv layers in the composite."
        )
    return module.weight


def _bias(module: nn.Module, z: torch.Tensor) -> torch.Tensor | float:
    """The module's bias shaped to broadcast against its output z (0 if it has none)."""
    b = module.bias
    if b is None:
        return 0.0
    if isinstance(module, nn.Linear):
        return b
    return b.view(-1, *([1] * (z.dim() - 2)))


def _leaves(inputs: Tensors) -> Tensors:
    return tuple(a.detach().requires_grad_(True) for a in inputs)


def _grad(outputs: list[torch.Tensor], inputs: Tensors, grads: list[torch.Tensor]) -> Tensors:
    return torch.autograd.grad(outputs, inputs, grads, allow_unused=True, materialize_grads=True)


def _nonnegative(a: torch.Tensor) -> bool:
    return a.numel() == 0 or bool(a.min() >= 0)


def _abs_forward(layer: LayerView, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, a) with q = f(|a|; |W|) built on a fresh leaf a: (a w)^± = ½ (a w ± q)."""
    (a,) = _leaves(layer.inputs)
    return _modified_forward(layer.module, [a.abs()], w.abs()), a


class Rule:
    """How relevance passes through one layer.

    `propagate(layer, relevance)` gets a :class:`LayerView` and the relevance R of the layer's
    output z (same shape; the rule may overwrite it). A proportional rule returns, per input,
    the modified gradient g with R_in = input ⊙ g; a non-proportional one
    (`proportional = False`) returns R_in itself.
    """

    proportional: bool = True
    uses_vjp: bool = True  # whether `LayerView.vjp` (the layer's own graph) may be called
    name: str = "rule"

    def propagate(self, layer: LayerView, relevance: torch.Tensor) -> Tensors:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Epsilon(Rule):
    """LRP-ε: R_j = Σ_k a_j w_jk / (z_k + ε·sign(z_k)) · R_k (z with bias); ε = 0 is LRP-0.

    g = ∂z/∂aᵀ s with s = R / (z + ε·sign z): the layer's own gradient, so any module linear in
    its inputs works (Linear, Conv, average pooling, BatchNorm in eval, a sum of inputs).
    """

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def propagate(self, layer, relevance):
        return layer.vjp(divide(relevance, layer.z, self.epsilon))


class ZPlus(Rule):
    """z⁺ (= α1β0): c_jk = (a_j w_jk)⁺ = a⁺_j w⁺_jk + a⁻_j w⁻_jk, bias ignored (conservative)."""

    name = "z_plus"
    uses_vjp = False

    def __init__(self, stabilizer: float = STABILIZER) -> None:
        self.stabilizer = stabilizer

    def propagate(self, layer, relevance):
        w = _weight(layer.module, self.name)
        # z⁺ >= 0, so its stabilised form is z⁺ + s.
        if layer.known_nonnegative or _nonnegative(layer.inputs[0]):  # z⁺ = W⁺ a
            (a,) = _leaves(layer.inputs)
            zp = _modified_forward(layer.module, [a], w.clamp(min=0))
            # In place: a convolution's backward does not need its output (saves a big alloc).
            s = relevance.div_(zp.detach().add_(self.stabilizer))
            return _grad([zp], (a,), [s])
        # Signed inputs: z⁺ = W⁺ a⁺ + W⁻ a⁻, two forwards of non-negative terms, and its
        # gradient W⁺ᵀ s where a > 0, W⁻ᵀ s where a < 0. (The cheaper ½ (z − b + |W| |a|) and
        # ½ Wᵀs + ½ sign(a) |W|ᵀs cancel large terms: where z⁺ ≈ 0 that left the denominator at
        # or below 0 after rounding, NaN maps on real photos, or ~1e6 × rounding in g.)
        (a,) = _leaves(layer.inputs)
        module = layer.module
        zp = _modified_forward(module, [a.clamp(min=0)], w.clamp(min=0))
        zp = zp + _modified_forward(module, [a.clamp(max=0)], w.clamp(max=0))
        s = relevance.div_(zp.detach().add_(self.stabilizer))
        return _grad([zp], (a,), [s])


class AlphaBeta(Rule):
    """LRP-αβ: α (a w)⁺ / Σ(a w)⁺ − β (a w)⁻ / Σ(a w)⁻, bias ignored; conservative if α − β = 1.

    With (a w)^± = ½ (a w ± |a||w|): g = ½ Wᵀ(α s⁺ − β s⁻) + ½ sign(a) |W|ᵀ(α s⁺ + β s⁻).
    """

    name = "alpha_beta"

    def __init__(
        self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = STABILIZER
    ) -> None:
        self.alpha = alpha
        self.beta = beta
        self.stabilizer = stabilizer

    def propagate(self, layer, relevance):
        w = _weight(layer.module, self.name)
        q, a = _abs_forward(layer, w)
        z = layer.z - _bias(layer.module, layer.z)
        # Σ(a w)⁺ = ½ (z + q) >= 0 and Σ(a w)⁻ = ½ (z − q) <= 0; clamped against rounding, which
        # could give them the wrong sign (and the stabiliser with it) where they are ~0.
        pos = (z + q.detach()).mul_(0.5).clamp_min_(0.0)
        neg = (z - q.detach()).mul_(0.5).clamp_max_(0.0)
        sp = divide(relevance, pos.add_(self.stabilizer), 0.0).mul_(0.5 * self.alpha)
        sn = divide(relevance, neg.sub_(self.stabilizer), 0.0).mul_(0.5 * self.beta)
        (gq,) = _grad([q], (a,), [sp + sn])
        (gw,) = layer.vjp(sp.sub_(sn))
        return (gw.add_(gq),)


class Gamma(Rule):
    """LRP-γ: c_jk = a_j w_jk + γ (a_j w_jk)^σk, bias b_k + γ b_k^σk, σk = sign(z_k).

    z' = z + γ (½ (Wa + σ |W||a|) + b^σ): g = (1 + γ/2) Wᵀ s + (γ/2) sign(a) |W|ᵀ (σ s).
    """

    name = "gamma"

    def __init__(self, gamma: float = 0.25, stabilizer: float = STABILIZER) -> None:
        self.gamma = gamma
        self.stabilizer = stabilizer

    def propagate(self, layer, relevance):
        w = _weight(layer.module, self.name)
        g = self.gamma
        z = layer.z
        b = _bias(layer.module, z)
        sigma = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        q, a = _abs_forward(layer, w)
        bz = b + torch.zeros_like(z)
        b_sigma = torch.where(z >= 0, bz.clamp(min=0), bz.clamp(max=0))
        zg = z + g * (0.5 * (z - b + sigma * q.detach()) + b_sigma)
        s = divide(relevance, zg, self.stabilizer)
        (gq,) = _grad([q], (a,), [(0.5 * g) * sigma * s])
        (gw,) = layer.vjp((1 + 0.5 * g) * s)
        return (gw.add_(gq),)


class ZBox(Rule):
    """z^B for the input layer, pixels in [low, high]: c_jk = x_j w_jk − l_j w⁺_jk − h_j w⁻_jk.

    `low` / `high`: numbers or tensors broadcastable to the input; `None` = each sample's own
    minimum / maximum.
    """

    name = "z_box"
    proportional = False

    def __init__(
        self,
        low: float | torch.Tensor | None = None,
        high: float | torch.Tensor | None = None,
        stabilizer: float = STABILIZER,
    ) -> None:
        self.low = low
        self.high = high
        self.stabilizer = stabilizer

    @staticmethod
    def _bound(value, x: torch.Tensor, reduce) -> torch.Tensor:
        if value is None:
            dims = tuple(range(1, x.dim()))
            value = reduce(x, dim=dims, keepdim=True) if dims else x
        bound = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        try:
            return bound.expand_as(x).detach().clone().requires_grad_(True)
        except RuntimeError:
            raise SaliencelabError(
                f"The z-box bound of shape {tuple(bound.shape)} does not broadcast to the input "
                f"of shape {tuple(x.shape)}; give a number or a tensor broadcastable to it."
            ) from None

    def propagate(self, layer, relevance):
        module = layer.module
        w = _weight(module, self.name)
        (x,) = _leaves(layer.inputs)
        low = self._bound(self.low, x, torch.amin)
        high = self._bound(self.high, x, torch.amax)
        zb = (
            _modified_forward(module, [x], w)
            - _modified_forward(module, [low], w.clamp(min=0))
            - _modified_forward(module, [high], w.clamp(max=0))
        )
        s = divide(relevance, zb.detach(), self.stabilizer)
        gx, gl, gh = _grad([zb], (x, low, high), [s])
        return (x.detach() * gx + low.detach() * gl + high.detach() * gh,)


class _InputFree(Rule):
    """Rules whose contributions do not depend on the input values (flat, w-square)."""

    proportional = False

    def __init__(self, stabilizer: float = STABILIZER) -> None:
        self.stabilizer = stabilizer

    def _weights(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def propagate(self, layer, relevance):
        w = _weight(layer.module, self.name)
        ones = torch.ones_like(layer.inputs[0], requires_grad=True)
        zf = _modified_forward(layer.module, [ones], self._weights(w))
        s = divide(relevance, zf.detach(), self.stabilizer)
        return _grad([zf], (ones,), [s])


class Flat(_InputFree):
    """Flat: c_jk = 1 for every input j in k's receptive field (an equal share)."""

    name = "flat"

    def _weights(self, w):
        return torch.ones_like(w)


class WSquare(_InputFree):
    """w-square: c_jk = w_jk²."""

    name = "w_square"

    def _weights(self, w):
        return w * w


class Pass(Rule):
    """Pass-through for elementwise activations: R(z) = R(f(z)), i.e. g_z = g · f(z) / z."""

    name = "pass"


class _Holder:
    """Tensors handed to an autograd Function without being its inputs (so a returned tensor is
    a fresh output, not a view of an input that would have to be cloned)."""

    __slots__ = ("out", "ratio")

    def __init__(self, out: torch.Tensor, ratio: torch.Tensor) -> None:
        self.out, self.ratio = out, ratio


class _PassThrough(torch.autograd.Function):
    """Forward: the activation's own output, not copied. Backward: g_z = g · ratio."""

    @staticmethod
    def forward(ctx, held: _Holder, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(held.ratio)
        return held.out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors
        return None, grad * ratio


def pass_through(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The activation's output f(z) with backward g_z = g · [f(z) / z], so the relevance z·g_z
    equals f(z)·g. The ratio is set to 0 where it is not finite (z = 0, where the relevance z·g_z
    is 0 anyway). The output is f(z) itself (an alias of `out`, no copy); the ratio is kept
    apart, so a later in-place change of the output does not alter the backward."""
    held = out.detach()
    ratio = torch.div(held, z.detach()).nan_to_num_(0.0, 0.0, 0.0)
    return _PassThrough.apply(_Holder(held, ratio), z)


# Activations whose output is never negative: a layer reading one skips the sign check.
NONNEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
NONNEGATIVE_MARK = "_saliencelab_nonnegative"
