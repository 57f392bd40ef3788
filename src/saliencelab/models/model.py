"""`sl.Model`: an `nn.Module` plus what explaining it needs (preprocessing, labels, layers)."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.errors import SaliencelabError

LOGITS_KEYS = ("logits", "scores", "output", "out")


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits inside a model's output: a tensor, a dict / HF `ModelOutput`, or a tuple.

    A dict's entry under one of `LOGITS_KEYS`, else its only entry (several others: refused,
    never a guess); a tuple's first item. One score per input, (B,), reads as (B, 1), as a
    black box's does."""
    if isinstance(outputs, torch.Tensor):
        if outputs.is_complex():  # no order, no softmax: no class to explain
            raise SaliencelabError(
                f"The model returned complex scores ({outputs.dtype}); return real ones, e.g. "
                "their magnitude (.abs()) or real part (.real)."
            )
        return outputs[:, None] if outputs.dim() == 1 else outputs
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        for key in LOGITS_KEYS:
            if key in outputs:
                return logits_of(outputs[key])
        keys = list(outputs.keys())
        if len(keys) == 1:
            return logits_of(outputs[keys[0]])
        raise SaliencelabError(
            f"The model returned a {type(outputs).__name__} with the keys "
            f"{', '.join(map(repr, keys)) or 'none'} and none of {', '.join(LOGITS_KEYS)}, so "
            "its scores are not known; return them under the key 'logits' (or first in a tuple)."
        )
    if isinstance(outputs, (tuple, list)) and outputs:
        return logits_of(outputs[0])
    raise SaliencelabError(
        f"The model returned {type(outputs).__name__}, not scores; its forward must return a "
        "tensor (batch, classes), or a dict or tuple holding one."
    )


def checked_labels(labels: Any) -> Sequence[str] | None:
    """Class names in index order: None, a list or tuple of strings (as given), or a mapping
    {0: name, ..., n-1: name} such as a Hugging Face `id2label` (as a list); anything else is
    refused in one sentence."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)):
        raise SaliencelabError(
            f"labels must be a list of class names, not one string ({labels[:40]!r}); give e.g. "
            "labels=['cat', 'dog'] (or names.split())."
        )
    if isinstance(labels, Mapping):
        keys = list(labels)
        by_index = {_label_index(k): v for k, v in labels.items()}
        if None in by_index or sorted(by_index) != list(range(len(keys))):
            shown = ", ".join(map(repr, keys[:8])) + (", ..." if len(keys) > 8 else "")
            raise SaliencelabError(
                f"labels as a dict must have one name for each class index 0 to {len(keys) - 1}, "
                f"but its keys are {shown or 'none'}; give a dict {{0: name, 1: name, ...}} "
                "without gaps, or a list of class names in index order."
            )
        labels = [by_index[i] for i in range(len(keys))]
    elif not isinstance(labels, Sequence):
        raise SaliencelabError(
            f"labels must be a list of class names in index order (or a dict {{0: name, ...}}), "
            f"not {type(labels).__name__}; give e.g. labels=['cat', 'dog']."
        )
    for i, name in enumerate(labels):
        if not isinstance(name, str):
            raise SaliencelabError(
                f"labels must be class names (strings), but the name of class {i} is "
                f"{type(name).__name__} ({name!r}); give strings, e.g. [str(v) for v in labels]."
            )
    return labels


def check_labels_fit(labels: Sequence[str] | None, logits: torch.Tensor) -> None:
    """One sentence unless `labels` name the model's outputs one for one: with more or fewer
    labels than scores per input, class names would point at other outputs (and random classes
    be drawn from another range)."""
    if labels is None or logits.dim() != 2 or logits.shape[1] == len(labels):
        return
    n = logits.shape[1]
    raise SaliencelabError(
        f"The model gives {n} score{'s' * (n != 1)} per input but has {len(labels)} "
        f"label{'s' * (len(labels) != 1)}; give one label per output (labels of length {n}), "
        "or labels=None."
    )


def _checked_input_size(model: Model, size: Any) -> tuple[int, int] | None:
    """(H, W) from (H, W) or one number (a square, as --input-size N); None as it is."""
    given = size
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    if size is None:
        return None
    if (
        isinstance(size, (str, bytes))
        or not isinstance(size, Sequence)
        or len(size) != 2
        or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in size
        )
    ):
        raise SaliencelabError(
            f"input_size must be (height, width) in pixels, or one number for a square, not "
            f"{given!r}."
        )
    return (int(size[0]), int(size[1]))


def _checked_module(model: Model, module: Any) -> nn.Module:
    if isinstance(module, nn.Module):
        return module
    if isinstance(module, Model):
        hint = "it is already an sl.Model: use it as it is, or its .module"
    elif callable(module):
        hint = "for a function of a batch, use sl.blackbox(fn)"
    else:
        hint = "wrap a torch.nn.Module"
    raise SaliencelabError(
        f"sl.Model(module=...) takes a torch.nn.Module, not {type(module).__name__}; {hint}."
    )


def _checked_preprocess(model: Model, preprocess: Any) -> Callable[[Any], torch.Tensor] | None:
    if preprocess is None or callable(preprocess):
        return preprocess
    raise SaliencelabError(
        f"preprocess must be a function from images to the model's input batch (a tensor), or "
        f"None, not {type(preprocess).__name__} {preprocess!r}."
    )


def _checked_default_layer(model: Model, layer: Any) -> str | None:
    """A dotted name; a submodule of the model is read as its name."""
    if layer is None or layer == "":  # no layer named: the method's own choice
        return None
    if isinstance(layer, str):
        return layer
    if isinstance(layer, nn.Module):
        module = getattr(model, "module", None)
        names = [n for n, m in module.named_modules() if m is layer] if module else []
        if names:
            return names[0]
        raise SaliencelabError(
            f"default_layer is a {type(layer).__name__} that is not part of the model; give "
            "one of its layers, or its dotted name (see `saliencelab layers MODEL`)."
        )
    raise SaliencelabError(
        f"default_layer must be a layer's dotted name (see `saliencelab layers MODEL`) or None, "
        f"not {type(layer).__name__} {layer!r}."
    )


def _checked_extra(model: Model, extra: Any) -> dict[str, Any]:
    if extra is None:
        return {}
    if isinstance(extra, Mapping):
        return extra if isinstance(extra, dict) else dict(extra)
    raise SaliencelabError(
        f"extra must be a dict (of hooks for the methods), not {type(extra).__name__}."
    )


_FIELD_CHECKS: dict[str, Callable[[Model, Any], Any]] = {
    "module": _checked_module,
    "preprocess": _checked_preprocess,
    "labels": lambda model, labels: checked_labels(labels),
    "default_layer": _checked_default_layer,
    "input_size": _checked_input_size,
    "extra": _checked_extra,
}


def preprocessed(model: Model, items: Any) -> torch.Tensor:
    """`model.preprocess(items)`, checked: a tensor (a NumPy array is taken as one) with one
    row per item of a list; a preprocess that returns something else, or drops or adds rows
    (one that ignores its input), is one sentence instead of maps of the wrong images."""
    if model.preprocess is None:
        raise SaliencelabError(
            f"Got inputs of type {type(items).__name__} for a model with no preprocessing; pass "
            "a tensor, or give the model one (sl.Model(module, preprocess=...))."
        )
    out = model.preprocess(items)
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(np.ascontiguousarray(out))
    if not isinstance(out, torch.Tensor):
        raise SaliencelabError(
            f"The model's preprocess returned {type(out).__name__}; it must return the input "
            "batch as a tensor, one row per image."
        )
    if isinstance(items, (list, tuple)) and out.dim() >= 1 and out.shape[0] != len(items):
        n = len(items)
        raise SaliencelabError(
            f"The model's preprocess returned {out.shape[0]} row{'s' * (out.shape[0] != 1)} "
            f"for {n} input{'s' * (n != 1)}; it must return one row per input, in order."
        )
    return out


def displayed(model: Model, image: Any) -> Any | None:
    """`model.extra["display"](image)`, the image as the model sees it (e.g. its centre crop),
    checked to be a PIL image; None for a model without a display."""
    display = model.extra.get("display")
    if not callable(display):
        return None
    shown = display(image)
    if not isinstance(shown, Image.Image):
        raise SaliencelabError(
            f"The model's extra['display'] returned {type(shown).__name__}; it must return the "
            "image as the model sees it, as a PIL image."
        )
    return shown


def size_error(x: torch.Tensor, err: Exception, option: str) -> SaliencelabError:
    """One sentence for a model that failed on inputs `x` of a size the library chose (the
    model's `input_size`, else a default): the error's first line and how to give another."""
    first = str(err).strip().split("\n")[0][:200]
    return SaliencelabError(
        f"The model failed on inputs of shape {tuple(x.shape)} ({type(err).__name__}: {first}); "
        f"if it takes another image size, pass {option} or give the model its input_size "
        "(sl.Model(..., input_size=(H, W)))."
    )


def _label_index(key: Any) -> int | None:
    """The class index a labels dict's key stands for: an int, or its decimal string (as JSON
    keys are), else None."""
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return int(key)
    if isinstance(key, str) and key.isdecimal() and str(int(key)) == key:
        return int(key)
    return None


@dataclass
class Model:
    """A model to explain.

    Attributes:
        module: the wrapped `nn.Module`.
        preprocess: turns a PIL image (or a list of them) into the model's input batch.
        labels: class names, index = class id (may be `None`); a dict {0: name, ...} (e.g. a
            Hugging Face `id2label`) becomes the list.
        name: a short name for tables and file names.
        default_layer: dotted name of the layer CAM methods use when none is given.
        input_size: (H, W) the model expects, if fixed.
    """

    module: nn.Module
    preprocess: Callable[[Any], torch.Tensor] | None = None
    labels: Sequence[str] | None = None
    name: str = "model"
    default_layer: str | None = None
    input_size: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Nothing left to do: every field is checked as it is set (`__setattr__`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        """Fields are checked and normalised when set, at construction and afterwards
        (`model.labels = ...` later is read as the constructor reads it), so a wrong one is
        one sentence here rather than wrong class names or a traceback in some method."""
        check = _FIELD_CHECKS.get(name)
        if check is not None:
            value = check(self, value)
        object.__setattr__(self, name, value)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.module(x))

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def label(self, index: int) -> str:
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)

    def to(self, device: str | torch.device) -> Model:
        self.module.to(device)
        return self


def parameter_dtype(model: Model) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (or buffer), which its inputs are cast
    to (float64 inputs to a float32 model); None when it has none (a black box)."""
    for t in itertools.chain(model.module.parameters(), model.module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def rounding_eps(*dtypes: torch.dtype | None) -> float:
    """The machine epsilon of the coarsest floating dtype among `dtypes` (0 if none): the
    rounding a check between two computations in those dtypes must allow."""
    return max(
        (torch.finfo(d).eps for d in dtypes if d is not None and d.is_floating_point), default=0.0
    )


def as_model_input(model: Model, x: torch.Tensor) -> torch.Tensor:
    """`x` on the model's device, floating inputs in its parameter dtype (integer inputs, e.g.
    token ids, as they are)."""
    x = x.to(model.device)
    dtype = parameter_dtype(model)
    return x.to(dtype) if dtype is not None and x.is_floating_point() else x


def as_model(model: Model | nn.Module) -> Model:
    """Accept a `sl.Model` or a plain `nn.Module` everywhere; a plain function is refused with a
    pointer to `sl.blackbox`."""
    if isinstance(model, Model):
        return model
    if isinstance(model, nn.Module):
        return Model(module=model, name=type(model).__name__)
    kind = type(model).__name__
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise SaliencelabError(
            f"Expected a saliencelab Model or a torch nn.Module, got the class {model.__name__}; "
            f"build the network first, e.g. {model.__name__}(...)."
        )
    if callable(model):
        from .blackbox import FORWARD_ONLY_METHODS

        raise SaliencelabError(
            f"Expected a saliencelab Model or a torch nn.Module, got {kind}; to explain a plain "
            "callable batch → scores, wrap it with sl.blackbox(fn) (numpy=True if it takes NumPy "
            f"arrays) and use {FORWARD_ONLY_METHODS}."
        )
    raise SaliencelabError(
        f"Expected a saliencelab Model or a torch nn.Module, got {kind}; "
        "wrap your network with sl.Model(module) or load one with sl.load_model(name)."
    )
