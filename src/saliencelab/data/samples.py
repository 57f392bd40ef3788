"""Sample photographs bundled with scikit-image (no download needed)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from ..core.errors import SaliencelabError, closest


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


# Only photographs that ship inside the scikit-image wheel (some others need `pooch` + network).
_SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    name: _skimage(name)
    for name in (
        "astronaut",  # Eileen Collins, RGB
        "brick",  # gray
        "camera",  # cameraman, gray
        "chelsea",  # a tabby cat, RGB
        "clock",  # gray
        "coffee",  # a cup of espresso, RGB
        "coins",  # gray
        "grass",  # gray
        "gravel",  # gray
        "hubble_deep_field",  # RGB
        "immunohistochemistry",  # RGB
        "moon",  # gray
        "page",  # scanned text, gray
        "retina",  # RGB
        "rocket",  # RGB
        "text",  # gray
    )
}
_SAMPLES["motorcycle"] = _motorcycle  # left view of the stereo pair, RGB
#: Other names of the same photos (scikit-image's `cat` is `chelsea`): accepted, not listed.
_ALIASES = {"cat": "chelsea"}


def sample_images() -> list[str]:
    """The sample photos' names, each photo once, sorted (:func:`sample_image` also takes the
    aliases in `_ALIASES`)."""
    return sorted(_SAMPLES)


def is_sample_image(name: str) -> bool:
    """Whether :func:`sample_image` takes `name` (a listed name or an alias)."""
    return name in _SAMPLES or name in _ALIASES


def sample_image(name: str) -> Image.Image:
    """A sample photograph from scikit-image as an RGB PIL image (gray ones converted to RGB)."""
    name = _ALIASES.get(name, name)
    if name not in _SAMPLES:
        raise SaliencelabError(
            f"Unknown sample image {name!r}; pick one of {', '.join(sample_images())}."
            + closest(name, _SAMPLES)
        )
    return Image.fromarray(_SAMPLES[name]()).convert("RGB")
