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

the gradient of a modified forward z' (modified weights, clamped inputs), taken for Linear and
zero-padded Conv layers straight from the transposed map (`_direct_vjp`: no nested autograd
call, ~90 µs of host time each) and through autograd for other modules. The LRP engine
propagates g ("relevance per unit of activation") from layer to layer, so a layer without a rule
(flatten, padding, dropout in eval, max pooling, additions in `forward`) passes it on as a plain
gradient, which for a bias-free linear map *is* LRP-0. The product Wᵀs needed by epsilon, gamma
and alpha-beta comes from the layer's own weights or autograd graph (`LayerView.vjp`), so
LRP-ε costs no extra forward. Gamma, and alpha-beta on signed inputs, use
(a w)^± = ½ (a w ± |a| |w|): one extra forward q = |W| |a| gives the positive and the negative
parts of every output;
alpha-beta on inputs known to be non-negative (a ReLU-like producer) runs W⁺ a and W⁻ a
instead. z-plus runs one forward of W⁺ on non-negative inputs (known, or checked on the CPU),
and on signed ones W⁺ a⁺ + W⁻ a⁻: sums of non-negative terms, so z⁺ ≈ 0 cannot come out ≤ 0.
Several weights on the same input (or the same output) run as one forward of the weights
concatenated (not for grouped convolutions). Stabilisers are constant biases of these
forwards, and the weight copies are kept across passes (`core/derived.py`): a GPU pass at small
batches is bound by the number of kernels.

Z-box, flat and w-square are not proportional (a zero pixel can get relevance): they return the
relevance itself and may only be used on the layer that reads the model's input.

Activations (ReLU6, SiLU…) pass relevance through unchanged, R(z) = R(f(z)), i.e.
g_z = g · f(z) / z (`pass_through`); for ReLU and LeakyReLU that is their own gradient.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize

from ....core.derived import kept
from ....core.engine import free_reads
from ....core.errors import SaliencelabError
from ....core.layout import memory_format_of
from ....models.efficientnet_lite import Conv2dSame

Tensors = tuple[torch.Tensor, ...]

STABILIZER = 1e-6


_SCALARS: dict[tuple, torch.Tensor] = {}


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """`value` as a 0-dim tensor of like's dtype and device, made once (a fill kernel each
    time otherwise)."""
    key = (value, like.dtype, like.device)
    t = _SCALARS.get(key)
    if t is None:
        t = _SCALARS[key] = torch.full((), value, dtype=like.dtype, device=like.device)
    return t


def divide(num: torch.Tensor, den: torch.Tensor, eps: float) -> torch.Tensor:
    """num / (den + eps·sign(den)) with sign(0) = +1, and 0 where that denominator is 0."""
    if eps > 0:
        d = torch.copysign(_scalar(eps, den), den).add_(den)
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
        fn, self._vjp = self._vjp, None  # the graph is freed after one use
        if len(self.inputs) == 1 and "weight" in self.module._parameters:
            direct = _direct_vjp(self.module, self.inputs[0], self.module.weight)
            if direct is not None:
                return (direct(s),)
        if fn is not None:
            return fn(s)
        leaves = _leaves(self.inputs)
        return _grad([self.module.forward(*leaves)], leaves, [s])


def _modified_forward(
    module: nn.Module,
    inputs: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The module's own `forward` (padding included, e.g. TF "same" convs) with another weight
    and bias (default none); hooks are not run.

    The weight and bias are swapped in the module's parameter dict for this one call (much
    cheaper than `torch.func.functional_call`). A parametrized module (weight norm, spectral
    norm: `torch.nn.utils.parametrize`) runs as its class before the parametrizations for the
    call, so its forward reads the weight given as it is: assigning it through the
    parametrization (what `functional_call` does) would run the given weight through it again
    and write it back into the parametrization's originals (a spectral-normed layer's weight
    divided by its norm, for good).
    """
    params = module._parameters
    cls = type(module)
    parametrized = parametrize.is_parametrized(module)
    saved = dict(params)
    try:
        had_bias = "bias" in params or (
            parametrized and parametrize.is_parametrized(module, "bias")
        )
        if parametrized:
            module.__class__ = parametrize.type_before_parametrizations(module)
        params["weight"] = weight
        if had_bias or bias is not None:
            params["bias"] = bias
        return module.forward(*inputs)
    finally:
        params.clear()
        params.update(saved)
        if parametrized:
            module.__class__ = cls


_CONV_FORWARDS = (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def _direct_vjp(
    module: nn.Module, a: torch.Tensor, weight: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """s ↦ (∂z/∂a)ᵀ s for z = the module's forward of a with `weight`, called directly (one
    transposed linear map), where the forward is known: `nn.Linear` (sᵀW), a zero-padded
    `nn.Conv1d/2d/3d` and the bundled EfficientNet's TF-"same" `Conv2dSame` (the input gradient
    of the convolution, cropped by the padding). None for anything else (autograd then).

    A nested `torch.autograd.grad` costs ~90 µs of host time per call, and an LRP pass of
    EfficientNet-Lite0 made 60 (at batch 1, 32×32 the pass got 5-10 % cheaper without them;
    benchmarks/README.md).
    """
    if "forward" in module.__dict__:
        return None
    forward = type(module).forward
    if forward is nn.Linear.forward:
        return lambda s: s.matmul(weight)
    if not isinstance(module, _ConvNd) or module.transposed or module.padding_mode != "zeros":
        return None
    if forward is Conv2dSame.forward:
        (top, bottom), (left, right) = module.same_padding(a.shape)
        if top == bottom and left == right:  # symmetric: the convolution pads
            return lambda s: _conv_input_grad(module, a, weight, s, (top, left))
        h, w = a.shape[-2:]
        shape = (*a.shape[:-2], h + top + bottom, w + left + right)
        return lambda s: _conv_input_grad(module, _empty_like(a, shape), weight, s, (0, 0))[
            ..., top : top + h, left : left + w
        ]
    if forward in _CONV_FORWARDS and not isinstance(module.padding, str):
        return lambda s: _conv_input_grad(module, a, weight, s, module.padding)
    return None


def _empty_like(a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor of `shape` in a's memory layout (only its shape and layout are
    read: they set the layout of the input gradient)."""
    return torch.empty(shape, dtype=a.dtype, device=a.device, memory_format=memory_format_of(a))


def _conv_input_grad(
    module: _ConvNd,
    shaped: torch.Tensor,
    weight: torch.Tensor,
    s: torch.Tensor,
    padding: Sequence[int],
) -> torch.Tensor:
    """The input gradient of the convolution `module` (its stride, dilation, groups) with
    `weight` and `padding` for an input like `shaped` (shape and layout only), at output
    gradient s."""
    dims = weight.dim() - 2
    return torch.ops.aten.convolution_backward(
        s,
        shaped,
        weight,
        None,
        module.stride,
        list(padding),
        module.dilation,
        False,
        [0] * dims,
        module.groups,
        (True, False, False),
    )[0]


def _linear_forward(
    module: nn.Module, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """z = the module's forward of a with `weight` and `bias` (`_modified_forward`), and
    vjp(s) = (∂z/∂a)ᵀ s: called directly where the forward is known (`_direct_vjp`; z then
    carries no graph), else by autograd through z's graph on a fresh leaf."""
    direct = _direct_vjp(module, a, weight)
    if direct is not None:
        with torch.no_grad():
            return _modified_forward(module, [a], weight, bias), direct
    (leaf,) = _leaves((a,))
    z = _modified_forward(module, [leaf], weight, bias)
    return z, lambda s: _grad([z], (leaf,), [s])[0]


def _check_layer(module: nn.Module, rule: str) -> None:
    if not isinstance(module, (nn.Linear, _ConvNd)) or getattr(module, "transposed", False):
        raise SaliencelabError(
            f"The {rule} rule needs a Linear or Conv layer, but got {type(module).__name__}; "
            "assign it only to Linear / Conv layers in the composite."
        )


def _derived(module: nn.Module, key: tuple, make: Callable[[torch.Tensor], torch.Tensor]):
    """make(W) for the module's weight W, kept until W changes (`core/derived.py`): the weight
    copies of a rule are not rebuilt every pass."""
    w = module.weight
    return kept(module, key, (w,), lambda: make(w))


def _channel_bias(module: nn.Module, key: tuple, make: Callable[[torch.Tensor], torch.Tensor]):
    """make(b) per output channel for the module's bias b (zeros if it has none), kept."""
    w, b = module.weight, module.bias
    return kept(module, key, (w, b), lambda: make(w.new_zeros(w.shape[0]) if b is None else b))


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
    return a.numel() == 0 or a.min().item() >= 0


def _abs_part(layer: LayerView, w_abs: torch.Tensor, bias: torch.Tensor | None):
    """(m, vjp, signed): m = f(|a|; |W|-like weight, bias) (on a itself when known
    non-negative) and its vjp (`_linear_forward`)."""
    (a,) = layer.inputs
    signed = not layer.known_nonnegative
    m, vjp = _linear_forward(layer.module, a.abs() if signed else a.detach(), w_abs, bias)
    return m, vjp, signed


def _combine(gw: torch.Tensor, gm: torch.Tensor, a: torch.Tensor, signed: bool) -> torch.Tensor:
    """gw + sign(a) ⊙ gm: the gradient of f(a; W) and of f(|a|; |W|) summed. (For a known
    non-negative a, sign(a) is taken as 1: it differs at a = 0 only, where R = a ⊙ g is 0 and
    the ReLU-like producer passes nothing back.)"""
    return torch.addcmul(gw, torch.sgn(a), gm) if signed else gw.add_(gm)


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


def _channel_dim(module: nn.Module, t: torch.Tensor) -> int:
    """The channel dimension of a layer's input or output: last for Linear, 1 for Conv."""
    return t.dim() - 1 if isinstance(module, nn.Linear) else 1


def _stab_bias(module: nn.Module, s: float) -> torch.Tensor:
    """The constant bias s per output channel (the stabiliser added inside the forward)."""
    return _derived(module, ("stabilizer", s), lambda w: w.new_full((w.shape[0],), s))


def _one_forward(module: nn.Module) -> bool:
    """Whether several weights run as one forward of their concatenation (more channels). Not
    for grouped convolutions: with several channels per group they miss the fast depthwise
    kernels (on the CPU, 10x slower)."""
    return getattr(module, "groups", 1) == 1


def _forward_parts_in(
    module: nn.Module,
    key: str,
    weights: Callable[[torch.Tensor], list[torch.Tensor]],
    parts: list[torch.Tensor],
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]]:
    """z = Σ_c f(parts[c]; W_c) + bias with W_c = weights(W) (kept), and grads(s): the gradient
    of z · s to each part. One forward of [W_1 W_2 ...] on the concatenated parts if it can."""
    if _one_forward(module):
        w = _derived(module, (key, "cat"), lambda w: torch.cat(weights(w), dim=1))
        d = _channel_dim(module, parts[0])
        z, vjp = _linear_forward(module, torch.cat(parts, dim=d), w, bias)
        return z, lambda s: list(vjp(s).chunk(len(parts), dim=d))
    ws = _derived(module, (key, "list"), weights)
    forwards = [
        _linear_forward(module, p, w, bias if i == 0 else None)
        for i, (p, w) in enumerate(zip(parts, ws, strict=True))
    ]
    z = forwards[0][0]
    for zi, _ in forwards[1:]:
        z = z + zi
    return z, lambda s: [vjp(s) for _, vjp in forwards]


def _forward_parts_out(
    module: nn.Module,
    key: str,
    weights: Callable[[torch.Tensor], list[torch.Tensor]],
    biases: list[float],
    a: torch.Tensor,
) -> tuple[list[torch.Tensor], Callable[[], torch.Tensor]]:
    """z_r = f(a; W_r) + b_r (constant biases) with W_r = weights(W) (kept), detached, and
    grads(): the gradient of Σ_r z_r · s_r to a, where the caller has overwritten each z_r in
    place with its s_r. One forward of [W_1; W_2; ...] if it can."""
    if _one_forward(module):

        def cat(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.cat(weights(w)), torch.cat([w.new_full((w.shape[0],), b) for b in biases])

        w, b = _derived(module, (key, "cat", *biases), cat)
        z, vjp = _linear_forward(module, a, w, b)
        out = z.detach()  # (a convolution's backward does not read its output)
        parts = list(out.chunk(len(biases), dim=_channel_dim(module, a)))
        return parts, lambda: vjp(out)
    ws = _derived(module, (key, "list"), weights)
    forwards = [
        _linear_forward(module, a, w, _stab_bias(module, b))
        for w, b in zip(ws, biases, strict=True)
    ]
    parts = [z.detach() for z, _ in forwards]

    def grads() -> torch.Tensor:
        total = forwards[0][1](parts[0])
        for (_, vjp), part in zip(forwards[1:], parts[1:], strict=True):
            total = total + vjp(part)
        return total

    return parts, grads


def _plus_minus(w: torch.Tensor) -> list[torch.Tensor]:
    return [w.clamp(min=0), w.clamp(max=0)]


class ZPlus(Rule):
    """z⁺ (= α1β0): c_jk = (a_j w_jk)⁺ = a⁺_j w⁺_jk + a⁻_j w⁻_jk, bias ignored (conservative).

    z⁺ + s (s the stabiliser; z⁺ >= 0) is one forward of W⁺ with the constant bias s on a
    non-negative input; on a signed one, one forward of [W⁺ W⁻] (+ s) on the channels
    [a⁺, a⁻]. g = W⁺ᵀ(R / (z⁺ + s)) where a >= 0, W⁻ᵀ(R / (z⁺ + s)) where a < 0.
    """

    name = "z_plus"
    uses_vjp = False

    def __init__(self, stabilizer: float = STABILIZER) -> None:
        self.stabilizer = stabilizer

    def propagate(self, layer, relevance):
        module = layer.module
        _check_layer(module, self.name)
        stab = _stab_bias(module, self.stabilizer)
        (a,) = layer.inputs
        # The sign check reads a value back: where that waits for the device (a GPU, at every
        # such layer of every chunk) the signed path (the same result for any sign) runs.
        if layer.known_nonnegative or (free_reads(a.device) and _nonnegative(a)):
            w_plus = _derived(module, ("w+",), lambda w: w.clamp(min=0))
            zp, vjp = _linear_forward(module, a.detach(), w_plus, stab)
            # In place: a convolution's backward does not need its output (saves a big alloc).
            return (vjp(relevance.div_(zp.detach())),)
        # Sums of non-negative terms (the cheaper ½ (z − b + |W| |a|) cancels large terms:
        # where z⁺ ≈ 0 it left the denominator at or below 0 after rounding, NaN maps on real
        # photos).
        parts = [a.clamp(min=0), a.clamp(max=0)]
        zp, grads = _forward_parts_in(module, "w+ w-", _plus_minus, parts, stab)
        g_pos, g_neg = grads(relevance.div_(zp.detach()))
        return (torch.where(a < 0, g_neg, g_pos),)


class AlphaBeta(Rule):
    """LRP-αβ: α (a w)⁺ / Σ(a w)⁺ − β (a w)⁻ / Σ(a w)⁻, bias ignored; conservative if α − β = 1.

    Non-negative input (after a ReLU-like activation): P = Σ(a w)⁺ = W⁺a, N = Σ(a w)⁻ = W⁻a:
    one forward of [W⁺; W⁻] with the bias [s; −s] (s the stabiliser), and its gradient
    g = W⁺ᵀ(α R / (P + s)) − W⁻ᵀ(β R / (N − s)): sums of one-signed terms.

    Signed input: with (a w)^± = ½ (a w ± |a||w|) and q = |W||a|, P = ½ (z − b + q),
    N = ½ (z − b − q); s⁺ = α R / (2 (P + s)), s⁻ = β R / (2 (N − s)):
    g = Wᵀ(s⁺ − s⁻) + sign(a) |W|ᵀ(s⁺ + s⁻). Where N (or P) is ~0, s⁻ ~ R / s and its two
    terms cancel only up to rounding: ill-conditioned, but one forward of |W| instead of four.
    """

    name = "alpha_beta"

    def __init__(
        self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = STABILIZER
    ) -> None:
        self.alpha = alpha
        self.beta = beta
        self.stabilizer = stabilizer

    def propagate(self, layer, relevance):
        module = layer.module
        _check_layer(module, self.name)
        if layer.known_nonnegative:
            return self._nonnegative(layer, relevance)
        s2 = 2 * self.stabilizer
        w_abs = _derived(module, ("|w|",), torch.abs)
        q, q_vjp, signed = _abs_part(layer, w_abs, None)
        z = layer.z
        t = z - _bias(module, z) if module.bias is not None else z
        # 2 (P + s) and 2 (N − s), P and N clamped against rounding, which could give them the
        # wrong sign (and the stabiliser with it) where they are ~0.
        pos = torch.add(t, q.detach()).clamp_(min=0.0).add_(s2)
        neg = torch.sub(t, q.detach()).clamp_(max=0.0).sub_(s2)
        sp = torch.div(relevance, pos, out=pos)  # s⁺ = α · this
        sn = torch.div(relevance, neg, out=neg)  # s⁻ = β · this
        if self.alpha != 1.0:
            sp.mul_(self.alpha)
        gq = q_vjp(torch.add(sp, sn, alpha=self.beta))
        (gw,) = layer.vjp(sp.sub_(sn, alpha=self.beta))
        return (_combine(gw, gq, layer.inputs[0], signed),)

    def _nonnegative(self, layer: LayerView, relevance: torch.Tensor) -> Tensors:
        s = self.stabilizer
        (p, n), grads = _forward_parts_out(
            layer.module, "w+; w-", _plus_minus, [s, -s], layer.inputs[0]
        )  # P + s, N − s
        torch.div(relevance, p, out=p).mul_(self.alpha)
        torch.div(relevance, n, out=n).mul_(-self.beta)
        return (grads(),)


class Gamma(Rule):
    """LRP-γ: c_jk = a_j w_jk + γ (a_j w_jk)^σk, bias b_k + γ b_k^σk, σk = sign(z_k).

    With (a w)^σ = ½ (a w + σ |a||w|) and b^σ = ½ (b + σ |b|) the stabilised denominator is
    z' = (1 + γ/2) z + σ ((γ/2)(|W||a| + |b|) + s) = σ (1 + γ/2) (|z| + m), where
    m = κ (|W||a| + |b|) + s / (1 + γ/2), κ = (γ/2) / (1 + γ/2): one forward of κ|W| with a
    constant bias. g = (1 + γ/2) Wᵀ(R / z') + (γ/2) sign(a) |W|ᵀ(σ R / z'), i.e. with
    s' = R / (σ (|z| + m)) and u = R / (|z| + m): g = Wᵀ s' + sign(a) (κ|W|)ᵀ u.
    """

    name = "gamma"

    def __init__(self, gamma: float = 0.25, stabilizer: float = STABILIZER) -> None:
        self.gamma = gamma
        self.stabilizer = stabilizer

    def propagate(self, layer, relevance):
        module = layer.module
        _check_layer(module, self.name)
        c = 1 + 0.5 * self.gamma
        kappa = 0.5 * self.gamma / c
        w_m = _derived(module, ("gamma w", kappa), lambda w: w.abs().mul_(kappa))
        b_m = _channel_bias(
            module,
            ("gamma b", kappa, self.stabilizer),
            lambda b: b.abs().mul_(kappa).add_(self.stabilizer / c),
        )
        m, m_vjp, signed = _abs_part(layer, w_m, b_m)
        z = layer.z
        den = torch.abs(z).add_(m.detach())  # |z| + m > 0
        u = torch.div(relevance, den)
        s = torch.div(relevance, den.copysign_(z), out=relevance)
        gm = m_vjp(u)
        (gw,) = layer.vjp(s)
        return (_combine(gw, gm, layer.inputs[0], signed),)


class ZBox(Rule):
    """z^B for the input layer, pixels in [low, high]: c_jk = x_j w_jk − l_j w⁺_jk − h_j w⁻_jk.

    `low` / `high`: numbers or tensors broadcastable to the input; `None` = each sample's own
    minimum / maximum. c_jk = (x_j − l_j) w⁺_jk + (x_j − h_j) w⁻_jk: one forward of [W⁺ W⁻]
    on the channels [x − l, x − h], whose gradient g gives R_j = Σ (inputs ⊙ g) over the parts.
    """

    name = "z_box"
    proportional = False

    def __init__(
        self,
        low: float | torch.Tensor | None = None,
        high: float | torch.Tensor | None = None,
        stabilizer: float = STABILIZER,
    ) -> None:
        for name, value in (("low", low), ("high", high)):
            number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (value is None or isinstance(value, torch.Tensor) or number):
                raise SaliencelabError(
                    f"lrp: the z-box bound {name} must be None (each sample's own "
                    f"{'minimum' if name == 'low' else 'maximum'}), a number or a tensor "
                    f"broadcastable to the inputs, not {type(value).__name__} {value!r}."
                )
            if number and not math.isfinite(value):
                raise SaliencelabError(
                    f"lrp: the z-box bound {name} must be a finite number, got {value!r}."
                )
        if all(isinstance(v, numbers.Real) for v in (low, high)) and low > high:
            raise SaliencelabError(
                f"lrp: the z-box bounds are reversed (low={low!r} > high={high!r}); give the "
                "inputs' lowest possible value as low and their highest as high."
            )
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
            return bound.expand_as(x)
        except RuntimeError:
            raise SaliencelabError(
                f"The z-box bound of shape {tuple(bound.shape)} does not broadcast to the input "
                f"of shape {tuple(x.shape)}; give a number or a tensor broadcastable to it."
            ) from None

    def propagate(self, layer, relevance):
        module = layer.module
        _check_layer(module, self.name)
        (x,) = layer.inputs
        low = self._bound(self.low, x, torch.amin)
        high = self._bound(self.high, x, torch.amax)
        parts = [x - low, x - high]
        zb, grads = _forward_parts_in(module, "w+ w-", _plus_minus, parts)
        g_low, g_high = grads(divide(relevance, zb.detach(), self.stabilizer))
        return (g_low.mul_(parts[0]).addcmul_(g_high, parts[1]),)


class _InputFree(Rule):
    """Rules whose contributions do not depend on the input values (flat, w-square)."""

    proportional = False

    def __init__(self, stabilizer: float = STABILIZER) -> None:
        self.stabilizer = stabilizer

    def _weights(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def propagate(self, layer, relevance):
        _check_layer(layer.module, self.name)
        ones = torch.ones_like(layer.inputs[0])
        weight = _derived(layer.module, (self.name,), self._weights)
        zf, vjp = _linear_forward(layer.module, ones, weight)
        return (vjp(divide(relevance, zf.detach(), self.stabilizer)),)


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


# Activations with f(0) = 0 (Hardtanh: when its range holds 0).
ZERO_AT_ZERO = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
    nn.Tanh,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
)


def zero_at_zero(module: nn.Module) -> bool:
    """Whether the activation module maps 0 to 0 (known types only)."""
    if isinstance(module, nn.Hardtanh):
        return module.min_val <= 0 <= module.max_val
    return isinstance(module, ZERO_AT_ZERO)


# Activations whose output is never negative: a layer reading one skips the sign check.
NONNEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
NONNEGATIVE_MARK = "_saliencelab_nonnegative"
