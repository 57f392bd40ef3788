"""Input invariance (Kindermans et al. 2017): a constant input shift the model absorbs must not
change the explanation."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from ...core.derived import kept
from ...core.errors import SaliencelabError
from ...core.layout import memory_format_of
from ...core.result import Attribution
from ...core.state import attribution_mode
from ...models.blackbox import is_blackbox
from ...models.model import Model, logits_of, parameter_dtype, rounding_eps
from ..base import EvalBatch, Explainer, Metric, Scores, all_finite, register_metric
from ..checks import check_choice, refuse_compiled_model

# Rounding allowed per sample in a dtype coarser than float32: ROUNDING · ε · max |map| (ε its
# machine epsilon); the model-free sobel reference differs by up to ~4 ε between x and x + shift.
ROUNDING = 8

# Backward nodes of convolution and linear layers, which do not keep the layer's output: the
# shift correction may change it in place.
_OUTPUT_NOT_SAVED = frozenset({"ConvolutionBackward0", "AddmmBackward0", "MmBackward0"})


# The first layer found per model (weak keys: a new model never inherits one): later calls hook
# that layer alone instead of every leaf module.
_FIRST: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def first_layer(
    module: nn.Module,
    x: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[str, nn.Module, torch.Tensor]:
    """The first leaf module the forward of `x` runs, its name, and the forward's logits.

    `forward(x)` runs the model (default: the module in eval mode under inference mode); the
    metric passes its engine's `logits`, so this one forward is counted and its logits reused.
    The layer found is remembered per module: later forwards hook that layer alone (a hook on
    every leaf costs ~7 µs each per call) and check it still gets the input unchanged; where it
    does not (the model changed), the next forward looks again.
    """
    known = _FIRST.get(module)
    if known is not None:
        layer = _submodule(module, known)
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            seen, logits = _first_call(module, x, forward, {known: layer})
            if seen is not None and _unchanged(seen[2], x):
                return known, layer, logits
        _FIRST.pop(module, None)
    leaves = {n: m for n, m in module.named_modules() if next(m.children(), None) is None}
    seen, logits = _first_call(module, x, forward, leaves)
    if seen is None:
        raise SaliencelabError(
            "input_invariance found no layer in the model's forward; it needs a model whose "
            "first layer is an nn.Conv2d or nn.Linear."
        )
    name, mod, inp = seen
    if not isinstance(mod, (nn.Conv2d, nn.Linear)):
        raise SaliencelabError(
            f"input_invariance needs the model's first layer to be an nn.Conv2d or nn.Linear "
            f"that absorbs the shift, but it is {name or 'the model'} "
            f"({type(mod).__name__}); use a model that starts with one."
        )
    if not _unchanged(inp, x):
        raise SaliencelabError(
            f"The first layer {name} does not get the model's input unchanged (the model "
            "transforms it first), so a shift of the input cannot be absorbed there; "
            "input_invariance cannot score this model."
        )
    _FIRST[module] = name
    return name, mod, logits


def _first_call(
    module: nn.Module,
    x: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor] | None,
    layers: dict[str, nn.Module],
) -> tuple[tuple[str, nn.Module, torch.Tensor | None] | None, torch.Tensor]:
    """(name, module, input) of the first of `layers` that the forward of `x` calls (None if
    none), and the forward's logits. The hooks remove themselves at that first call."""
    seen: list[tuple[str, nn.Module, torch.Tensor | None]] = []
    hooks = []

    def watch(name: str) -> Callable:
        def pre(mod: nn.Module, args: tuple) -> None:
            if not seen:
                first = args[0] if args and isinstance(args[0], torch.Tensor) else None
                seen.append((name, mod, first))
                for hk in hooks:  # the rest of the forward runs without hooks
                    hk.remove()

        return pre

    for name, m in layers.items():
        hooks.append(m.register_forward_pre_hook(watch(name)))
    try:
        if forward is None:
            with attribution_mode(module), torch.inference_mode():
                logits = logits_of(module(x))
        else:
            logits = forward(x)
    finally:
        for hk in hooks:
            hk.remove()
    return (seen[0] if seen else None), logits


def _submodule(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def _unchanged(inp: torch.Tensor | None, x: torch.Tensor) -> bool:
    return inp is not None and inp.shape == x.shape and torch.equal(inp, x.to(inp.device))


def layer_offset(layer: nn.Module, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(1, *out) the layer's response to the input shift, layer(shift) − layer(0), on one row
    shaped like `x`. The layer is affine, so layer(z + shift) = layer(z) + offset.

    A plain nn.Conv2d or nn.Linear: its weights applied to the shift without the bias (which
    cancels: W·shift, one call), kept until its weight changes (core/derived.py; the other
    things it depends on are `_offset_key`). A subclass runs its own forward twice, on the
    shift and on zeros (it may pad inside it)."""
    key = _offset_key(layer, x, shift)
    if key is None:
        probe = _probe(shift, x, next(layer.parameters()).device)
        with torch.no_grad(), attribution_mode(layer):
            return layer(probe) - layer(torch.zeros_like(probe))
    w = layer.weight

    def response() -> torch.Tensor:
        probe = _probe(shift, x, w.device)
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(probe, w, None)  # its padding mode, no bias
        return nn.functional.linear(probe, w)

    return kept(layer, key, (w,), response)


def _offset_key(layer: nn.Module, x: torch.Tensor, shift: torch.Tensor) -> tuple | None:
    """What the offset of a plain nn.Conv2d or nn.Linear depends on besides its weight (row
    shape and dtype, the shift, the convolution's settings); None for other layers (not kept)."""
    if type(layer) not in (nn.Conv2d, nn.Linear) or "weight" not in layer._parameters:
        return None
    settings = ()
    if isinstance(layer, nn.Conv2d):
        settings = (layer.stride, layer.padding, layer.dilation, layer.groups, layer.padding_mode)
    return ("input invariance", tuple(x.shape[1:]), x.dtype, tuple(shift.tolist()), settings)


def _probe(shift: torch.Tensor, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One row shaped like `x` holding the shift (per channel)."""
    probe = shift.to(device, x.dtype).reshape(1, -1, *[1] * (x.dim() - 2))
    return probe.expand(1, *x.shape[1:]).contiguous()


def uniform_offset(offset: torch.Tensor) -> torch.Tensor | None:
    """(C,) the offset of each output channel if it is the same at every position (to float
    rounding: allclose with rtol 1e-6, atol 1e-7), else None."""
    flat = offset.flatten(2) if offset.dim() > 2 else offset.unsqueeze(-1)
    per_channel = flat[..., 0]
    # the largest |v - v0| of each channel is at its smallest or largest value
    lo, hi = flat.flatten(0, -2).aminmax(dim=-1)
    lo, hi = lo.view(per_channel.shape), hi.view(per_channel.shape)
    gap = torch.maximum(hi - per_channel, per_channel - lo)
    same = (gap <= 1e-7 + 1e-6 * per_channel.abs()).all()
    return per_channel.flatten() if bool(same) else None


@contextmanager
def shifted_model(
    model: Model, x: torch.Tensor, shift: torch.Tensor, layer: str | None = None
) -> Iterator[Model]:
    """`model` itself, its first layer absorbing an input shift inside the block:
    f'(x + shift) = f(x) (Kindermans et al. 2017). `layer`: the first layer's name (default:
    found by `first_layer`, one forward).

    Where the layer's response to the shift (`layer_offset`) is the same at every position (a
    Linear layer, a Conv2d without zero padding) and the layer has a bias, the bias b becomes
    b − W·shift, in place. With zero padding the border outputs see unshifted zeros, so the
    exact correction is position-dependent: a forward hook on the layer subtracts the offset from
    its output (also for a layer without a bias). A hook, not a replaced forward: LRP's rules run
    the layer's own forward with other weights swapped in (W⁺, flat ones), which must not get
    the offset of W, and the engine neither folds BatchNorm into a hooked model (the folded
    layer would still subtract the unfolded offset) nor remembers it unfoldable. Where a
    method swaps the layer's weights for a forward (LRP's canonizer merging the BatchNorm that
    follows: W' = s·W), the hook subtracts the response of those weights. On exit, also
    on an error, the model is as it was: the same tensor objects with the same values (the bias
    copied back in place, so its version counter tells caches of the weights, e.g.
    core/fused.py, that it changed twice) and no hook left.
    """
    module = model.module
    name = first_layer(module, x[:1])[0] if layer is None else layer
    first = module.get_submodule(name)
    offset = layer_offset(first, x, shift)
    key = _offset_key(first, x, shift)
    local: dict[object, torch.Tensor | None] = {}

    def derived(name: object, make: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        """make(), from the offset: for this call, and kept with a kept offset."""
        if name not in local:
            keep = key is not None
            local[name] = kept(first, (*key, name), (first.weight,), make) if keep else make()
        return local[name]

    bias = first._parameters.get("bias")
    per_channel = None
    if isinstance(bias, torch.Tensor) and not bias.is_inference():
        per_channel = derived("per channel", lambda: uniform_offset(offset))
    if per_channel is not None:
        saved = bias.detach().clone()
        try:
            with torch.no_grad():
                bias.add_(-per_channel.to(bias))
            yield model
        finally:
            with torch.no_grad():
                first._parameters["bias"] = bias  # the same object, also if a caller swapped it
                bias.copy_(saved)
        return
    # Subtracted in place where nothing keeps the output for backward (a new output tensor costs
    # its page faults, ~1 ms a pass on the shapes CNN), with the offset in the dtype, device and
    # memory layout of the output: subtracting an NCHW tensor from a channels-last one (the
    # engine's rows on CPU) is ~10× slower. The copies are kept with a kept offset (the
    # channels-last copy of the shapes CNN's took 0.13 ms a call).

    weight = first._parameters.get("weight")
    version = weight._version if isinstance(weight, torch.Tensor) else None

    def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        if out.shape[1:] != offset.shape[1:]:
            raise SaliencelabError(
                "input_invariance built its shifted model for inputs of shape "
                f"{tuple(x.shape[1:])}; explain inputs of that shape."
            )
        layout = memory_format_of(out)
        now = mod._parameters.get("weight")
        if key is not None and (now is not weight or now._version != version):
            # Other weights for this forward: LRP's canonizer merged a BatchNorm into the layer
            # (W' = s·W), whose response to the shift is then s·W·shift, not W·shift.
            like_out = layer_offset(mod, x, shift).to(out.device, out.dtype)
            like_out = like_out.contiguous(memory_format=layout)
        else:
            like_out = derived(
                (out.dtype, out.device, layout),
                lambda: offset.to(out.device, out.dtype).contiguous(memory_format=layout),
            )
        fn = out.grad_fn
        if not out.requires_grad or (fn is not None and fn.name() in _OUTPUT_NOT_SAVED):
            return out.sub_(like_out)
        return out - like_out

    handle = first.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


@register_metric
class InputInvariance(Metric):
    """Input invariance (Kindermans et al. 2017, The (Un)reliability of Saliency Methods), lower
    is better.

    The input is shifted by a constant, x₂ = x + shift (per channel if a sequence), and the model's
    first layer is made to absorb it (bias b − W·shift; `shifted_model`: in place for the call, put
    back exactly afterwards), so both models have the same outputs and gradients. The explanation of
    x₂ on the shifted model is compared with the map of x: `measure="fraction"` is the fraction of
    map values (or attributions with `on="attributions"`) that changed, i.e. not `torch.isclose(a,
    a₂, rtol, atol)`; `measure="mae"` is the mean |a − a₂|. Gradients and Grad-CAM score 0 in
    float64 and about 0 in float32 (where rounding of the shifted first layer flips a ReLU or
    max-pool choice, a few values change: 0.01-0.02 of them on the shapes CNN); input × gradient and
    IG with a zero baseline do not. Needs the model's first layer to be an nn.Conv2d or nn.Linear
    that gets the input unchanged. Quantus' InputInvariance returns, per sample, whether all values
    are close (`np.isclose`, atol 1e-4): it is True exactly where `measure="fraction"` gives 0.

    `atol` / `rtol` hold as given in float32 and float64. Where the model, its inputs or the
    maps are in a coarser dtype (float16, bfloat16), x and x₂ round differently (even the
    model-free `sobel` map moves by ~4 ε), so a value also counts as unchanged within
    8 · ε · max |a| of its sample (ε the coarsest dtype's machine epsilon: 9.8e-4 in float16,
    7.8e-3 in bfloat16), and the shifted model's outputs may differ by 32 ε · (1 + max |logit|)
    instead of 1e-3 · (1 + max |logit|).

    Cost: the explanation of x₂, and one forward of x's first row, which finds the first layer
    and gives the logits the shifted model's are checked against (those of x₂'s first row are
    read from the explanation's own forward); all counted in `forwards` / `passes`. The first
    layer and its response to the shift are kept per model for the next batch (until the model
    or its first layer's weight changes).
    """

    name = "input_invariance"
    direction = "lower"
    value_range = (0.0, math.inf)
    needs = ("model", "explainer")
    family = "axiomatic"
    reference = (
        "Kindermans et al. 2017, The (Un)reliability of Saliency Methods (NeurIPS workshop; "
        "LNCS 11700, 2019)"
    )

    def __init__(
        self,
        shift: float | Sequence[float] = -1.0,
        measure: Literal["fraction", "mae"] = "fraction",
        atol: float = 1e-4,
        rtol: float = 1e-5,
        on: Literal["maps", "attributions"] = "maps",
    ) -> None:
        check_choice(self.name, "measure", measure, ("fraction", "mae"))
        check_choice(self.name, "on", on, ("maps", "attributions"))
        if not (atol >= 0 and rtol >= 0):
            raise SaliencelabError("atol and rtol must be non-negative numbers.")
        try:
            values = torch.as_tensor(shift, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            values = None
        if values is None or not values.numel() or not bool(values.isfinite().all()):
            raise SaliencelabError(
                f"shift of {self.name} must be a finite number or one per channel, got {shift!r}."
            )
        super().__init__(shift=shift, measure=measure, atol=atol, rtol=rtol, on=on)

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(self.shift, dtype=x.dtype, device=x.device).flatten()
        if s.numel() == 1:
            s = s.expand(x.shape[1])
        if s.numel() != x.shape[1]:
            raise SaliencelabError(
                f"shift has {s.numel()} values for inputs with {x.shape[1]} channels; give one "
                "number or one per channel."
            )
        return s

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        if x.dim() not in (2, 4):
            raise SaliencelabError(
                f"input_invariance needs (B, C, H, W) or (B, D) inputs, got {tuple(x.shape)}."
            )
        self._shift(x)  # one per channel: one sentence

    def check_model(self, model: Model) -> None:
        if is_blackbox(model):
            raise SaliencelabError(
                "input_invariance absorbs a shift of the inputs into the model's first layer, "
                "which a black-box function does not expose; it needs a model whose first layer "
                "is an nn.Conv2d or nn.Linear."
            )
        refuse_compiled_model(
            self.name, model.module, "absorbs a shift of the inputs into the model's first layer"
        )

    def score(self, batch: EvalBatch) -> Scores:
        assert batch.model is not None and batch.explainer is not None
        self.check_model(batch.model)
        x = batch.x
        if x.dim() not in (2, 4):
            raise SaliencelabError(
                f"input_invariance needs (B, C, H, W) or (B, D) inputs, got {tuple(x.shape)}."
            )
        s = self._shift(x)
        x2 = x + s.view(1, -1, *[1] * (x.dim() - 2))
        engine = batch.require_engine()
        # One counted forward of the first row finds the first layer and the model's logits.
        name, _, before = first_layer(batch.model.module, x[:1], engine.logits)
        with shifted_model(batch.model, x, s, layer=name) as model2:
            a2, logits = _explained(batch.explainer, model2, x2, batch.target)
            # The shifted model's logits of the first row: the explanation's own (sl.explain
            # finds the logits of its rows), or from one more (counted) forward for an
            # explainer that computes its answer its own way.
            after = logits[:1] if logits is not None else engine.logits(x2[:1])
        out = a2.maps if self.on == "maps" else a2.attributions
        ref = batch.maps if self.on == "maps" else batch.attributions
        dtypes = [x.dtype, before.dtype, *(t.dtype for t in (ref, out) if t is not None)]
        eps = rounding_eps(parameter_dtype(batch.model), *dtypes)
        # The shifted model must give the same outputs (eval mode, weights frozen), to rounding.
        gap = float((after.to(before) - before).abs().max())
        if not gap <= max(1e-3, 32 * eps) * (1 + float(before.abs().max())):
            raise SaliencelabError(
                f"The model with the shift absorbed in its first layer gives outputs {gap:.3g} "
                "away from the model's, so input_invariance cannot score this model."
            )
        if ref is None or ref.shape != out.shape:
            raise SaliencelabError(
                "on='attributions' needs the method's input-space attributions of the inputs; "
                "pass attributions=... or use on='maps'."
            )
        ref, out = ref.double(), out.double()
        if self.measure == "mae":
            values = (ref - out).abs().flatten(1).mean(1)
        else:
            atol = self.atol
            if eps > torch.finfo(torch.float32).eps:  # rounding of a coarser dtype, per sample
                peak = ref.abs().nan_to_num(0.0, 0.0, 0.0).flatten(1).amax(1)  # finite values
                atol = self.atol + ROUNDING * eps * peak
                atol = atol.view(-1, *[1] * (ref.dim() - 1))
            values = changed_fraction(ref, out, self.rtol, atol)
        return Scores(values=values, extras={"output_gap": torch.full((x.shape[0],), gap)})


def _explained(
    explainer: Explainer, model: Model, x: torch.Tensor, target: torch.Tensor | None
) -> tuple[Attribution, torch.Tensor | None]:
    """The explainer's answer for `x` and, for a plain `Explainer` (`sl.explain`), the model's
    logits of `x` that came with it (None from a subclass with a `__call__` of its own)."""
    if type(explainer).__call__ is Explainer.__call__:
        ex = explainer.explain(model, x, target)
        return ex[explainer.method], ex.logits
    return explainer(model, x, target), None


def changed_fraction(
    a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float | torch.Tensor
) -> torch.Tensor:
    """(B,) the fraction of each sample's values where `torch.isclose(a, b, rtol, atol)` fails;
    `atol` may also be a tensor broadcast against `b` (e.g. one per sample).

    Where every value is finite this is |a − b| > atol + rtol·|b|, the same test, written as
    0/1 into a float tensor (~3× faster on the CPU than isclose's bool kernels); else also
    isclose's rules for NaN (never close) and infinities (close only to themselves)."""
    if not (all_finite(a) and all_finite(b)):
        finite = torch.isfinite(a) & torch.isfinite(b)
        close = torch.where(finite, (a - b).abs() <= atol + rtol * b.abs(), a == b)
        return (~close).flatten(1).double().mean(1)
    diff = (a - b).abs_()
    changed = torch.gt(diff, b.abs().mul_(rtol).add_(atol), out=torch.empty_like(diff))
    return changed.flatten(1).mean(1)
