"""DeepLIFT multipliers as a modified backward pass (the `BackwardRule` DeepLIFT gives the engine).

DeepLIFT (Shrikumar, Greenside & Kundaje 2017, "Learning Important Features Through Propagating
Activation Differences", ICML) explains the difference of the output from its value on a
reference input x'. Every neuron gets a *multiplier* m = ∂̃S/∂h, propagated backwards by the
chain rule, with one change at nonlinearities:

- linear layers (convolutions, linear, batch norm in eval mode, average pooling, padding,
  residual additions): Δy = W Δx exactly, so multipliers pass through as gradients;
- elementwise nonlinearities y = f(x), the *rescale* rule:
      m_x = m_y · (f(x) - f(x')) / (x - x'),   or m_y · f'(x) where |x - x'| < eps;
- max pooling (the rule Captum uses, written as a scatter): in each window the output difference
  Δy = max(x) - max(x') = (m - y') + (y - m), m = max(y, y'), is split into two parts routed to
  the argmax of x and the argmax of x' respectively; the input element i receives
  m_x,i = Σ_windows m_y · (routed parts at i) / Δx_i, or the gradient where |Δx_i| < eps.
  Whichever part is non-zero lands where |Δx_i| ≥ |Δy|, so these multipliers lie in [0, 1].
  Overlapping windows add their parts (Captum's unpooling keeps only one of them). Captum 0.9.0
  also takes the fallback gradient of the first sample for all (captum#1276) and, next to another
  hooked module, routes the x' part with the reference rows' own gradient; it agrees with this
  rule where neither happens.

With these rules Σ_i (x_i - x'_i) m_x,i = S(x) - S(x') ("summation-to-delta") holds exactly,
up to the eps fallbacks, for networks whose nonlinearities are all modules listed below.

How it runs: the input rows and their references go through the model in one forward, stacked
as [x; x'] (rows [0, n) inputs, [n, 2n) references). Each nonlinearity module gets a forward hook
that computes the input half's multipliers from both halves' inputs and outputs and replaces the
module's output by a custom autograd function: identical forward, and a backward that multiplies
the incoming gradient by them (the module's own backward is not run; the reference half gets no
gradient). A forward hook on the whole model returns the input half's logits (so the
engine scores and differentiates those) and keeps the reference half's in `reference_logits`.

Like Captum, only nonlinearities that are modules are reached: a functional `F.relu` or
`torch.sigmoid` in a `forward` is differentiated as usual (its gradient at x), and
summation-to-delta no longer holds (the `delta` extra shows it). If none of the hooked modules
ran in the first forward (all called functionally), or the model is compiled (TorchScript,
torch.export), the pass raises instead of returning gradient × (x - x'). Non-elementwise
modules other than max pooling (softmax, adaptive max pooling, attention) also keep their
gradient. In-place activations are switched to out-of-place for the pass (their inputs are
needed) and restored afterwards. Every module must see the batch on its first axis.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ...core.backward import require_hooks_ran
from ...core.engine import free_reads
from ...core.errors import SaliencelabError
from ...core.state import Hooks
from ...models.model import logits_of

# Elementwise nonlinearities: the rescale rule applies to each of them.
ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Threshold,
)
MAXPOOLS = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}


def below(dx_abs: torch.Tensor, eps: float) -> torch.Tensor:
    """|Δx| < eps, with eps raised to the smallest normal number of Δx's dtype: the comparison
    runs in that dtype, where a smaller eps would round to 0 (float16: 1e-10 → 0, so Δx = 0 was
    never "small" and 0 / 0 stayed NaN). float32 / float64 / bfloat16 keep eps as it is."""
    return dx_abs < max(eps, torch.finfo(dx_abs.dtype).tiny)


def _safe_ratio(num: torch.Tensor, den: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where `small` (no inf or NaN anywhere)."""
    return torch.where(small, torch.zeros_like(num), num / torch.where(small, 1.0, den))


def _with_zero_half(first: torch.Tensor) -> torch.Tensor:
    """[first; 0]: gradient for the input half, none for the reference half."""
    out = first.new_empty((2 * first.shape[0], *first.shape[1:]))
    out[: first.shape[0]] = first
    out[first.shape[0] :] = 0
    return out


def _derivative(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f'(x) of an elementwise module (its vector-Jacobian product with ones), hooks bypassed."""
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        y = module.forward(xi)
        (d,) = torch.autograd.grad(y, xi, torch.ones_like(y))
    return d


@torch.no_grad()
def rescale_multipliers(
    module: nn.Module, inp: torch.Tensor, out: torch.Tensor, eps: float
) -> torch.Tensor:
    """(f(x) - f(x')) / (x - x') for the input half of [x; x'], and f'(x) where |x - x'| < eps."""
    n = inp.shape[0] // 2
    dx = inp[:n] - inp[n:]
    ratio = (out[:n] - out[n:]).div_(dx)  # inf / NaN where Δx = 0: replaced next
    small = below(dx.abs_(), eps)
    # Reading whether any |x - x'| is below eps saves the derivative (the same values either
    # way) where the read is free; on a GPU it would wait at every nonlinearity of every chunk.
    if not free_reads(inp.device) or bool(small.any()):
        return torch.where(small, _derivative(module, inp[:n]), ratio)
    return ratio


class _Multiply(torch.autograd.Function):
    """Forward: the module's output (a copy, so in-place ops downstream stay legal). Backward:
    the incoming gradient of the input half times the multipliers, straight to the module's
    input; nothing to the reference half."""

    @staticmethod
    def forward(
        ctx, inp: torch.Tensor, out: torch.Tensor, multipliers: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(multipliers)
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (multipliers,) = ctx.saved_tensors
        n = multipliers.shape[0]
        to_input = torch.empty_like(grad)
        torch.mul(grad[:n], multipliers, out=to_input[:n])
        to_input[n:] = 0
        return to_input, None, None


class _MaxPoolRescale(torch.autograd.Function):
    """Forward: the pooling's output. Backward (input half): the max-pooling rule above."""

    @staticmethod
    def forward(ctx, inp: torch.Tensor, out: torch.Tensor, module: nn.Module, eps: float):
        ctx.save_for_backward(inp)
        ctx.module, ctx.eps = module, eps
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inp,) = ctx.saved_tensors
        m = ctx.module
        pool = partial(
            MAXPOOLS[type(m)],
            kernel_size=m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            ceil_mode=m.ceil_mode,
            return_indices=True,
        )
        n = inp.shape[0] // 2
        x, x_ref = inp[:n], inp[n:]
        y, idx = pool(x)
        y_ref, idx_ref = pool(x_ref)
        g = grad[:n]
        top = torch.maximum(y, y_ref)

        def scatter(index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            # Indices are positions in each (row, channel) plane of the input, flattened.
            out = torch.zeros_like(x).flatten(2)
            return out.scatter_add_(2, index.flatten(2), values.flatten(2)).view_as(x)

        parts = scatter(idx, g * (top - y_ref)) + scatter(idx_ref, g * (y - top))
        dx = x - x_ref
        small = below(dx.abs(), ctx.eps)
        multiplier = torch.where(small, scatter(idx, g), _safe_ratio(parts, dx, small))
        return _with_zero_half(multiplier), None, None, None


class DeepLiftRescale:
    """The DeepLIFT rescale rule as a `BackwardRule` for `Engine.gradients(backward=...)`.

    The model gets [x; x'] stacked on the first axis (inputs first). After each forward,
    `reference_logits` holds the references' logits (n, classes); the engine sees the inputs'.
    `reached` counts the modules whose backward the rule replaces.
    """

    def __init__(self, eps: float = 1e-10, method: str = "deeplift") -> None:
        self.eps = eps
        self.method = method
        self.reference_logits: torch.Tensor | None = None
        self.reached = 0
        self.fired = 0  # calls of the hooks since install
        self._rows = 0
        self._names: dict[int, str] = {}

    def install(self, model: nn.Module, hooks: Hooks) -> None:
        self.reached = self.fired = 0
        for name, module in model.named_modules():
            if isinstance(module, ELEMENTWISE):
                hook = self._rescale_hook
                if getattr(module, "inplace", False):  # its input is needed: run out of place
                    module.inplace = False
                    hooks.on_exit(partial(setattr, module, "inplace", True))
            elif type(module) in MAXPOOLS and not module.return_indices:
                hook = self._maxpool_hook
            else:
                continue
            self._names[id(module)] = name or type(module).__name__
            hooks.add(module.register_forward_hook(hook))
            self.reached += 1
        hooks.add(model.register_forward_pre_hook(self._start))
        hooks.add(model.register_forward_hook(self._split_logits))

    def check_forward(self, reached_output: bool) -> None:
        """After the first forward: hooked nonlinearities must have run, else the result would be
        gradient × (x - x') without a word. Not all of them need to (unused modules); a forward
        stopped by a layer target is not checked."""
        hooked = list(self._names.values())  # the modules hooked by this rule's install
        require_hooks_ran(self.method, "nonlinearity modules", hooked, self.fired, reached_output)

    # -- hooks ---------------------------------------------------------------------------------

    def _start(self, module: nn.Module, args: tuple) -> None:
        self._rows = args[0].shape[0]
        self.reference_logits = None

    def _split_logits(self, module: nn.Module, args: tuple, out):
        logits = logits_of(out)
        n = logits.shape[0] // 2
        self.reference_logits = logits[n:].detach()
        return logits[:n]

    def _pair(self, module: nn.Module, inputs: tuple, out) -> torch.Tensor | None:
        """The module's input if the rule applies to this call, else None."""
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            return None
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return None
        inp = inputs[0]
        if inp.shape[0] != self._rows or out.shape[0] != self._rows:
            raise SaliencelabError(
                f"{self.method}: the module {self._names.get(id(module), module)} sees "
                f"{inp.shape[0]} rows where the batch has {self._rows}; DeepLIFT needs every "
                "nonlinearity to keep the batch on its first axis."
            )
        return inp

    def _rescale_hook(self, module: nn.Module, inputs: tuple, out):
        self.fired += 1
        inp = self._pair(module, inputs, out)
        if inp is None or inp.shape != out.shape:
            return None
        multipliers = rescale_multipliers(module, inp, out, self.eps)
        return _Multiply.apply(inp, out.detach(), multipliers)

    def _maxpool_hook(self, module: nn.Module, inputs: tuple, out):
        self.fired += 1
        inp = self._pair(module, inputs, out)
        dims = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(module)]
        if inp is None or inp.dim() != dims + 2:  # unbatched pooling: keep the gradient
            return None
        return _MaxPoolRescale.apply(inp, out.detach(), module, self.eps)
