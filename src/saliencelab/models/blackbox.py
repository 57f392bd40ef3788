"""Black-box models: explain any callable batch → scores with the forward-only methods.

`blackbox(fn)` wraps a function (an ONNX Runtime session's `run`, a remote model's client, a
scikit-learn `predict_proba`) in an `nn.Module` with no parameters, so that

>>> model = sl.blackbox(lambda x: session.run(None, {"input": x})[0], numpy=True)
>>> sl.explain(model, x, methods="occlusion")

works for the perturbation methods (occlusion, rise, feature_ablation, lime, kernelshap), which
need only forwards. Methods that need gradients or layers fail with one sentence saying so.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import SaliencelabError
from .model import Model

__all__ = ["BlackBox", "blackbox", "is_blackbox"]

FORWARD_ONLY_METHODS = "occlusion, rise, feature_ablation, lime or kernelshap"


def gradients_message(method: str = "This method", family: str = "gradient") -> str:
    """One sentence for a method a black box cannot run: the rollouts read the model's attention
    layers, the CAM family its layers and gradients, the rest its gradients."""
    if family == "attention":
        return (
            f"{method} reads the attention matrices of the model's attention layers; this model "
            f"is a black-box function; use {FORWARD_ONLY_METHODS}."
        )
    what = "the model's layers and gradients" if family == "cam" else "gradients"
    return f"{method} needs {what}; this model is a black-box function; use {FORWARD_ONLY_METHODS}."


class BlackBox(nn.Module):
    """An `nn.Module` without parameters whose forward calls `fn` on the batch.

    `fn` gets the batch as a torch tensor (or a NumPy array with `numpy=True`) and returns
    scores (N, classes) or (N,) (one score: it becomes (N, 1)), as a tensor, an array, a list
    (of rows or numbers, read as an array), or a tuple / list of outputs whose first item is
    that (e.g. ONNX Runtime's list of arrays).
    """

    def __init__(self, fn: Callable[[Any], Any], numpy: bool = False) -> None:
        super().__init__()
        if not callable(fn):
            raise SaliencelabError(
                f"A black-box model needs a callable batch → scores, not {type(fn).__name__}."
            )
        self.fn = fn
        self.numpy = numpy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise SaliencelabError(gradients_message())
        batch = x.detach().cpu().numpy() if self.numpy else x.detach()
        out = self.fn(batch)
        return _as_scores(out, x.shape[0], x.device)

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__qualname__', type(self.fn).__name__)}, numpy={self.numpy}"


def _as_scores(out: Any, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(out, tuple) and out and not _is_number(out[0]):
        out = out[0]  # a tuple of outputs: the first is the scores
    elif isinstance(out, list) and _is_list_of_outputs(out, n):
        out = out[0]  # a list of outputs (ONNX Runtime's `run`): the first is the scores
    if isinstance(out, (tuple, list)):
        out = _list_as_array(out, n)
    try:
        scores = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)
    except (TypeError, ValueError, RuntimeError):
        scores = None
    if scores is None or scores.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise SaliencelabError(
            f"The black-box function returned {type(out).__name__}, not scores; it must return a "
            f"tensor or array of shape ({n}, classes) or ({n},)."
        )
    if scores.dim() == 1 and scores.shape[0] == n:
        scores = scores[:, None]
    if scores.dim() != 2 or scores.shape[0] != n or scores.shape[1] < 1:
        raise SaliencelabError(
            f"The black-box function returned shape {tuple(scores.shape)} for a batch of {n} "
            f"inputs; it must return scores of shape ({n}, classes) or ({n},)."
        )
    if not scores.is_floating_point():
        scores = scores.to(torch.get_default_dtype())
    return scores.to(device)


def _is_number(item: Any) -> bool:
    """A Python or NumPy number, or a 0-d array or tensor."""
    if isinstance(item, (numbers.Number, np.generic)):
        return True
    return isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 0


def _is_list_of_outputs(out: list[Any], n: int) -> bool:
    """Whether a list returned for a batch of `n` is a list of outputs whose first is the scores
    (ONNX Runtime's `run`: arrays) rather than the scores themselves (rows or numbers).

    Its first item must be an array or tensor; a 2-d or larger one is an output (a row is 1-d).
    A 1-d first item is a row when there are `n` items of one and the same 1-d shape (as
    `list(scores)` gives), else the scores (N,) of the first output."""
    first = out[0] if out else None
    if not isinstance(first, (np.ndarray, torch.Tensor)) or first.ndim == 0:
        return False
    if first.ndim >= 2:
        return True
    rows = len(out) == n and all(
        isinstance(item, (np.ndarray, torch.Tensor)) and tuple(item.shape) == tuple(first.shape)
        for item in out
    )
    return not rows


def _list_as_array(out: list[Any] | tuple[Any, ...], n: int) -> np.ndarray:
    """The scores in a list or tuple of rows or numbers (nested lists, NumPy scalars, 0-d or 1-d
    arrays or tensors) as one array; ragged rows are one sentence."""
    items = [
        item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item for item in out
    ]
    try:
        scores = np.asarray(items)
    except (TypeError, ValueError):  # NumPy ≥ 1.24: rows of different lengths
        scores = None
    if scores is None or scores.dtype == object:
        raise SaliencelabError(
            f"The black-box function returned a {type(out).__name__} whose rows differ in length "
            f"(or hold other things than numbers); it must return scores of shape ({n}, classes) "
            f"or ({n},), one row of numbers per input."
        )
    return scores


def blackbox(
    fn: Callable[[Any], Any],
    labels: Sequence[str] | None = None,
    *,
    numpy: bool = False,
    preprocess: Callable[[Any], torch.Tensor] | None = None,
    name: str = "blackbox",
    input_size: tuple[int, int] | None = None,
) -> Model:
    """A `sl.Model` around a callable batch → scores (N, classes) or (N,), for forward-only
    methods.

    Args:
        fn: called with each batch of (perturbed) inputs; returns their scores.
        labels: class names, index = class id.
        numpy: give `fn` NumPy arrays instead of torch tensors (e.g. ONNX Runtime).
        preprocess: turns images into the input batch (as for `sl.Model`).
        name: a short name for tables and file names.
        input_size: (H, W) the function expects, if fixed.
    """
    return Model(
        module=BlackBox(fn, numpy=numpy),
        preprocess=preprocess,
        labels=labels,
        name=name,
        input_size=input_size,
        extra={"blackbox": True},
    )


def is_blackbox(model: Model | nn.Module) -> bool:
    """Whether the model is a black-box function (forward only: no gradients, no layers)."""
    module = model.module if isinstance(model, Model) else model
    return isinstance(module, BlackBox)
