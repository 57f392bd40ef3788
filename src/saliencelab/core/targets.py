"""Targets: which output score an attribution explains.

Accepted forms: `None` (the predicted class), an int, a per-sample list or tensor, a class name
from the model's labels, or a callable `logits -> (N,)` scores (it must return one score per row
of whatever batch it gets, since multi-pass methods call it on perturbed batches), or a
:class:`LayerTarget` (a channel or neuron, e.g. `sl.channel("_blocks.12", 42)`) scored from a layer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import SaliencelabError, closest

TargetSpec = int | str | Sequence[int | str] | torch.Tensor | Callable | None


@dataclass
class Target:
    """A resolved target: class indices (B,) or a score function."""

    indices: torch.Tensor  # (B,) long; -1 where a callable decides
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def scores(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The score of each row of `logits`; `rows[i]` is the original sample of row i."""
        if self.fn is not None:
            s = self.fn(logits)
            if not isinstance(s, torch.Tensor) or s.shape != (logits.shape[0],):
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise SaliencelabError(
                    f"A target function must return one score per row, shape ({logits.shape[0]},), "
                    f"but returned {got}."
                )
            return s
        return class_scores(logits, self.indices, rows)


def class_scores(
    logits: torch.Tensor, classes: torch.Tensor, samples: torch.Tensor | None
) -> torch.Tensor:
    """(N,) `logits[i, classes[samples[i]]]`: row i scored for the class of its sample
    (`samples` None: row i is sample i). Moves the indices only when they live elsewhere."""
    dev = logits.device
    if classes.device != dev:
        classes = classes.to(dev)
    if samples is not None:
        classes = classes[samples if samples.device == dev else samples.to(dev)]
    return gather_classes(logits, classes)


def gather_classes(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(N,) `logits[i, idx[i]]`; a class index out of range is one sentence (checked only when
    the gather fails: nothing is spent on the usual case)."""
    try:
        return logits.gather(1, idx[:, None])[:, 0]
    except (RuntimeError, IndexError):
        check_class_logits(logits)
        check_class_indices(idx, logits.shape[-1])
        raise  # (another cause)


def check_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """`logits` if they are (N, classes), else one sentence: a class target reads a class score
    per row, which an output of another shape (a segmentation map, features) does not have."""
    if logits.dim() != 2:
        raise SaliencelabError(
            f"The model's output has shape {tuple(logits.shape)}, not (batch, classes), so it "
            "has no class to explain; give target= a function of the output returning one "
            "score per row (e.g. lambda out: out[:, 1].mean(dim=(1, 2)))."
        )
    return logits


def _class_index(t: int | str, labels: Sequence[str] | None, n_classes: int) -> int:
    if isinstance(t, str):
        if labels is None:
            raise SaliencelabError(
                f"The target {t!r} is a class name but this model has no labels; give a class "
                "index."
            )
        names = list(labels)
        found = [i for i, label in enumerate(names) if label == t]
        if not found:
            found = [i for i, label in enumerate(names) if label.lower() == t.lower()]
        if len(found) > 1:  # e.g. ImageNet's "crane": the bird (134) and the machine (517)
            raise SaliencelabError(
                f"The class name {t!r} names {len(found)} classes "
                f"({', '.join(map(str, found))}); give the class index instead."
            )
        if found:
            return found[0]
        hint = closest(t, labels)
        if not hint and len(labels) <= 20:  # a few classes: list them all
            hint = f" Its classes are: {', '.join(labels)}."
        raise SaliencelabError(f"The model has no class named {t!r}.{hint}")
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise SaliencelabError(
            f"A class target must be an int or a class name, not {type(t).__name__} ({t!r}); "
            "give e.g. target=3, target='tabby', or one per input."
        )
    t = int(t)
    if not 0 <= t < n_classes:
        raise _out_of_range(t, n_classes)
    return t


def _out_of_range(t: int, n_classes: int | None) -> SaliencelabError:
    known = (
        "classes start at 0"
        if n_classes is None
        else "the model has one score (class 0)"
        if n_classes == 1
        else f"the model has {n_classes} classes (0 to {n_classes - 1})"
    )
    return SaliencelabError(
        f"The target class {t} is out of range: {known}; pass a class in that range, or "
        "target=None for each input's predicted class."
    )


def class_bounds(t: torch.Tensor) -> tuple[int, int]:
    """(min, max) of the class indices `t` (non-empty), in one reduction and one read."""
    lo, hi = torch.stack(list(torch.aminmax(t))).tolist()
    return int(lo), int(hi)


def check_class_indices(
    t: torch.Tensor, n_classes: int | None, bounds: tuple[int, int] | None = None
) -> torch.Tensor:
    """`t` if every class index in it is in [0, n_classes) (n_classes None: unknown, only ≥ 0),
    else one sentence naming the first that is not (one reduction, one read: no Python loop
    over the batch; none where the caller knows `bounds`, `class_bounds(t)`)."""
    if not t.numel():
        return t
    n = n_classes if n_classes is not None else math.inf
    lo, hi = bounds if bounds is not None else class_bounds(t)
    if lo < 0 or hi >= n:
        raise _out_of_range(int(t[(t < 0) | (t >= n)][0]), n_classes)
    return t


def check_tensor_target(target: torch.Tensor) -> None:
    """One sentence unless `target` holds integer class indices, 0-D or (B,)."""
    if target.dim() > 1 or target.is_floating_point() or target.dtype == torch.bool:
        raise SaliencelabError(
            f"A tensor target must hold integer class indices, 0-D or (B,), but got shape "
            f"{tuple(target.shape)} and dtype {target.dtype}; e.g. t.long().view(-1)."
        )


def resolve_target(
    target: TargetSpec, logits: torch.Tensor, labels: Sequence[str] | None = None
) -> Target:
    """Turn any accepted target form into a :class:`Target` for a batch with these logits."""
    if not callable(target) or isinstance(target, torch.Tensor):
        check_class_logits(logits)
    predictions = logits.argmax(dim=-1) if target is None else None  # (only None needs them)
    return _resolve(target, logits.shape[0], logits.shape[-1], labels, predictions, logits.device)


class PendingTarget:
    """A target resolved on the first chunk of a pass whose rows are the samples themselves.

    Lets the first (shared) gradient pass of `sl.explain` also be the pass that finds the
    predicted class, so no separate forward is spent on it. `None` scores each row's argmax.
    """

    def __init__(self, spec: TargetSpec, batch: int, labels: Sequence[str] | None) -> None:
        self.spec, self.batch, self.labels = spec, batch, labels
        self.resolved: Target | None = None

    def scores(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.spec is None:
            check_class_logits(logits)
            return logits.gather(1, logits.argmax(dim=1, keepdim=True))[:, 0]
        if self.resolved is None:
            self.resolved = _resolve(self.spec, self.batch, logits.shape[-1], self.labels, None)
        return self.resolved.scores(logits, rows)


def _resolve(target, batch, n_classes, labels, predictions, device=None) -> Target:
    device = predictions.device if predictions is not None else device
    if target is None:
        return Target(predictions.long())
    if callable(target) and not isinstance(target, torch.Tensor):
        return Target(torch.full((batch,), -1, dtype=torch.long, device=device), fn=target)
    if isinstance(target, torch.Tensor):
        check_tensor_target(target)
        if target.dim() == 1 and target.shape[0] == batch and batch:
            return Target(check_class_indices(target.long(), n_classes).to(device, copy=True))
        target = target.item() if target.dim() == 0 else target.tolist()
    if isinstance(target, (numbers.Integral, str)):  # a bool is refused by _class_index
        idx = _class_index(target, labels, n_classes)
        return Target(torch.full((batch,), idx, dtype=torch.long, device=device))
    if isinstance(target, Sequence):
        if len(target) != batch:
            raise SaliencelabError(
                f"Got {len(target)} targets for a batch of {batch} inputs; give one target per "
                "input, or a single int / class name for all."
            )
        idx = [_class_index(t, labels, n_classes) for t in target]
        return Target(torch.tensor(idx, dtype=torch.long, device=device))
    hint = "; pass torch.as_tensor(target)" if type(target).__module__ == "numpy" else ""
    raise SaliencelabError(
        f"A target must be None, an int, a class name, a list, a tensor or a callable, not "
        f"{type(target).__name__}{hint}."
    )


class LayerTarget:
    """A target read from one layer's output instead of the model's logits (neurons, channels).

    Subclasses set `layer` (a dotted name or a module of the model) and define `read` and
    `__call__`. For a pass with such a target the engine hooks the layer, stops the forward right
    after it (the rest of the network is not run), and uses `read(activation)` (n, ...) in place
    of the logits: `chunk.logits`, `ctx.logits` and `Explanation.logits` hold these readings, and
    the score of each row is `self(readings)` (n,). It resolves like a callable target (class
    index -1), so a derived context keeps it. See `saliencelab.neurons.targets`.
    """

    layer: str | Any

    def read(self, activation: torch.Tensor) -> torch.Tensor:
        """The readings (n, ...) of the layer's output (n, ...), used in place of the logits."""
        raise NotImplementedError

    def __call__(self, readings: torch.Tensor) -> torch.Tensor:
        """The score (n,) of each row of `read`'s readings."""
        raise NotImplementedError

    def scores(self, readings: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """As :meth:`Target.scores`, so the engine also takes a bare layer target."""
        return self(readings)


def layer_target(target: Any) -> LayerTarget | None:
    """The :class:`LayerTarget` behind a target (bare, resolved or pending), or None."""
    if isinstance(target, LayerTarget):
        return target
    inner = target.fn if isinstance(target, Target) else getattr(target, "spec", None)
    return inner if isinstance(inner, LayerTarget) else None
