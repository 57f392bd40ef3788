"""Class names shipped with the package."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def _read_labels(filename: str) -> tuple[str, ...]:
    text = files("saliencelab.data").joinpath(filename).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (0 "tench" ... 999 "toilet tissue").

    The usual WordNet-derived short names; two are repeated ("crane" 134/517, "maillot" 638/639).
    """
    return list(_read_labels("imagenet_classes.txt"))
