"""Input invariance (Kindermans et al. 2017): a constant input shift the model absorbs must not
change the explanation."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ...core.engine import Engine
from ...core.errors import SaliencelabError
from ...core.state import attribution_mode
from ...models.model import Model
from ..base import EvalBatch, Metric, Scores, register_metric
from ..checks import check_choice


def first_layer(module: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The first leaf module the forward of `x` runs, and its name (one forward, no grad)."""
    names = {m: n for n, m in module.named_modules()}
    seen: list[tuple[nn.Module, torch.Tensor | None]] = []
    hooks = []

    def pre(mod: nn.Module, args: tuple) -> None:
        if not seen:
            seen.append((mod, args[0] if args and isinstance(args[0], torch.Tensor) else None))

    for m in module.modules():
        if not list(m.children()):
            hooks.append(m.register_forward_pre_hook(pre))
    try:
        with attribution_mode(module), torch.inference_mode():
            module(x)
    finally:
        for hk in hooks:
            hk.remove()
    if not seen:
        raise SaliencelabError(
            "input_invariance found no layer in the model's forward; it needs a model whose "
            "first layer is an nn.Conv2d or nn.Linear."
        )
    mod, inp = seen[0]
    if not isinstance(mod, (nn.Conv2d, nn.Linear)):
        raise SaliencelabError(
            f"input_invariance needs the model's first layer to be an nn.Conv2d or nn.Linear "
            f"that absorbs the shift, but it is {names[mod] or 'the model'} "
            f"({type(mod).__name__}); use a model that starts with one."
        )
    if inp is None or inp.shape != x.shape or not torch.equal(inp, x):
        raise SaliencelabError(
            f"The first layer {names[mod]} does not get the model's input unchanged (the model "
            "transforms it first), so a shift of the input cannot be absorbed there; "
            "input_invariance cannot score this model."
        )
    return names[mod], mod


def shifted_model(model: Model, x: torch.Tensor, shift: torch.Tensor) -> Model:
    """A deep copy of `model` whose first layer absorbs an input shift: f'(x + shift) = f(x).

    The layer's response to the shift, layer(shift) − layer(0), is measured on the copy. Where
    it is the same at every position (a Linear layer, a Conv2d without zero padding) the bias
    becomes b − W·shift (Kindermans et al.). With zero padding the border outputs see unshifted
    zeros, so the exact correction is position-dependent: a forward hook on the copy subtracts
    it from the layer's output. The user's model is not touched.
    """
    name, _ = first_layer(model.module, x[:1])
    module = copy.deepcopy(model.module)
    layer = module.get_submodule(name)
    with torch.no_grad(), attribution_mode(module):
        # The layer is affine: layer(z + shift) = layer(z) + [layer(shift) − layer(0)]. Running
        # the layer itself also covers subclasses that pad inside their forward.
        probe = shift.to(x.dtype).reshape(1, -1, *[1] * (x.dim() - 2)).expand(1, *x.shape[1:])
        probe = probe.contiguous()
        offset = layer(probe) - layer(torch.zeros_like(probe))
        flat = offset.flatten(2) if offset.dim() > 2 else offset.unsqueeze(-1)
        per_channel = flat[..., :1]
        if torch.allclose(flat, per_channel.expand_as(flat), rtol=1e-6, atol=1e-7):
            _add_bias(layer, -per_channel.flatten())
        else:
            fixed = offset.detach().clone()

            def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
                if out.shape[1:] != fixed.shape[1:]:
                    raise SaliencelabError(
                        "input_invariance built its shifted model for inputs of shape "
                        f"{tuple(x.shape[1:])}; explain inputs of that shape."
                    )
                return out - fixed.to(out.dtype)

            layer.register_forward_hook(hook)
    return dataclasses.replace(model, module=module)


def _add_bias(layer: nn.Conv2d | nn.Linear, delta: torch.Tensor) -> None:
    if layer.bias is None:
        layer.bias = nn.Parameter(delta.clone(), requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.add_(delta.to(layer.bias))


@register_metric
class InputInvariance(Metric):
    """Input invariance (Kindermans et al. 2017, The (Un)reliability of Saliency Methods), lower
    is better.

    The input is shifted by a constant, x₂ = x + shift (per channel if a sequence), and a copy of
    the model is given a first layer that absorbs it (bias b − W·shift), so both models have the
    same outputs and gradients. The explanation of x₂ on the shifted model is compared with the
    map of x: `measure="fraction"` is the fraction of map values (or attributions with
    `on="attributions"`) that changed, i.e. not `torch.isclose(a, a₂, rtol, atol)`;
    `measure="mae"` is the mean |a − a₂|. Gradients and Grad-CAM score 0; input × gradient and
    IG with a zero baseline do not. Needs the model's first layer to be an nn.Conv2d or
    nn.Linear that gets the input unchanged. Quantus' InputInvariance returns, per sample,
    whether all values are close (`np.isclose`, atol 1e-4): it is True exactly where
    `measure="fraction"` gives 0.
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

    def score(self, batch: EvalBatch) -> Scores:
        assert batch.model is not None and batch.explainer is not None
        x = batch.x
        if x.dim() not in (2, 4):
            raise SaliencelabError(
                f"input_invariance needs (B, C, H, W) or (B, D) inputs, got {tuple(x.shape)}."
            )
        s = self._shift(x)
        x2 = x + s.view(1, -1, *[1] * (x.dim() - 2))
        model2 = shifted_model(batch.model, x, s)
        # The shifted model must give the same outputs (one row each; eval mode, weights frozen).
        before = batch.require_engine().logits(x[:1])
        gap = float((Engine(model2).logits(x2[:1]) - before).abs().max())
        if not gap <= 1e-3 * (1 + float(before.abs().max())):
            raise SaliencelabError(
                f"The model with the shift absorbed in its first layer gives outputs {gap:.3g} "
                "away from the model's, so input_invariance cannot score this model."
            )
        out = self.explainer_output(batch, model2, x2)
        ref = batch.maps if self.on == "maps" else batch.attributions
        if ref is None or ref.shape != out.shape:
            raise SaliencelabError(
                "on='attributions' needs the method's input-space attributions of the inputs; "
                "pass attributions=... or use on='maps'."
            )
        ref, out = ref.double(), out.double()
        if self.measure == "mae":
            values = (ref - out).abs().flatten(1).mean(1)
        else:
            close = torch.isclose(ref, out, rtol=self.rtol, atol=self.atol)
            values = (~close).flatten(1).double().mean(1)
        return Scores(values=values, extras={"output_gap": torch.full((x.shape[0],), gap)})

    def explainer_output(self, batch: EvalBatch, model2: Model, x2: torch.Tensor) -> torch.Tensor:
        assert batch.explainer is not None
        a = batch.explainer(model2, x2, batch.target)
        return a.maps if self.on == "maps" else a.attributions
