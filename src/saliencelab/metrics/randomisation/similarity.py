"""Similarity of two batches of saliency maps, as used by the sanity checks (Adebayo et al. 2018).

Every function takes two (B, H, W) batches and returns (B,) float64 similarities, computed in
torch on the maps' device, one per pair of maps:

- `spearman`: Spearman rank correlation of the pixel values (Pearson correlation of average
  ranks, ties averaged as in `scipy.stats.spearmanr`); `absolute=True` ranks |map| instead
  ("Spearman rank correlation with absolute value" of Adebayo et al.).
- `ssim`: structural similarity (Wang et al. 2004, "Image quality assessment: from error
  visibility to structural similarity"), Gaussian window 11 × 11 with σ = 1.5, K1 = 0.01,
  K2 = 0.03, on maps min-max normalised to [0, 1] per map (data range 1; a constant map becomes
  all zeros), averaged over the window positions that lie inside the map. Equals
  `skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)` on the normalised maps.
- `hog`: Pearson correlation of the histogram-of-oriented-gradients features (Dalal & Triggs
  2005) of the two min-max normalised maps; `hog_features` equals `skimage.feature.hog` with the
  same `orientations`, `pixels_per_cell`, `cells_per_block` and L2-Hys block normalisation.

Undefined values (a constant map in a correlation) are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ...core.errors import SaliencelabError, closest
from ..stats import pearson


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.dim() == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if b.dim() == 4 and b.shape[1] == 1:
        b = b[:, 0]
    if a.shape != b.shape or a.dim() != 3:
        raise SaliencelabError(
            f"Similarity needs two (B, H, W) batches of maps of the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    return a, b.to(a.device)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map rescaled to [0, 1] (float64); a constant map becomes all zeros."""
    m = maps.double()
    lo = m.amin(dim=(-2, -1), keepdim=True)
    span = m.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (m - lo) / span.clamp_min(1e-300), torch.zeros_like(m))


def _sort_rows(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted keys and their positions per row of a (B, N) tensor.

    float32 (and narrower) values are sorted as one flat int64 tensor of keys (row << 32 | the
    float's bits mapped to an order-preserving unsigned int): on CPU about 3× faster than a
    row-wise float sort. Equal keys ⇔ equal values (-0.0 is folded into +0.0 first).
    """
    b, n = values.shape
    if values.dtype not in (torch.float32, torch.float16, torch.bfloat16) or b * n == 0:
        return torch.sort(values, dim=-1)
    bits = (values.float() + 0.0).view(torch.int32).long()
    # negative floats: flip all bits but the sign, so signed int order = float order
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31
    rows = torch.arange(b, device=values.device, dtype=torch.long)[:, None] << 32
    keys, flat = torch.sort((rows | bits).flatten())
    order = flat.view(b, n) - torch.arange(b, device=values.device)[:, None] * n
    return keys.view(b, n), order


def _sorted_ranks(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, average rank of each sorted position, number of distinct values) per row."""
    s, order = _sort_rows(values)
    n = s.shape[-1]
    dtype = torch.float32 if n < 2**23 else torch.double  # ranks and half-ranks exact
    pos = torch.arange(1, n + 1, dtype=dtype, device=s.device).expand(s.shape)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[..., 1:] = s[..., 1:] != s[..., :-1]
    runs = starts.sum(-1)
    if bool((runs == n).all()):
        return order, pos, runs
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, pos, 0.0).cummax(-1).values
    last = torch.where(ends, pos, float(n + 1)).flip(-1).cummin(-1).values.flip(-1)
    return order, (first + last) / 2, runs


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last axis (1 = smallest), ties sharing their average rank, as float64.

    Same as `scipy.stats.rankdata` / `stats.ranks`, faster: one unstable sort (ties are averaged,
    so their order does not matter) and O(N) scans for the first / last position of each run.
    """
    order, avg, _ = _sorted_ranks(values)
    out = torch.empty(avg.shape, dtype=avg.dtype, device=avg.device).scatter_(-1, order, avg)
    return out.double()


def _spearman_to_ranks(ranks: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """`f(values)`: Spearman correlation of fixed (B, N) average `ranks` with each row of values.

    ρ = Σ (r_a − m)(r_b − m) / √(Σ (r_a − m)² Σ (r_b − m)²), m = (N + 1)/2 (the mean of average
    ranks, ties or not), evaluated in r_b's sorted order: no scatter of r_b back to pixels.
    """
    n = ranks.shape[-1]
    mean = (n + 1) / 2
    ra = ranks.double() - mean
    na = ra.square().sum(-1)

    def rho(values: torch.Tensor) -> torch.Tensor:
        order, avg, runs = _sorted_ranks(values)
        rb = avg.double() - mean
        num = (ra.gather(-1, order) * rb).sum(-1)
        den = (na * rb.square().sum(-1)).sqrt()
        ok = (den > 0) & (runs > 1) & (na > 0)
        return torch.where(ok, num / den.clamp_min(1e-300), torch.full_like(num, math.nan))

    return rho


def spearman(a: torch.Tensor, b: torch.Tensor, absolute: bool = False) -> torch.Tensor:
    """(B,) Spearman rank correlation of each pair of maps, of |maps| when `absolute`."""
    a, b = _pair(a, b)
    a, b = a.flatten(1), b.flatten(1)
    if absolute:
        a, b = a.abs(), b.abs()
    return pearson(average_ranks(a), average_ranks(b))


def spearman_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Spearman rank correlation of |a| and |b|."""
    return spearman(a, b, absolute=True)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.double, device=device) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    normalise: bool = True,
) -> torch.Tensor:
    """(B,) mean structural similarity of each pair of maps (Wang et al. 2004).

    SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)) with local
    Gaussian-weighted means, variances and covariance, C1 = (K1 L)², C2 = (K2 L)², L = 1 (the
    maps are min-max normalised to [0, 1] first unless `normalise=False`), averaged over the
    positions where the `window` × `window` window lies inside the map.
    """
    a, b = _pair(a, b)
    h, w = a.shape[-2:]
    if window % 2 == 0 or window < 1:
        raise SaliencelabError(f"The SSIM window must be an odd size, got {window}.")
    if min(h, w) < window:
        raise SaliencelabError(
            f"The maps are {h}×{w}, smaller than the {window}×{window} SSIM window; use larger "
            "maps or pass a smaller odd window (similarity_options={'window': 7})."
        )
    x = minmax(a) if normalise else a.double()
    y = minmax(b) if normalise else b.double()
    g = _gaussian_window(window, sigma, x.device)
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=1).reshape(-1, 1, h, w)
    # Separable 'valid' Gaussian filter: rows, then columns.
    f = F.conv2d(stack, g.view(1, 1, window, 1))
    f = F.conv2d(f, g.view(1, 1, 1, window))
    f = f.reshape(x.shape[0], 5, h - window + 1, w - window + 1)
    mx, my, mxx, myy, mxy = f.unbind(1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = k1**2, k2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(-2, -1))


def hog_features(
    maps: torch.Tensor,
    orientations: int = 9,
    cell: int = 8,
    block: int = 3,
    eps: float = 1e-5,
) -> torch.Tensor:
    """(B, F) HOG features of (B, H, W) maps, as `skimage.feature.hog` computes them.

    Central-difference gradients (zero on the border rows / columns), unsigned orientation in
    [0°, 180°) split into `orientations` bins, per `cell` × `cell` cell the magnitudes of each
    bin summed and divided by the cell's area, then for every `block` × `block` group of cells
    (stride one cell) the L2-Hys normalisation (L2, clip at 0.2, L2 again). Features are ordered
    (block row, block column, cell row, cell column, orientation) like skimage's.
    """
    m = maps.double()
    if m.dim() != 3:
        raise SaliencelabError(f"HOG needs (B, H, W) maps, got shape {tuple(maps.shape)}.")
    n, h, w = m.shape
    ncr, ncc = h // cell, w // cell
    if ncr < block or ncc < block:
        raise SaliencelabError(
            f"The maps are {h}×{w}, too small for HOG blocks of {block}×{block} cells of {cell} "
            "pixels; pass smaller cells or blocks (similarity_options={'cell': 4, 'block': 2})."
        )
    g_row = torch.zeros_like(m)
    g_col = torch.zeros_like(m)
    g_row[:, 1:-1, :] = m[:, 2:, :] - m[:, :-2, :]
    g_col[:, :, 1:-1] = m[:, :, 2:] - m[:, :, :-2]
    g_row = g_row[:, : ncr * cell, : ncc * cell]
    g_col = g_col[:, : ncr * cell, : ncc * cell]
    magnitude = torch.hypot(g_row, g_col)
    orientation = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    # Bin i holds edges[i] <= o < edges[i + 1], the edges computed as skimage computes them.
    edges = (180.0 / orientations) * torch.arange(
        orientations + 1, dtype=torch.double, device=m.device
    )
    bins = torch.searchsorted(edges, orientation.contiguous(), right=True) - 1
    inside = (bins >= 0) & (bins < orientations)
    rows = torch.arange(ncr * cell, device=m.device) // cell
    cols = torch.arange(ncc * cell, device=m.device) // cell
    cell_id = (rows[:, None] * ncc + cols[None, :]).expand_as(bins)
    index = (cell_id * orientations + bins.clamp(0, orientations - 1)).flatten(1)
    hist = torch.zeros(n, ncr * ncc * orientations, dtype=torch.double, device=m.device)
    hist.scatter_add_(1, index, torch.where(inside, magnitude, 0.0).flatten(1))
    hist = hist.view(n, ncr, ncc, orientations) / (cell * cell)
    # Blocks: (n, nbr, nbc, block, block, orientations).
    blocks = hist.unfold(1, block, 1).unfold(2, block, 1).permute(0, 1, 2, 4, 5, 3)
    flat = blocks.reshape(*blocks.shape[:3], -1)
    out = flat / torch.sqrt(flat.square().sum(-1, keepdim=True) + eps**2)
    out = out.clamp(max=0.2)
    out = out / torch.sqrt(out.square().sum(-1, keepdim=True) + eps**2)
    return out.flatten(1)


def hog(
    a: torch.Tensor,
    b: torch.Tensor,
    orientations: int = 9,
    cell: int = 8,
    block: int = 3,
    normalise: bool = True,
) -> torch.Tensor:
    """(B,) Pearson correlation of the HOG features of each pair of (min-max normalised) maps."""
    a, b = _pair(a, b)
    if normalise:
        a, b = minmax(a), minmax(b)
    fa = hog_features(a, orientations, cell, block)
    fb = hog_features(b, orientations, cell, block)
    return pearson(fa, fb)


SIMILARITIES: dict[str, Callable[..., torch.Tensor]] = {
    "spearman": spearman,
    "spearman_abs": spearman_abs,
    "ssim": ssim,
    "hog": hog,
}


def check_similarity(name: str) -> None:
    """One clear sentence when `name` is not a known similarity."""
    if name not in SIMILARITIES:
        raise SaliencelabError(
            f"Unknown similarity {name!r}; pick one of {', '.join(SIMILARITIES)}."
            f"{closest(name, SIMILARITIES)}"
        )


def similarity(
    name: str, a: torch.Tensor, b: torch.Tensor, options: dict[str, Any] | None = None
) -> torch.Tensor:
    """(B,) similarity `name` ("spearman", "spearman_abs", "ssim", "hog") of two map batches."""
    return similarity_to(name, a, options)(b)


def similarity_to(
    name: str, a: torch.Tensor, options: dict[str, Any] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`f(b)` = similarity `name` of the fixed maps `a` to maps `b`, (B,).

    What depends on `a` alone (its ranks, normalised map, HOG features) is computed once, so
    comparing one original explanation with many recomputed ones costs half. The options are
    checked here, on the first map, so a bad option fails before any model pass.
    """
    check_similarity(name)
    opts = dict(options or {})
    fn = SIMILARITIES[name]
    try:
        fn(a[:1], a[:1], **opts)
    except TypeError as e:
        raise SaliencelabError(
            f"Bad similarity_options for {name!r} ({e}); see the options of "
            f"saliencelab.metrics.randomisation.similarity.{fn.__name__}."
        ) from None
    a = a[:, 0] if a.dim() == 4 and a.shape[1] == 1 else a
    if name in ("spearman", "spearman_abs"):
        absolute = name == "spearman_abs" or bool(opts.get("absolute", False))
        flat = a.flatten(1)
        rho = _spearman_to_ranks(average_ranks(flat.abs() if absolute else flat))

        def spearman_to(b: torch.Tensor) -> torch.Tensor:
            _, b = _pair(a, b)
            fb = b.flatten(1)
            return rho(fb.abs() if absolute else fb)

        return spearman_to
    if name == "hog":
        normalise = opts.pop("normalise", True)
        fa = hog_features(minmax(a) if normalise else a, **opts)

        def hog_to(b: torch.Tensor) -> torch.Tensor:
            _, b = _pair(a, b)
            return pearson(fa, hog_features(minmax(b) if normalise else b, **opts))

        return hog_to
    return lambda b: fn(a, b, **opts)
