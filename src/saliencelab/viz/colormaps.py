"""Colour maps as (256, 3) uint8 lookup tables, built by interpolating a few anchor colours.

- ``"heat"``: sequential, for unsigned maps. Black → purple → red → orange → pale yellow, with
  luminance rising monotonically, so "brighter" always means "more".
- ``"diverging"``: for signed maps. Blue (negative) → white (zero) → red (positive); both middle
  entries (127 and 128) are pure white, so a value of exactly 0 is white whichever way it rounds.
- ``"gray"``: black → white.
- ``"purples"``: sequential, white (0) → deep purple, for unsigned scores drawn as backgrounds on a
  white page (the words of texts), where "heat"'s black zero would hide them and the diverging
  map's red would read as "raises the score".
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from ..core.errors import SaliencelabError, closest

# Anchor colours (sRGB), evenly spaced from the low end to the high end.
_HEAT = [
    (0, 0, 4),
    (30, 12, 69),
    (85, 15, 109),
    (136, 34, 106),
    (186, 54, 85),
    (227, 89, 51),
    (249, 140, 10),
    (249, 201, 50),
    (252, 255, 164),
]
_BLUES = [(5, 48, 97), (33, 102, 172), (103, 169, 207), (209, 229, 240), (255, 255, 255)]
_REDS = [(255, 255, 255), (253, 219, 199), (239, 138, 98), (178, 24, 43), (103, 0, 31)]
_GRAY = [(0, 0, 0), (255, 255, 255)]
_PURPLES = [(255, 255, 255), (218, 218, 235), (158, 154, 200), (106, 81, 163), (63, 0, 125)]

#: Colour map names, and whether each expects values in [-1, 1] (True) or [0, 1] (False).
COLORMAPS: dict[str, bool] = {"heat": False, "diverging": True, "gray": False, "purples": False}


def _ramp(anchors: list[tuple[int, int, int]], n: int) -> np.ndarray:
    """`n` colours linearly interpolated through evenly spaced `anchors`, as float (n, 3)."""
    a = np.asarray(anchors, dtype=np.float64)
    at = np.linspace(0.0, 1.0, len(a))
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, at, a[:, c]) for c in range(3)], axis=1)


@cache
def _table(name: str) -> np.ndarray:
    if name == "heat":
        lut = _ramp(_HEAT, 256)
    elif name == "diverging":
        lut = np.concatenate([_ramp(_BLUES, 128), _ramp(_REDS, 128)])
    elif name == "gray":
        lut = _ramp(_GRAY, 256)
    elif name == "purples":
        lut = _ramp(_PURPLES, 256)
    else:  # pragma: no cover - guarded by colormap()
        raise KeyError(name)
    lut = np.clip(np.rint(lut), 0, 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def colormap(name: str) -> np.ndarray:
    """The (256, 3) uint8 lookup table of colour map `name` (read-only)."""
    if name not in COLORMAPS:
        raise SaliencelabError(
            f"Unknown colour map {name!r}; use one of {', '.join(COLORMAPS)}."
            f"{closest(name, COLORMAPS)}"
        )
    return _table(name)


def apply_colormap(values: torch.Tensor | np.ndarray, name: str = "heat") -> np.ndarray:
    """Colour `values` with colour map `name`; returns uint8 (..., 3), e.g. (H, W, 3).

    Values are expected in [0, 1] for "heat", "gray" and "purples" and in [-1, 1] for "diverging"
    (normalise with :func:`saliencelab.viz.normalize_map` first); anything outside is clipped and
    NaN is drawn as the low end (or white, for "diverging").
    """
    lut = colormap(name)
    if isinstance(values, torch.Tensor):
        v = values.detach().to("cpu", torch.float32).numpy()
    else:
        v = np.asarray(values, dtype=np.float32)
    if COLORMAPS[name]:
        v = (v + 1.0) * 0.5
    v = np.clip(np.nan_to_num(v, nan=0.5 if COLORMAPS[name] else 0.0), 0.0, 1.0)
    index = np.floor(v * 255.0 + 0.5).astype(np.intp)
    return lut[index]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Relative luminance (0..1, Rec. 709 on linearised sRGB) of uint8 colours (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])
