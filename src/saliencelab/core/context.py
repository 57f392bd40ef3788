"""What a method sees: the inputs, the resolved target, the engine, and shared passes.

`Context.capture(...)` returns one forward+backward pass over the batch's own samples with the
input gradient and/or the activations and gradients of some layers. Captures are memoised, so
when `sl.explain` is asked for saliency, input×gradient and several gradient-CAMs together, the
pass they all need runs once; each capture remembers which methods used it for cost accounting.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.model import Model
from .backward import Backward
from .batching import batch_rows
from .engine import Cost, Engine
from .errors import SaliencelabError
from .layers import get_layer, resolve_layer
from .targets import PendingTarget, Target, TargetSpec, layer_target, resolve_target
from .tokens import find_token_layer, spatial_maps

log = logging.getLogger("saliencelab")

LayerArg = str | nn.Module | Sequence[str | nn.Module] | None


@dataclass
class MethodOutput:
    """What a method returns.

    `attributions` is (B, C, H, W) for input-space methods or (B, h, w) / (B, 1, h, w) for layer
    methods; `maps` defaults to the signed sum over channels of `attributions` (for tabular
    inputs (B, F), which have no channel axis, to `attributions` themselves). `signed`
    overrides the registered default when the options decide it (e.g. SmoothGrad of |grad|).
    """

    attributions: torch.Tensor
    maps: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    layer: str | list[str] | None = None
    signed: bool | None = None


def method_output(method: str, out: Any, x: torch.Tensor) -> MethodOutput:
    """A method's return value `out` as a MethodOutput, checked against the batch `x` it
    explains: one sentence where a method (a user's own, registered with `sl.register`) returned
    something other than floating-point attributions with one row per input, which would
    otherwise fail later in a cryptic way or be kept with the wrong samples."""
    if isinstance(out, torch.Tensor):
        out = MethodOutput(out)
    if not isinstance(out, MethodOutput):
        raise SaliencelabError(
            f"The method {method} returned {type(out).__name__}; a method returns the "
            "attributions of its batch as a tensor (B, ...), or a MethodOutput."
        )
    image = x.dim() == 4
    for what, value in (("attributions", out.attributions), ("maps", out.maps)):
        if value is None and what == "maps":
            continue
        if not isinstance(value, torch.Tensor):
            raise SaliencelabError(
                f"The method {method} returned {what} of type {type(value).__name__}; return "
                "a tensor (B, ...)."
            )
        if not value.is_floating_point():
            raise SaliencelabError(
                f"The method {method} returned {what} of dtype {value.dtype}; return "
                "floating-point values (e.g. .float())."
            )
        shapes = ("(B, H, W) or (B, h, w)",) if what == "maps" else ("(B, C, H, W)", "(B, h, w)")
        wrong_rank = image and (value.dim() != 3 if what == "maps" else value.dim() not in (3, 4))
        if value.dim() < 2 or value.shape[0] != x.shape[0] or wrong_rank:
            kinds = f" ({' or '.join(shapes)} for images)" if image else ""
            raise SaliencelabError(
                f"The method {method} returned {what} of shape {tuple(value.shape)} for "
                f"inputs of shape {tuple(x.shape)}; return one row per input, batch axis "
                f"first{kinds}."
            )
    return out


@dataclass
class Capture:
    """One forward+backward pass over the samples themselves (rows = samples)."""

    backward: Backward
    logits: torch.Tensor
    scores: torch.Tensor
    input_grad: torch.Tensor | None
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    cost: Cost
    users: list[str] = field(default_factory=list)

    def covers(self, layers: Sequence[str], input_grad: bool, backward: Backward) -> bool:
        return (
            self.backward == backward
            and (self.input_grad is not None or not input_grad)
            and all(n in self.activations for n in layers)
        )


# The layer found by a probe forward, per model (weak keys: a new model never inherits one).
_AUTO_LAYER: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


class Context:
    """The inputs, target and engine of one explanation call, shared by its methods."""

    def __init__(
        self,
        model: Model,
        engine: Engine,
        x: torch.Tensor,
        target: Target | PendingTarget,
    ) -> None:
        self.model = model
        self.engine = engine
        self.x = x
        self._target = target
        self.captures: list[Capture] = []
        self.method: str = ""
        self.logits: torch.Tensor | None = None  # the model's logits on `x`, once known
        self._default_layer: tuple[str, nn.Module] | None = None  # layer=None, once resolved

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def target(self) -> Target:
        if not isinstance(self._target, Target):
            raise RuntimeError("the target is resolved after the first pass")
        return self._target

    def target_layer(self) -> nn.Module | None:
        """The module a neuron or channel target reads (the forward stops there), or None."""
        reader = layer_target(self._target)
        if reader is None:
            return None
        layer = reader.layer
        return get_layer(self.model.module, layer) if isinstance(layer, str) else layer

    def resolve(self, spec: TargetSpec, logits: torch.Tensor) -> Target:
        self._target = resolve_target(spec, logits, self.model.labels)
        self.logits = logits
        return self._target

    # -- layers --------------------------------------------------------------------------------

    def layer(self, spec: str | nn.Module | None) -> tuple[str, nn.Module]:
        """(name, module) of a layer; `None` = the model's default or the last spatial layer
        (resolved, and logged, once per call). With a channel or neuron target, `None` is the
        target's own layer: the forward ends there, so a later default would never run (a CAM
        of a channel at its layer is that channel's activation map, Grad-CAM's weights being
        ∂S/∂A)."""
        if spec is None and self._default_layer is not None:
            return self._default_layer
        default = self.model.default_layer or _AUTO_LAYER.get(self.model.module)
        reader = layer_target(self._target)
        if spec is None and reader is not None:
            spec = reader.layer  # (a name or a module, as the target was given)
            self._default_layer = resolve_layer(self.model.module, spec, self.x)
            log.info("using the target's layer %s", self._default_layer[0])
            return self._default_layer
        if spec is None and default is None:  # vision transformers: the last block's input norm
            default = find_token_layer(self.model.module, self.x, self.model.extra.get("reshape"))
            if default is not None:
                _AUTO_LAYER[self.model.module] = default
        name, module = resolve_layer(self.model.module, spec, self.x, default)
        if spec is None and default is None:
            _AUTO_LAYER[self.model.module] = name
        if spec is None:
            self._default_layer = (name, module)
        return name, module

    def layers(self, spec: LayerArg) -> dict[str, nn.Module]:
        """Several layers (for fusion) or one, by name."""
        specs = spec if isinstance(spec, (list, tuple)) else [spec]
        if not specs:
            raise SaliencelabError("An empty list of layers was given; name at least one layer.")
        return dict(self.layer(s) for s in specs)

    # -- passes --------------------------------------------------------------------------------

    def capture(
        self,
        layers: dict[str, nn.Module] | None = None,
        input_grad: bool = True,
        backward: Backward = "plain",
    ) -> Capture:
        """One forward+backward pass over the samples, memoised across the call's methods."""
        layers = layers or {}
        for cap in self.captures:
            if cap.covers(list(layers), input_grad, backward):
                if self.method and self.method not in cap.users:
                    cap.users.append(self.method)
                return cap
        before = self.engine.cost.copy()
        x, n = self.x, self.batch

        rows = batch_rows(x)
        chunks = list(self.engine.gradients(n, *rows, self._target, layers, input_grad, backward))
        activations = {k: _joined([c.activations[k] for c in chunks]) for k in layers}
        gradients = {k: _joined([c.gradients[k] for c in chunks]) for k in layers}
        if x.dim() == 4:  # images: token layers (B, T, D) as maps (B, D, h, w) (core/tokens.py)
            reshape = self.model.extra.get("reshape")
            activations, gradients = spatial_maps(
                activations, gradients, x.shape[-2:], self.model.module, reshape
            )
        cap = Capture(
            backward=backward,
            logits=_joined([c.logits for c in chunks]),
            scores=_joined([c.scores for c in chunks]),
            input_grad=_joined([c.input_grad for c in chunks]) if input_grad else None,
            activations=activations,
            gradients=gradients,
            cost=self.engine.cost.since(before),
            users=[self.method] if self.method else [],
        )
        self.captures.append(cap)
        return cap

    def derive(self, x: torch.Tensor, samples: torch.Tensor) -> Context:
        """A context over new rows `x` (e.g. noisy copies); row i explains sample `samples[i]`."""
        t = self.target
        sub = Target(t.indices[samples.to(t.indices.device)], t.fn)
        ctx = Context(self.model, self.engine, x, sub)
        ctx.method = self.method
        return ctx


@contextmanager
def autograd_allowed() -> Iterator[None]:
    """Autograd on for a public entry point, also when called inside `torch.no_grad()` or
    `torch.inference_mode()` (where even `enable_grad` records nothing). The caller's modes are
    restored on exit. Works as a decorator too: `@autograd_allowed()`.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The chunks' tensors joined along the rows (one chunk: itself, no copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, h, w) → (B, H, W) by bilinear interpolation (no-op if already that size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[
        :, 0
    ]


def check_image_batch(x: torch.Tensor, method: str) -> None:
    if x.dim() != 4:
        raise SaliencelabError(
            f"{method} works on image batches (B, C, H, W), but got a tensor of shape "
            f"{tuple(x.shape)}."
        )
