"""Errors a user can act on.

Every mistake a user can make (a bad file, an unknown layer, a target out of range) raises
:class:`SaliencelabError` with one sentence saying what was wrong and what to do. The CLI prints
that sentence and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SaliencelabError(ValueError):
    """A user-facing error: the message is one sentence, what was wrong and what to do."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """`" Did you mean: a, b?"` for the candidates closest to `name`, or `""` if none is close."""
    names = list(candidates)
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    if close:  # drop the far ones behind a near one ("tank" after "Egyptian cat")
        ratio = [difflib.SequenceMatcher(None, name, c).ratio() for c in close]
        close = [c for c, r in zip(close, ratio, strict=True) if r >= ratio[0] - 0.2]
    if not close:
        close = [c for c in names if name.lower() in c.lower()][:n]
    return f" Did you mean: {', '.join(close)}?" if close else ""
