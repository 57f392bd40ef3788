"""Checks of method options shared by several families (flags, numbers, blur σ; seeds are
`reference.check_seed`, counts `gradient.baselines.positive_int`), each failing in one sentence
that names the method and the option.

A flag given as a string ("no", "false") is refused rather than read by its truth value, which
would turn `absolute="no"` into `absolute=True`; the CLI already parses such words to bools.
A bool is never a number here (in Python `True == 1`): `p_keep=True` is refused, not run as 1.0.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np

from ..core.errors import SaliencelabError


def check_flag(value: Any, name: str, method: str) -> bool:
    """`value` as a bool if it is one (a Python or NumPy bool, or the integers 0 and 1)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if n in (0, 1):
        return bool(n)
    raise SaliencelabError(f"{method}: {name} must be True or False, got {value!r}.")


def is_number(value: Any) -> bool:
    """Whether `value` is a finite real number (a Python or NumPy int or float), not a bool."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
    )


def check_blur_sigma(value: Any, method: str) -> float:
    """`blur_sigma` (the "blur" baseline's σ in pixels) as a float if it is a finite number >= 0.

    Checked whether or not the baseline is "blur", as `seed` is checked whether or not a draw
    uses it: one set of options may serve several methods (the CLI's shared `--option`)."""
    if not is_number(value) or value < 0:
        raise SaliencelabError(
            f"{method}: blur_sigma must be a finite non-negative number of pixels, got {value!r}."
        )
    return float(value)
