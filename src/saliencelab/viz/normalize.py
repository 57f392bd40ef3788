"""Normalising raw maps for display. Maps themselves stay raw; this is a separate, per-map step."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ..core.errors import SaliencelabError


def _native_array(map: np.ndarray) -> np.ndarray:
    """`map` as a native-endian, contiguous array torch can take: long doubles and object arrays
    of numbers become float64, a flipped (negative-stride) or big-endian array a copy."""
    if map.dtype == object:
        try:
            map = np.asarray(map, dtype=np.float64)
        except (TypeError, ValueError):
            raise SaliencelabError(
                "The map is a NumPy object array whose items are not all numbers; "
                "pass a numeric (H, W) array, e.g. `np.asarray(map, dtype=np.float32)`."
            ) from None
    elif map.dtype.kind == "f" and map.dtype.itemsize > 8:  # long double: torch has none
        map = map.astype(np.float64)
    elif map.dtype.kind == "c" and map.dtype.itemsize > 16:
        map = map.astype(np.complex128)
    if not map.dtype.isnative:
        map = map.astype(map.dtype.newbyteorder("="))
    return np.ascontiguousarray(map)


def _as_tensor(map: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The map as a float tensor: float64 stays float64 (a map scaled by 1e-50 or 1e39 must not
    underflow to 0 or overflow to inf in float32), anything else becomes float32."""
    if isinstance(map, np.ndarray):
        map = torch.from_numpy(_native_array(map))
    if not isinstance(map, torch.Tensor):
        raise SaliencelabError(
            f"Expected a saliency map as a tensor or array, got {type(map).__name__}; "
            "pass `attribution.maps` or an (H, W) array."
        )
    map = map.detach()
    return map if map.dtype == torch.float64 else map.float()


def _real_number(value: object) -> float | None:
    """`value` as a float when it is a real number (Python, NumPy or a one-element real tensor)
    and not a bool, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        return float(value.detach().reshape(()).item())
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
        if isinstance(value, np.bool_):
            return None
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The `q`-th percentile (0..100, linear interpolation) of each row of a (B, N) tensor."""
    s, _ = torch.sort(x, dim=1)
    pos = torch.tensor(q / 100.0 * (s.shape[1] - 1))
    lo = int(pos.floor())
    hi = min(lo + 1, s.shape[1] - 1)
    frac = float(pos - lo)
    return s[:, lo] * (1.0 - frac) + s[:, hi] * frac


def normalize_map(
    map: torch.Tensor | np.ndarray,
    signed: bool,
    clip_percentile: float | None = 99.5,
) -> torch.Tensor:
    """Scale each (H, W) map for display, returning a float tensor of the same shape.

    - unsigned: values above the `clip_percentile`-th percentile are clipped, then min-max scaled
      to [0, 1];
    - signed: divided by the `clip_percentile`-th percentile of |values| and clipped to [-1, 1],
      so 0 stays 0 (drawn white) and positive and negative evidence share one scale.

    `clip_percentile=None` uses the maximum, and so does a map whose percentile leaves no
    contrast (fewer than 100 − `clip_percentile` % of its pixels above its minimum, e.g. a 4×4
    watermark on a 64×64 map): it is drawn, not taken for a constant one. Never NaN: constant
    maps (all-zero or not, signed or not) become zeros, so a map without contrast is drawn as the
    bare photo and never as a strong one, and NaN values are treated as 0.
    """
    m = _as_tensor(map)
    if m.ndim not in (2, 3):
        raise SaliencelabError(
            f"Expected a map of shape (H, W) or (B, H, W), got shape {tuple(m.shape)}; "
            "pass one map or a batch of maps."
        )
    if m.numel() == 0:
        raise SaliencelabError(f"The map of shape {tuple(m.shape)} is empty; pass a non-empty map.")
    if clip_percentile is not None:
        q = _real_number(clip_percentile)
        if q is None or not 0.0 < q <= 100.0:
            raise SaliencelabError(
                f"clip_percentile must be a number in (0, 100], got {clip_percentile!r}; "
                "use e.g. 99.5 or None."
            )
        clip_percentile = q
    shape = m.shape
    flat = torch.nan_to_num(m.reshape(-1, shape[-2] * shape[-1]), nan=0.0)
    q = 100.0 if clip_percentile is None else float(clip_percentile)
    if signed:
        # A constant map has no contrast: zero its scale (a constant -3 used to become -1
        # everywhere, a full-strength blue over the whole photo).
        constant = (flat == flat[:, :1]).all(dim=1, keepdim=True)
        size = flat.abs()
        scale = percentile(size, q).unsqueeze(1)
        scale = torch.where(scale > 0, scale, size.amax(dim=1, keepdim=True))  # sparse maps
        scale = scale.masked_fill(constant, 0.0)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        out = torch.where(scale > 0, flat / safe, torch.zeros_like(flat)).clamp(-1.0, 1.0)
    else:
        lo = flat.amin(dim=1, keepdim=True)
        hi = percentile(flat, q).unsqueeze(1)
        hi = torch.where(hi > lo, hi, flat.amax(dim=1, keepdim=True))  # sparse maps: the max
        clipped = torch.minimum(flat, hi)
        span = hi - lo
        safe = torch.where(span > 0, span, torch.ones_like(span))
        out = torch.where(span > 0, (clipped - lo) / safe, torch.zeros_like(flat)).clamp(0.0, 1.0)
    # computed in float64 for float64 maps (any scale); values in [-1, 1] fit float32
    return out.reshape(shape).float()
