"""Checks of method options shared by several families (flags; seeds are `reference.check_seed`),
each failing in one sentence that names the method and the option.

A flag given as a string ("no", "false") is refused rather than read by its truth value, which
would turn `absolute="no"` into `absolute=True`; the CLI already parses such words to bools.
"""

from __future__ import annotations

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
