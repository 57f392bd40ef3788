"""Option checks shared by every metric: one sentence naming the option, the metric and what to
give instead (raised as `SaliencelabError` when the metric is built or run)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.backward import compiled_kind
from ..core.engine import all_finite
from ..core.errors import SaliencelabError


def _listing(choices: tuple[object, ...]) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def check_choice(name: str, option: str, value: object, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else an error listing them."""
    if value not in choices:
        raise SaliencelabError(
            f"Unknown {option} {value!r} for {name} ({option} must be one of {len(choices)} "
            f"choices); use {_listing(choices)}."
        )
    return value  # type: ignore[return-value]


def check_positive(name: str, option: str, value: object, what: str = "") -> float:
    """`value` as a float if it is a finite number > 0; `what` says what the option means. (An
    infinite blur, noise or radius would fail far from the option, e.g. Python's OverflowError
    from the blur's kernel size, or silently give NaN scores.)"""
    meaning = f" ({what})" if what else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SaliencelabError(
            f"{option} must be a positive number{meaning} for {name}, got {value!r}."
        )
    if not math.isfinite(value):
        raise SaliencelabError(
            f"{option} must be a finite positive number{meaning} for {name}, got {value!r}."
        )
    return float(value)


def check_at_least(name: str, option: str, value: object, minimum: float, what: str = "") -> float:
    """`value` as a float if it is a finite number ≥ `minimum` (NaN and infinities refused: they
    would fail later, far from the option, or pass a comparison silently)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value >= minimum):  # type: ignore[arg-type]
        meaning = f" ({what})" if what else ""
        raise SaliencelabError(
            f"{option} must be a finite number ≥ {minimum:g}{meaning} for {name}, got {value!r}."
        )
    return float(value)  # type: ignore[arg-type]


def check_finite_tensor(name: str, option: str, value: object) -> None:
    """A number or tensor option holds no NaN or infinity (else the model's scores would be NaN,
    and the error would blame the model)."""
    if isinstance(value, torch.Tensor):
        finite = all_finite(value)
    else:
        finite = not isinstance(value, (int, float)) or math.isfinite(value)
    if not finite:
        raise SaliencelabError(
            f"The {option} of {name} must be finite, but it holds NaN or infinite values."
        )


def check_positive_int(
    name: str, option: str, value: object, what: str = "", minimum: int = 1
) -> int:
    """`value` if it is an integer ≥ `minimum` (1); `what` says what the option counts."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        meaning = f" ({what})" if what else ""
        kind = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise SaliencelabError(f"{option} must be {kind}{meaning} for {name}, got {value!r}.")
    return value


def check_range(name: str, option: str, value: object) -> tuple[float, float]:
    """`value` as (lo, hi) if it is two finite numbers with lo < hi."""
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise SaliencelabError(
            f"{option} of {name} must be two finite numbers (low, high) with low < high, "
            f"got {value!r}."
        )
    return lo, hi


def refuse_compiled_model(
    name: str,
    module: nn.Module,
    needs: str,
    kinds: tuple[str, ...] = ("TorchScript", "torch.export"),
) -> None:
    """One sentence where `module` is compiled (`core.backward.compiled_kind`, one of `kinds`)
    and the metric `name` `needs` its layers as Python modules (a hook on them, re-initialising
    them), which the compiled graph hides (was PyTorch's RuntimeError, or an error blaming the
    model's first layer)."""
    kind = compiled_kind(module)
    if kind in kinds:
        raise SaliencelabError(
            f"{name} {needs}, which a {kind} model does not allow; load the Python model "
            "(from 'file.py:build') to score it."
        )
