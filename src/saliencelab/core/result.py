"""Results: `Attribution` (one method's maps and what they cost) and `Explanation` (several)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import BuiltinFunctionType, FunctionType, MethodType
from typing import Any

import torch

from .targets import LayerTarget


def cost_text(passes: float, forwards: float) -> str:
    """ "1 pass + 2 forwards": the passes (forward + backward) and forward-only passes per sample
    that are not zero, in the singular for one."""

    def count(n: float, one: str, many: str) -> str:
        return f"{n:g} {one if n == 1 else many}"

    parts = [count(passes, "pass", "passes")] if passes else []
    parts += [count(forwards, "forward", "forwards")] if forwards else []
    return " + ".join(parts) or "no pass"


@dataclass(eq=False)  # == is identity: comparing tensor fields has no single truth value
class Attribution:
    """One method's answer for a batch.

    Attributes:
        method: registered method name.
        maps: (B, H, W) float tensor at input resolution, signed, not normalised; (B, F) for
            tabular inputs (B, F), one value per feature. How the method reduces channels into
            it is in `reduction` ("none (one value per feature)" for tabular inputs; the
            perturbation methods keep their own).
        attributions: the full attribution before channel reduction, (B, C, H, W) for input-space
            methods ((B, F) for tabular inputs); for layer methods (CAM family) `maps` with a
            channel axis, (B, 1, H, W).
        target: (B,) LongTensor, the class explained per sample (-1 where a callable decided).
        signed: whether `maps` can be negative (drawn with a diverging colour map).
        reduction: how channels were reduced into `maps`, e.g. "sum" or "cam".
        passes: forward+backward passes this method cost per sample (a shared pass counted in full
            for each method that used it; see `shared_with`).
        forwards: extra forward-only passes per sample.
        seconds: wall time spent on this method (a shared pass's time divided among its users).
        shared_with: other methods of the same call that reused this method's passes.
        layer: the layer(s) a layer method used.
        params: the options the method ran with, but those given as tensors.
        extras: method-specific results, e.g. `delta` (IG completeness gap).
        tensor_params: the options given as tensors (a feature mask, a baselines tensor), kept
            out of `params` (which reports write as JSON) so that `sl.evaluate` recomputes the
            maps with them (robustness and randomisation metrics).
    """

    method: str
    maps: torch.Tensor
    attributions: torch.Tensor
    target: torch.Tensor
    signed: bool = True
    reduction: str = "sum"
    passes: float = 0.0
    forwards: float = 0.0
    seconds: float = 0.0
    shared_with: tuple[str, ...] = ()
    layer: str | list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    tensor_params: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        # `a.delta` for `a.extras["delta"]`.
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        """A summary, not every value of the maps."""
        layer = f", layer {self.layer}" if self.layer else ""
        return (
            f"Attribution({self.method}: maps {tuple(self.maps.shape)}, "
            f"{'signed' if self.signed else 'unsigned'}, {self.reduction}{layer}; "
            f"{cost_text(self.passes, self.forwards)} per sample, {self.seconds:.2f} s)"
        )

    def to(self, device: str | torch.device) -> Attribution:
        """Move the maps, attributions, target, tensor options and tensor extras (e.g. `delta`)
        to `device`, in place; returns self."""
        self.maps = self.maps.to(device)
        self.attributions = self.attributions.to(device)
        self.target = self.target.to(device)
        self.tensor_params = {k: v.to(device) for k, v in self.tensor_params.items()}
        self.extras = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.extras.items()
        }
        return self


@dataclass(eq=False)  # == is identity (Mapping's item-wise == would compare tensors)
class Explanation(Mapping[str, Attribution]):
    """The answers of several methods for one batch, plus the model's predictions.

    `ex["gradcam"]` is an :class:`Attribution`. For a class target `ex.probabilities` is
    (B, num_classes). For a channel or neuron target (`sl.channel(...)`, `sl.neuron(...)`)
    `layer_target` is that target, `logits` hold the layer's readings (one per channel),
    `probabilities` is None (a softmax over channels is no probability) and `target_values`
    (B,) is the reading that was explained, e.g. channel 26's mean activation. Likewise for a
    score target of a model whose outputs are no classes (`score_target`, e.g. a text model's
    `sl.similarity_to(...)` on its sentence embedding, `sl.continuation(...)` on next-token
    logits): `target_values` is the score explained, and there is no predicted class.
    """

    attributions: dict[str, Attribution]
    inputs: torch.Tensor
    logits: torch.Tensor
    labels: Sequence[str] | None = None
    total_passes: float = 0.0
    total_forwards: float = 0.0
    seconds: float = 0.0
    layer_target: LayerTarget | None = None
    score_target: Callable[[torch.Tensor], torch.Tensor] | None = None
    # target_values, kept for the logits and target they were read from (a language model's
    # score is a log-softmax over (B, T, V): repr, tables and per-image pages ask for it often)
    _values: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def explained(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What was explained when it is no class: the channel or neuron target, or the score
        target of a model whose outputs are no classes; None for a class target."""
        return self.layer_target if self.layer_target is not None else self.score_target

    def __getitem__(self, method: str) -> Attribution:
        try:
            return self.attributions[method]
        except KeyError:
            from .errors import SaliencelabError, closest

            raise SaliencelabError(
                f"This explanation has no method {method!r}; it has "
                f"{', '.join(self.attributions)}.{closest(method, self.attributions)}"
            ) from None

    def to(self, device: str | torch.device) -> Explanation:
        """Move the inputs, logits and every Attribution to `device`, in place; returns self."""
        self.inputs = self.inputs.to(device)
        self.logits = self.logits.to(device)
        for a in self.attributions.values():
            a.to(device)
        self._values = None
        return self

    def __contains__(self, method: object) -> bool:
        return method in self.attributions  # `"gradcam" in ex`: no error for an absent name

    def get(self, method: str, default: Any = None) -> Any:
        """`ex.get("gradcam")`: the Attribution, or `default` where there is none."""
        return self.attributions.get(method, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.attributions)

    def __len__(self) -> int:
        return len(self.attributions)

    def __repr__(self) -> str:
        """A summary (the dataclass repr printed every tensor and all the labels)."""
        n = self.inputs.shape[0]
        more = ", ..." if n > 4 else ""
        if self.explained is not None or self.one_score:
            what = "explained " + ", ".join(self.target_text(i) for i in range(min(n, 4)))
        else:
            what = "predicted " + ", ".join(self.label(int(i)) for i in self.predictions[:4])
        inputs = f"inputs {tuple(self.inputs.shape)}"
        first = next(iter(self.attributions.values()), None)
        if first is not None and first.extras.get("texts") is not None:  # (embeddings + flags)
            inputs = f"{n} text{'' if n == 1 else 's'} of up to {self.inputs.shape[1]} tokens"
        return (
            f"Explanation({len(self.attributions)} method{'' if len(self) == 1 else 's'}: "
            f"{', '.join(self.attributions)}; "
            f"{inputs}; {what}{more}; "
            f"{cost_text(self.total_passes, self.total_forwards)} per sample, "
            f"{self.seconds:.2f} s)"
        )

    @property
    def explained_name(self) -> str | None:
        """What was explained when it is no class, as shown: "channel 26 of features.3",
        "similarity_to('a dog')", a function's own name, or "custom score" for a lambda."""
        explained = self.explained
        if explained is None:
            return None
        if not isinstance(explained, (FunctionType, MethodType, BuiltinFunctionType, partial)):
            return str(explained)  # a target that names itself: similarity_to('a dog')
        name = getattr(explained, "__name__", "")
        return name if name and not name.startswith("<") else "custom score"

    @property
    def one_score(self) -> bool:
        """Whether the model gives one score per sample (a regression, a single logit) and that
        score was explained: no classes to choose from, so no probabilities."""
        return self.explained is None and self.logits.dim() == 2 and self.logits.shape[-1] == 1

    @property
    def probabilities(self) -> torch.Tensor | None:
        """(B, num_classes) softmax of the logits; None for a channel or neuron target, a model
        whose outputs are no classes (`explained`), or one score per sample (`one_score`: its
        softmax would be 1 everywhere)."""
        if self.explained is not None or self.one_score:
            return None
        return self.logits.softmax(dim=-1)

    @property
    def predictions(self) -> torch.Tensor:
        """(B,) the top class; for a channel or neuron target, the most active channel."""
        return self.logits.argmax(dim=-1)

    @property
    def target_values(self) -> torch.Tensor | None:
        """(B,) the layer reading explained (a channel's mean activation, a unit's value) for a
        channel or neuron target, the score explained for a `score_target`; None for a class
        target; the score itself for a model of one score per sample (`one_score`)."""
        if self.one_score:
            return self.logits[:, 0].detach()
        explained = self.explained
        if explained is None:
            return None
        kept = self._values
        if kept is None or kept[0] is not self.logits or kept[1] is not explained:
            kept = self._values = (self.logits, explained, explained(self.logits).detach())
        return kept[2]

    def target_text(self, sample: int = 0) -> str:
        """ "channel 26 of features.3: 3.21" or "similarity_to('a dog'): 0.53" (what was
        explained and its value) for a channel, neuron or score target; "tabby (0.51)" (the
        predicted class and its probability) otherwise."""
        values = self.target_values
        if values is not None:
            what = self.explained_name if not self.one_score else (self.labels or ["score"])[0]
            return f"{what}: {float(values[sample]):.3g}"
        probs = self.logits[sample].softmax(dim=-1)
        index = int(probs.argmax())
        return f"{self.label(index)} ({float(probs[index]):.2f})"

    def label(self, index: int) -> str:
        """The class's name, or "class 3" for a model without class names (a bare "3" beside a
        probability reads as two numbers)."""
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return f"class {index}"

    def target_label(self, attribution: Attribution, sample: int) -> str:
        """What `attribution` explained for `sample`: a class name, the channel, neuron or score
        ("channel 26 of features.3", "similarity_to('a dog')"), or "custom" (a callable target
        of a classifier)."""
        t = int(attribution.target[sample])
        if t == 0 and self.one_score and not self.labels:
            return "score"
        if t >= 0:
            return self.label(t)
        return self.explained_name if self.explained is not None else "custom"

    def table(self) -> list[dict[str, Any]]:
        """One row per (sample, method): prediction and probability (None for a channel or
        neuron target, whose reading is in "target_value", and for a model of one score, whose
        score is there), target, and the method's cost per sample: passes, forwards and seconds
        (the call's time split evenly over its samples)."""
        batch = max(int(self.inputs.shape[0]), 1)
        probs = self.probabilities
        values = self.target_values
        rows = []
        for i in range(self.inputs.shape[0]):
            pred = int(self.logits[i].argmax())
            for name, a in self.attributions.items():
                rows.append(
                    {
                        "sample": i,
                        "predicted": None if probs is None else self.label(pred),
                        "probability": None if probs is None else float(probs[i, pred]),
                        "method": name,
                        "target": self.target_label(a, i),
                        "target_value": None if values is None else float(values[i]),
                        "passes": a.passes,
                        "forwards": a.forwards,
                        "seconds": a.seconds / batch,
                    }
                )
        return rows
