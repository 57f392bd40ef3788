"""Similarity of two batches of saliency maps, as used by the sanity checks (Adebayo et al. 2018).

Every function takes two (B, H, W) batches and returns (B,) float64 similarities, computed in
torch on the maps' device (Spearman's sort in NumPy on the CPU, its ties in NumPy on any device:
`metrics/stats.py`), one per pair of maps:

- `spearman`: Spearman rank correlation of the pixel values (Pearson correlation of average
  ranks, ties averaged as in `scipy.stats.spearmanr`); `absolute=True` ranks |map| instead
  ("Spearman rank correlation with absolute value" of Adebayo et al.).
- `ssim`: structural similarity (Wang et al. 2004, "Image quality assessment: from error
  visibility to structural similarity"), Gaussian window 11 × 11 with σ = 1.5, K1 = 0.01,
  K2 = 0.03, on maps min-max normalised to [0, 1] per map (data range 1), averaged over the
  window positions that lie inside the map. For non-constant maps it equals
  `skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)` on the normalised maps (to ~1e-12 for float64 maps; float32
  maps are compared in float32, to ~1e-7 of that, see `_ssim_to`); a constant map follows the
  convention below instead.
- `hog`: Pearson correlation of the histogram-of-oriented-gradients features (Dalal & Triggs
  2005) of the two min-max normalised maps; `hog_features` equals `skimage.feature.hog` with the
  same `orientations`, `pixels_per_cell`, `cells_per_block` and L2-Hys block normalisation, but
  for a gradient whose angle falls on a bin edge: torch's `atan2` and NumPy's can round it to
  either side (torch gives 44.99999999999999° where NumPy gives 45°), which moves its magnitude
  to the next bin. Maps of a few levels have such gradients; with `orientations=4` or 8 (edges
  at multiples of 45°) the HOG similarity of 4-level maps then differed from skimage's by up to
  0.1; with the default 9 (edges at multiples of 20°) by 3e-8.

Constant maps. A rank or HOG correlation involving a constant map is 0/0 (SciPy and Quantus
give NaN). Here it is defined, so that a sanity check counts every sample: a constant map has no
ranking (every pixel tied), no gradients (its HOG features are all zero) and no contrast (SSIM's
σ = 0), so it carries none of the other map's structure: its similarity to a non-constant map
is 0. Two constant maps are the same map once ranked or normalised (all tied, all zero, and a
similarity must give sim(a, a) = 1), so theirs is 1: an explanation that is flat before and
after randomisation did not change. One rule for every similarity (`_flat_rule`): 0 when
exactly one of the two maps is constant (|map| for `spearman_abs`; max = min exactly, before
any normalisation), 1 when both are, the similarity's own value otherwise. For the
correlations ρ = s_ab / √(s_aa s_bb) of ranks (Spearman) or HOG features, "constant" is
s_aa = 0 (`_correlation`). SSIM needs the rule too: min-max normalisation makes a constant map
all zeros, and SSIM's luminance term alone then rated it ~0.95 similar to a sparse map (mostly
zeros; a map that went flat looked unchanged) and ~0 to a smooth ramp. Without the rule, MPRT
skipped the samples whose randomised Grad-CAM went flat (NaN) and reported the mean of the
others (Grad-CAM looked less sensitive to randomisation than it is).

Maps holding NaN or infinite values (a method that failed on a randomised model, e.g. one that
divides by a map's maximum) have no similarity: NaN, left out of the mean and of n
(`similarity_to`). Ranked or normalised as they were, they scored 0 or 1 ("changed
completely", or "not at all") for Spearman and HOG.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...core.errors import SaliencelabError, closest
from ...core.requests import check_options
from ..stats import (
    float_keys,
    keyed,
    ranks,
    sort_rows,
    sorted_key_halves,
    tied_from_sorted,
    tied_positions,
)


def _pair(
    a: torch.Tensor, b: torch.Tensor, stacked: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) as (B, H, W) batches on a's device; `stacked`: b may hold K batches (K·B maps)."""
    if a.dim() == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if b.dim() == 4 and b.shape[1] == 1:
        b = b[:, 0]
    same = a.shape == b.shape or (
        stacked and a.shape[1:] == b.shape[1:] and a.shape[0] and b.shape[0] % a.shape[0] == 0
    )
    if not same or a.dim() != 3:
        raise SaliencelabError(
            f"Similarity needs two (B, H, W) batches of maps of the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    return a, b.to(a.device)


def check_image_maps(metric: str, maps: torch.Tensor) -> None:
    """One sentence unless `maps` are (B, H, W) image maps ((B, 1, H, W) squeezed): the
    similarities compare 2-D maps, so tabular (B, F) and text (B, W) maps are refused before
    any model work."""
    if maps.dim() != 3 and not (maps.dim() == 4 and maps.shape[1] == 1):
        raise SaliencelabError(
            f"The metric {metric} compares (B, H, W) image maps, not maps of shape "
            f"{tuple(maps.shape)}; it does not score tabular or text maps."
        )


def check_similarity_fits(
    metric: str, name: str, options: dict[str, Any] | None, maps: torch.Tensor
) -> None:
    """One sentence unless `maps` are image maps the similarity `name` with `options` can
    compare (an SSIM window or HOG blocks no larger than the maps): what `sl.evaluate` checks
    before any model work. Prepares the similarity of one map, so it costs next to nothing."""
    check_image_maps(metric, maps)
    similarity_to(name, maps[:1], options)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map rescaled to [0, 1] (float64); a constant map becomes all zeros."""
    m = maps.double()
    lo = m.amin(dim=(-2, -1), keepdim=True)
    span = m.amax(dim=(-2, -1), keepdim=True) - lo
    # a constant map divides its zeros by infinity: one pass over the maps, no torch.where
    span = torch.where(span > 0, span.clamp_min(1e-300), math.inf)
    return (m - lo).div_(span)


def _flat_rule(value: torch.Tensor, flat_a: torch.Tensor, flat_b: torch.Tensor) -> torch.Tensor:
    """`value` with the convention for constant maps (module docstring): 0 where exactly one of
    `flat_a`, `flat_b` (bool, the map is constant) holds, 1 where both do."""
    return torch.where(flat_a | flat_b, (flat_a & flat_b).to(value.dtype), value)


def _correlation(num: torch.Tensor, na: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
    """num / √(na · nb), the correlation from the centred cross sum `num` and the centred sums
    of squares `na`, `nb` (≥ 0), with the convention for constant sides (`_flat_rule`; a side is
    constant when its sum of squares is 0): 0 when exactly one of na, nb is 0, 1 when both are."""
    den = (na * nb).sqrt()
    rho = torch.where(den > 0, num / den.clamp_min(1e-300), 0.0).clamp_(-1.0, 1.0)  # rounding
    return _flat_rule(rho, na == 0, nb == 0)


def _spearman_to(a: torch.Tensor, absolute: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """`f(values)`: Spearman correlation of the fixed (B, N) rows `a` (of |a| when `absolute`)
    with each row of values ((K·B, N): row i with row i mod B of `a`).

    ρ = Σ (r_a − m)(r_b − m) / √(Σ (r_a − m)² Σ (r_b − m)²) with average ranks, m = (N + 1)/2
    (the mean of average ranks, ties or not), evaluated in b's sorted order (no scatter of r_b
    back to pixels): the sums without ties (r_b = p + 1 at sorted position p) plus a correction
    at the few tied positions, where r_b = p + 1 + s with s = the run's mean position − p:
    Σ g_p (r_b − m) = Σ g_p (p + 1 − m) + Σ_tied g_p s_p, g = r_a − m in b's order, and, as
    Σ s_p (p + 1 − m) = −Σ s_p² over every run, Σ (r_b − m)² = Σ (p + 1 − m)² − Σ_tied s_p².
    Every term is a multiple of 1/4 below 2⁵¹, so all sums are exact in float64 (na, nb are 0
    exactly for a constant map: ρ is then 0, or 1 against another constant map; `_correlation`).

    On the CPU, float32 (and narrower) values are sorted as int64 keys whose low half carries
    2 r_a of the pixel (`stats.float_keys`), so the sort itself puts r_a in b's order (no
    gather) and Σ g_p (p + 1 − m) = Σ 2r_a,p (2p + 1 − N) / 4 is one integer-valued dot product
    (32 × 64² maps, one thread: 1.5× faster than sorting positions and gathering r_a).
    """
    b, n = a.shape
    mean = (n + 1) / 2
    centred = torch.arange(1, n + 1, dtype=torch.double, device=a.device) - mean  # no ties
    nc = float(centred.square().sum())
    if keyed(a):
        # 2 r_a per pixel (integers; int32), from one sort of keys carrying the positions
        keys = float_keys(a, absolute=absolute)
        keys.sort(axis=-1)
        high, low = sorted_key_halves(keys)
        tied, shift = tied_from_sorted(high)
        twice_sorted = np.tile(np.arange(2, 2 * n + 1, 2, dtype=np.int32), (b, 1))
        twice_sorted.reshape(-1)[tied] += (2 * shift).astype(np.int32)
        order = torch.from_numpy(keys & 0xFFFFFFFF)  # torch's scatter: 5× NumPy's
        twice_t = torch.empty(order.shape, dtype=torch.int32)
        twice = twice_t.scatter_(-1, order, torch.from_numpy(twice_sorted)).numpy()
        # Σ (r_a − m)² = Σ (p + 1 − m)² − Σ_tied s² (the identity used for nb below)
        na_np = np.full(b, nc) - np.bincount(tied // n, weights=shift * shift, minlength=b)
        na = torch.from_numpy(na_np)
        ra = None
    else:
        ra = ranks(a.abs() if absolute else a).double() - mean
        na = ra.square().sum(-1)
        twice = None

    def rho(values: torch.Tensor) -> torch.Tensor:
        nonlocal ra
        rows = values.shape[0]
        k = rows // max(b, 1)  # batches stacked
        if twice is not None and keyed(values):
            keys = float_keys(values, low=twice, absolute=absolute)
            keys.sort(axis=-1)
            high, low = sorted_key_halves(keys)
            weights = np.arange(1 - n, n + 1, 2, dtype=np.float64)  # 2p + 1 − N
            num_np = (low @ weights) / 4  # int32 @ float64: exact integer sums, then / 4
            nb_np = np.full(rows, nc)
            tied, shift = tied_from_sorted(high)
            if tied.size:
                row = tied // n
                g = low[row, tied % n] / 2 - mean
                num_np += np.bincount(row, weights=g * shift, minlength=rows)
                nb_np -= np.bincount(row, weights=shift * shift, minlength=rows)
            num, nb = torch.from_numpy(num_np), torch.from_numpy(nb_np)
        else:
            if ra is None:
                ra = torch.from_numpy(twice / 2 - mean).to(a.device)
            if absolute:
                values = values.abs()
            order, starts = sort_rows(values)
            g = ra.expand(k, b, n).gather(-1, order.view(k, b, n)).view(rows, n)
            num = g @ centred
            nb = torch.full((rows,), nc, dtype=torch.double, device=g.device)
            flat, shift = tied_positions(starts)
            if flat.numel():
                row = flat // n
                num.index_add_(0, row, g.view(-1)[flat] * shift)
                nb.index_add_(0, row, shift.square(), alpha=-1)
        return _correlation(num, na.to(num.device).repeat(k), nb)

    return rho


def spearman(a: torch.Tensor, b: torch.Tensor, absolute: bool = False) -> torch.Tensor:
    """(B,) Spearman rank correlation of each pair of maps, of |maps| when `absolute`; a
    constant map (|map| when `absolute`) gives 0, two constant maps 1 (see the module
    docstring; SciPy gives NaN)."""
    a, b = _pair(a, b)
    return _spearman_to(a.flatten(1), absolute)(b.flatten(1))


def spearman_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Spearman rank correlation of |a| and |b| (0 where one |map| is constant, 1 where
    both are)."""
    return spearman(a, b, absolute=True)


def _gaussian_taps(size: int, sigma: float) -> list[float]:
    """The `size` weights of a normalised Gaussian of standard deviation `sigma`, centred."""
    w = [math.exp(-0.5 * ((i - (size - 1) / 2) / sigma) ** 2) for i in range(size)]
    return [v / math.fsum(w) for v in w]


def _valid_filter(maps: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """The separable filter `taps` ⊗ `taps` over (N, H, W) maps at the positions where it lies
    inside ('valid'): (N, H − k + 1, W − k + 1). float32 on the CPU: two depthwise convolutions
    (a row of taps, then a column; 10-25% faster than the slices on 64² and 224² maps);
    otherwise k shifted-slice multiply-adds per axis (on the CPU in float64 about 1.5× faster
    than F.conv2d on 64² maps and 19× on 224² maps; on a GPU exact float32, where a cuDNN
    convolution may round its inputs to TF32).
    """
    k = len(taps)
    if maps.dtype == torch.float32 and maps.device.type == "cpu" and maps.shape[0]:
        n = maps.shape[0]
        row = torch.tensor(taps, dtype=maps.dtype, device=maps.device).expand(n, 1, 1, k)
        out = torch.nn.functional.conv2d(maps[None], row, groups=n)
        return torch.nn.functional.conv2d(out, row.transpose(-1, -2), groups=n)[0]
    oh, ow = maps.shape[-2] - k + 1, maps.shape[-1] - k + 1
    rows = maps[:, :oh] * taps[0]
    for i in range(1, k):
        rows.add_(maps[:, i : i + oh], alpha=taps[i])
    out = rows[..., :ow] * taps[0]
    for i in range(1, k):
        out.add_(rows[..., i : i + ow], alpha=taps[i])
    return out


def _anchored(
    maps: torch.Tensor, normalise: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(v, offset, flat) with v + offset = the maps as SSIM sees them (min-max normalised when
    `normalise`), v = 0 where the map is 0 (or, for a map that does not cross 0, at its value
    nearest 0), and flat (N,) whether each map is constant. SSIM's variances and covariance do
    not change under the shift, and computed from v they lose nothing to cancellation where
    maps are flat at 0: in float32 the values then agree with float64 to ~1e-7 on signed maps
    too (~1e-6 from unshifted maps)."""
    m = maps.to(dtype)
    lo = m.amin(dim=(-2, -1), keepdim=True)
    hi = m.amax(dim=(-2, -1), keepdim=True)
    flat = (hi == lo).view(-1)
    zero = torch.minimum(torch.maximum(lo, torch.zeros_like(lo)), hi)
    if not normalise:
        return m - zero, zero, flat
    span = hi - lo
    span = torch.where(span > 0, span, math.inf)  # a constant map becomes all zeros
    return (m - zero) / span, (zero - lo) / span, flat


def _ssim_to(
    a: torch.Tensor,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    normalise: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`f(b)` = `ssim(a, b, ...)` (b may hold K batches stacked), with a's local statistics
    computed once: the first call filters the 5 maps of each pair (x, x², y, y², xy) in one go,
    later calls 3 (y, y², xy). A pair with a constant map gets `_flat_rule`'s 0 or 1.

    float32 (and narrower) maps are compared in float32, the mean over the windows taken in
    float64 (one call on 8 × 64² maps: ~1.6× faster than in float64). Against float64 it agrees
    to ≤ 3e-7 on saliency, Grad-CAM, integrated-gradients and random maps (those of
    randomised models included), ~1e-5 on contrived maps flat far from their zero (see
    `_anchored` and tests/metrics/test_randomisation.py). float64 maps are compared in float64.
    """
    h, w = a.shape[-2:]
    if window % 2 == 0 or window < 1:
        raise SaliencelabError(f"The SSIM window must be an odd size, got {window}.")
    if min(h, w) < window:
        raise SaliencelabError(
            f"The maps are {h}×{w}, smaller than the {window}×{window} SSIM window; use larger "
            "maps or pass a smaller odd window (similarity_options={'window': 7})."
        )
    taps = _gaussian_taps(window, sigma)
    n, oh, ow = a.shape[0], h - window + 1, w - window + 1
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    x, x_offset, flat_x = _anchored(a, normalise, dtype)
    kept: list[torch.Tensor] = []  # a's local statistics (see below)
    c1, c2 = k1**2, k2**2

    def ssim_to(b: torch.Tensor) -> torch.Tensor:
        _, b = _pair(a, b, stacked=True)
        k = b.shape[0] // max(n, 1)  # batches stacked
        y, y_offset, flat_y = _anchored(b, normalise, dtype)
        # The maps to filter, (x, x² once,) then y, y², xy of each pair.
        fresh = not kept
        first = 2 * n if fresh else 0
        stack = torch.empty(first + 3 * k * n, h, w, dtype=dtype, device=y.device)
        if fresh:
            torch.stack([x, x * x], 1, out=stack[:first].view(n, 2, h, w))
        parts = stack[first:].view(k, n, 3, h, w)
        parts[:, :, 0] = y.view(k, n, h, w)
        torch.mul(parts[:, :, 0], parts[:, :, 0], out=parts[:, :, 1])
        torch.mul(parts[:, :, 0], x, out=parts[:, :, 2])
        means = _valid_filter(stack, taps)
        if fresh:  # x's mean (shifted and not), 2 μx, μx² + C1 and σx² + C2
            mx, mxx = means[:first].view(n, 2, oh, ow).unbind(1)
            mean_x = mx + x_offset
            kept.extend([mx, 2 * mean_x, mean_x.square().add_(c1), (mxx - mx * mx).add_(c2)])
        mx, two_mean_x, lum_x, con_x = kept
        my, myy, mxy = means[first:].view(k, n, 3, oh, ow).unbind(2)
        mean_y = my + y_offset.view(k, n, 1, 1)
        luminance = (two_mean_x * mean_y).add_(c1).div_(torch.addcmul(lum_x, mean_y, mean_y))
        variance_y = torch.addcmul(myy, my, my, value=-1)
        contrast = torch.addcmul(mxy, mx, my, value=-1).mul_(2).add_(c2)  # 2 σxy + C2
        contrast.div_(variance_y.add_(con_x))
        value = luminance.mul_(contrast).mean(dim=(-2, -1), dtype=torch.float64).view(-1)
        # SSIM ≤ 1 (= 1 for equal maps), which float32 rounding may pass by ~1e-8
        return _flat_rule(value.clamp_(-1.0, 1.0), flat_x.repeat(k), flat_y)

    return ssim_to


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
    positions where the `window` × `window` window lies inside the map. A constant map's
    similarity to a non-constant map is 0, two constant maps' 1 (module docstring; normalised,
    a constant map would be all zeros, rated ~1 similar to a sparse map by luminance alone).
    """
    a, b = _pair(a, b)
    return _ssim_to(a, window, sigma, k1, k2, normalise)(b)


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
    """(B,) Pearson correlation of the HOG features of each pair of (min-max normalised) maps.

    A constant map has all-zero features: its similarity to a non-constant map is 0, to another
    constant map 1 (see the module docstring; NumPy's corrcoef gives NaN)."""
    a, b = _pair(a, b)
    if normalise:
        a, b = minmax(a), minmax(b)
    fa = hog_features(a, orientations, cell, block)
    fb = hog_features(b, orientations, cell, block)
    return _feature_correlation(fa, fb)


def _feature_correlation(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the rows of two (N, F) feature batches, `_correlation`'s
    convention where a row is constant."""
    fa = fa - fa.mean(-1, keepdim=True)
    fb = fb - fb.mean(-1, keepdim=True)
    return _correlation((fa * fb).sum(-1), fa.square().sum(-1), fb.square().sum(-1))


SIMILARITIES: dict[str, Callable[..., torch.Tensor]] = {
    "spearman": spearman,
    "spearman_abs": spearman_abs,
    "ssim": ssim,
    "hog": hog,
}


_SIGNATURES = {name: inspect.signature(fn) for name, fn in SIMILARITIES.items()}


def check_similarity(name: str, options: dict[str, Any] | None = None) -> None:
    """One clear sentence when `name` is not a known similarity or `options` are not its
    keyword options (an even SSIM window too): what a metric checks when it is built."""
    if name not in SIMILARITIES:
        raise SaliencelabError(
            f"Unknown similarity {name!r}; pick one of {', '.join(SIMILARITIES)}."
            f"{closest(name, SIMILARITIES)}"
        )
    check_options(options, "similarity_options", "similarity_options={'window': 7}")
    opts = options or {}
    try:
        _SIGNATURES[name].bind(None, None, **opts)  # the option names (inspect: ~25 µs)
    except TypeError as e:
        raise SaliencelabError(
            f"Bad similarity_options for {name!r} ({e}); see the options of "
            f"saliencelab.metrics.randomisation.similarity.{SIMILARITIES[name].__name__}."
        ) from None
    window = opts.get("window", 11)
    whole = isinstance(window, numbers.Integral) and not isinstance(window, bool)
    if name == "ssim" and (not whole or window % 2 == 0 or window < 1):
        raise SaliencelabError(f"The SSIM window must be an odd size, got {window!r}.")


def similarity(
    name: str, a: torch.Tensor, b: torch.Tensor, options: dict[str, Any] | None = None
) -> torch.Tensor:
    """(B,) similarity `name` ("spearman", "spearman_abs", "ssim", "hog") of two map batches."""
    return similarity_to(name, a, options)(b)


def similarity_to(
    name: str, a: torch.Tensor, options: dict[str, Any] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`f(b)` = similarity `name` of the fixed maps `a` to maps `b`, (B,); `b` may also hold K
    batches stacked, (K·B, H, W), each compared with `a`: (K·B,), map i with `a[i % B]`.

    What depends on `a` alone (its ranks; its normalised map, local means and variances; its HOG
    features) is computed once, so comparing one original explanation with many recomputed ones
    costs about half. The options are checked here, so a bad option fails before any model pass.
    """
    check_similarity(name, options)
    compare = _similarity_to(name, a, dict(options or {}))
    a_bad = ~torch.isfinite(a.flatten(1)).all(1)

    def finite_only(b: torch.Tensor) -> torch.Tensor:
        """`compare(b)`, NaN where either map holds a NaN or an infinite value (no host sync:
        the mask is applied whether or not any map is bad)."""
        value = compare(b)
        bad = ~torch.isfinite(b.flatten(1)).all(1).to(value.device)
        bad |= a_bad.to(value.device).repeat(value.shape[0] // max(a_bad.shape[0], 1))
        return value.masked_fill(bad, math.nan)

    return finite_only


def _similarity_to(
    name: str, a: torch.Tensor, opts: dict[str, Any]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`similarity_to` of finite maps."""
    a, _ = _pair(a, a)
    try:
        if name in ("spearman", "spearman_abs"):
            absolute = name == "spearman_abs" or bool(opts.get("absolute", False))
            rho = _spearman_to(a.flatten(1), absolute)

            def spearman_to(b: torch.Tensor) -> torch.Tensor:
                _, b = _pair(a, b, stacked=True)
                return rho(b.flatten(1))

            return spearman_to
        if name == "hog":
            normalise = opts.pop("normalise", True)
            fa = hog_features(minmax(a) if normalise else a, **opts)

            def hog_to(b: torch.Tensor) -> torch.Tensor:
                _, b = _pair(a, b, stacked=True)
                fb = hog_features(minmax(b) if normalise else b, **opts)
                return _feature_correlation(fa.repeat(b.shape[0] // fa.shape[0], 1), fb)

            return hog_to
        return _ssim_to(a, **opts)
    except TypeError as e:  # an option of the wrong type
        raise SaliencelabError(
            f"Bad similarity_options for {name!r} ({e}); see the options of "
            f"saliencelab.metrics.randomisation.similarity.{SIMILARITIES[name].__name__}."
        ) from None
