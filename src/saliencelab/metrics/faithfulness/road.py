"""ROAD: Remove And Debias (Rong et al. 2022), with noisy linear imputation.

The imputation is a sparse linear system per image, solved exactly on the CPU (LAPACK's band
Cholesky for images up to ~100 pixels wide, SciPy's SuperLU in nested dissection order beyond),
by batched conjugate gradients in torch on other devices.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import cache, lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.engine import free_reads
from ...core.errors import SaliencelabError
from ..base import EvalBatch, Scores, register_metric
from ..checks import check_at_least
from ..stats import pixel_order, trapezoid
from .perturbation import (
    FaithfulnessMetric,
    as_numbers,
    as_tuple,
    generator,
    ranks_of,
    run_rows,
)

# The 8 neighbours (dy, dx) of a pixel and their weights: 1/6 direct, 1/12 diagonal (Rong et al.).
_OFFSETS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
_WEIGHTS = np.array([1 / 6] * 4 + [1 / 12] * 4)
# The 4 of them that come later in raster order, with their weights.
_LATER = (((0, 1), 1 / 6), ((1, -1), 1 / 12), ((1, 0), 1 / 6), ((1, 1), 1 / 12))


def linear_imputation(
    x: torch.Tensor, removed: torch.Tensor, tol: float | None = None, max_iter: int | None = None
) -> torch.Tensor:
    """Fill the `removed` pixels of `x` so each equals the weighted mean of its neighbours.

    x: (N, C, H, W); removed: (N, 1, H, W) or (N, H, W) bool (N may be 1 to share one mask).
    For every removed pixel i and channel, s_i·v_i = Σ_j w_ij·v_j over the 8 neighbours j inside
    the image, w = 1/6 (direct) and 1/12 (diagonal), s_i = Σ_j w_ij; known pixels keep their
    values (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
    Methods"; Quantus' `noisy_linear_imputation` without the noise). The system of the removed
    pixels is symmetric positive definite as long as the image keeps a known pixel; an image
    with every pixel removed has nothing to interpolate from and is filled with 0.

    On the CPU each image's system is solved exactly (a band Cholesky or a sparse LU in float64,
    see `_solve_image`, its C channels as C right-hand sides of one factorisation, images on
    `torch.get_num_threads()` threads; the result carries no autograd graph) and `tol` and
    `max_iter` are unused. On other devices (or without SciPy) all systems are solved at once,
    batched, by conjugate gradients (see `_conjugate_gradients`) to a relative residual `tol`.
    """
    if removed.dim() == 3:
        removed = removed[:, None]
    if x.device.type == "cpu" and _scipy() is not None:
        return _direct(x, removed)
    return _conjugate_gradients(x, removed, tol, max_iter)


# -- exact solve on the CPU ------------------------------------------------------------------------


@cache
def _scipy() -> Any:
    """SciPy's LAPACK band Cholesky (dpbtrf, dpbtrs), (csc_matrix, splu) and a threadpoolctl
    controller of the BLAS libraries (None without threadpoolctl), imported on first use (SciPy
    comes with scikit-image); None without SciPy."""
    try:
        from scipy.linalg.lapack import dpbtrf, dpbtrs
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import splu
    except ImportError:  # pragma: no cover - scikit-image requires SciPy
        return None
    try:
        from threadpoolctl import ThreadpoolController

        blas = ThreadpoolController()  # after SciPy's import, so it sees SciPy's BLAS
    except ImportError:  # pragma: no cover - comes with scikit-learn
        blas = None
    return (dpbtrf, dpbtrs), (csc_matrix, splu), blas


def _direct(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """`linear_imputation` by one exact solve per image (CPU tensors), see `_solve_image`.

    The right-hand sides Σ_j w_ij x_j over the known neighbours are one batched stencil
    (`_neighbours` of the image with its removed pixels zeroed). Images wider than tall are
    solved transposed (the stencil is symmetric), so that image rows are the short side. SciPy
    releases the GIL, so with torch using several threads the images are solved on as many
    threads, each calling BLAS on one thread (threadpoolctl's limit: SciPy's multithreaded BLAS
    is many times slower on these small band matrices; without threadpoolctl only the SuperLU
    solve is used).
    """
    n, c, h, w = x.shape
    removed = (removed.detach().expand(n, 1, h, w) != 0).reshape(n, h, w)
    known = x.detach().to(torch.float64).masked_fill(removed[:, None], 0.0)
    if w > h:
        known, removed = known.transpose(2, 3), removed.transpose(1, 2)
    near = _neighbours(known).numpy()  # Σ_j w_ij x_j over the known neighbours j
    out = known.numpy()  # a new array (masked_fill copies): the known pixels, 0 elsewhere
    masks = removed.numpy()
    blas = _scipy()[2]
    jobs = [i for i in range(n) if 0 < masks[i].sum() < h * w]  # all removed: stays 0

    def solve(i: int) -> None:
        out[i][:, masks[i]] = _solve_image(masks[i], near[i], band=blas is not None)

    workers = min(torch.get_num_threads(), len(jobs))
    with blas.limit(limits=1, user_api="blas") if blas is not None else nullcontext():
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(solve, jobs))
        else:
            for i in jobs:
                solve(i)
    filled = torch.from_numpy(out)
    return (filled.transpose(2, 3) if w > h else filled).to(x.dtype)


# The band solve costs ~ k·u²/2 multiply-adds (k unknowns, bandwidth u), SuperLU in nested
# dissection order ~ k·log2(k) times a constant: the band solve is used while u² ≤ _BAND·log2(k),
# the crossover measured on ROAD's rows of 224×224 saliency and Grad-CAM maps (band for most
# rows at 10-20 %, SuperLU above); on 64×64 (u ≤ 65) it is always the band solve, 2.4× faster.
_BAND = 800


def _solve_image(mask: np.ndarray, near: np.ndarray, band: bool = True) -> np.ndarray:
    """The values (C, k) of the k removed pixels of an (H, W) mask, in raster order, from the
    right-hand sides `near` (C, H, W) (Σ_j w_ij x_j over the known neighbours j of each pixel).

    Row i of the symmetric positive definite system: s_i·v_i - Σ_{j removed} w_ij·v_j = near_i.
    Numbered in raster order it is a band matrix of bandwidth u ≤ W + 1 (the unknowns from a
    pixel to its lower-right neighbour): LAPACK's band Cholesky (dpbtrf) solves it in ~ k·u²/2
    multiply-adds, faster than a general sparse solver on small images. Wider bands (large
    images) or `band=False` go to SuperLU in nested dissection order (`_superlu_solve`).
    """
    u, pairs = _band_pairs(mask)
    k = int(mask.sum())
    if not band or u * u > _BAND * max(np.log2(k), 1.0):
        return _superlu_solve(mask, near)
    (dpbtrf, dpbtrs), _, _ = _scipy()
    ab = _zeros((u + 1) * k).reshape(u + 1, k, order="F")  # lower band: ab[i - j, j] = A[i, j]
    ab[0] = _grid(*mask.shape)[2][mask]
    for weight, first, step in pairs:
        ab[step, first] = -weight
    factor, info = dpbtrf(ab, lower=1, overwrite_ab=1)
    if info != 0:  # pragma: no cover - the matrix is symmetric positive definite
        return _superlu_solve(mask, near)
    values, _ = dpbtrs(factor, np.asfortranarray(near[:, mask].T), lower=1, overwrite_b=1)
    return values.T


_BUFFER = threading.local()


def _zeros(n: int) -> np.ndarray:
    """n zeros (float64), in a buffer of the calling thread kept for its next call while n ≤ 2²⁰
    (8 MiB): a fresh array costs a page fault per 4 KiB page on first touch, about a quarter of
    the time of a 64×64 band solve."""
    if n > 1 << 20:
        return np.zeros(n)
    buffer = getattr(_BUFFER, "array", None)
    if buffer is None or buffer.size < n:
        buffer = _BUFFER.array = np.empty(max(n, 1 << 16))
    out = buffer[:n]
    out[:] = 0.0
    return out


def _band_pairs(mask: np.ndarray) -> tuple[int, list[tuple[float, np.ndarray, np.ndarray]]]:
    """The bandwidth u of the system of `mask` in raster order and its couplings: for each of
    the 4 neighbours that come later in raster order (right, down-left, down, down-right), the
    weight, the unknown numbers of the removed pixels that have it removed, and how many
    unknowns later it comes."""
    h, w = mask.shape
    ids = np.cumsum(mask.ravel()).reshape(h, w) - 1  # unknown number in raster order
    u, pairs = 0, []
    for (dy, dx), weight in _LATER:
        a = (slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
        b = (slice(dy, h), slice(max(0, dx), w + min(0, dx)))
        both = mask[a] & mask[b]
        first = ids[a][both]
        step = ids[b][both] - first
        if step.size:
            u = max(u, int(step.max()))
            pairs.append((weight, first, step))
    return u, pairs


def _superlu_solve(mask: np.ndarray, near: np.ndarray) -> np.ndarray:
    """`_solve_image` by a sparse LU (SuperLU) with the unknowns numbered in nested dissection
    order (`_grid`): the LU factors of the grid-like system stay sparse (fill ~ k log k for k
    unknowns); no pivoting is needed as the matrix is symmetric positive definite."""
    _, (csc_matrix, splu), _ = _scipy()
    h, w = mask.shape
    rank, steps, s = _grid(h, w)
    ys, xs = np.nonzero(mask)
    order = np.argsort(rank[ys, xs])
    ys, xs = ys[order], xs[order]
    k = ys.size
    at = (ys + 1) * (w + 2) + xs + 1  # position in the zero-padded image
    ids = np.full((h + 2) * (w + 2), -1, dtype=np.int32)  # unknown number, -1 if known/outside
    ids[at] = np.arange(k, dtype=np.int32)
    near_ids = ids[at[:, None] + steps]  # (k, 8) unknown numbers of the neighbours
    # Row i of A: s_i on the diagonal, -w_ij for each removed neighbour j. A is symmetric, so
    # these rows, stored as CSR, are its CSC arrays.
    cols = np.concatenate([np.arange(k, dtype=np.int32)[:, None], near_ids], axis=1)
    vals = np.concatenate([s[ys, xs][:, None], np.broadcast_to(-_WEIGHTS, (k, 8))], axis=1)
    keep = cols >= 0
    indptr = np.zeros(k + 1, dtype=np.int32)
    np.cumsum(keep.sum(1), out=indptr[1:])
    a = csc_matrix((vals[keep], cols[keep], indptr), shape=(k, k))
    lu = splu(a, permc_spec="NATURAL", diag_pivot_thresh=0.0, relax=20, panel_size=2)
    values = np.empty((near.shape[0], k))
    values[:, order] = lu.solve(np.ascontiguousarray(near[:, ys, xs].T)).T
    return values


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an H×W image: the nested dissection rank of every pixel (H, W); the flat offsets of
    the 8 neighbours in the zero-padded (H+2)×(W+2) image; s = Σ_j w_ij per pixel (H, W).

    Nested dissection (George 1973): cut the grid by its middle row if it is taller than wide,
    else by its middle column; number both halves recursively, then the cut. Blocks of at most
    4 pixels (or 1 wide) are numbered row by row. An 8-neighbour stencil never crosses a whole
    row or column, so eliminating one half never touches the other: the fill-in of each half
    stays within it and its cut.
    """
    parts: list[np.ndarray] = []

    def split(block: np.ndarray) -> None:
        bh, bw = block.shape
        if bh * bw <= 4 or min(bh, bw) <= 1:
            parts.append(block.ravel())
        elif bh >= bw:
            split(block[: bh // 2])
            split(block[bh // 2 + 1 :])
            parts.append(block[bh // 2])
        else:
            split(block[:, : bw // 2])
            split(block[:, bw // 2 + 1 :])
            parts.append(block[:, bw // 2])

    split(np.arange(h * w).reshape(h, w))
    rank = np.empty(h * w, dtype=np.int64)
    rank[np.concatenate(parts)] = np.arange(h * w)
    steps = np.array([dy * (w + 2) + dx for dy, dx in _OFFSETS])
    inside = np.pad(np.ones((h, w)), 1)
    s = sum(
        wt * inside[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx]
        for (dy, dx), wt in zip(_OFFSETS, _WEIGHTS, strict=True)
    )
    return rank.reshape(h, w), steps, s


# -- batched conjugate gradients (CUDA and other devices) ------------------------------------------


def _neighbours(v: torch.Tensor) -> torch.Tensor:
    """Σ_j w_ij v_j over the in-image 8-neighbours j of each pixel i, per channel: the
    weights are 1/6 for the 4 direct and 1/12 for the 4 diagonal neighbours (Rong et al.).

    A 3×3 stencil written as shifted slices of the zero-padded image (no convolution
    primitive to set up for every new shape).
    """
    h, w = v.shape[-2:]
    p = F.pad(v, (1, 1, 1, 1))
    direct = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    diagonal = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return torch.add(direct, diagonal, alpha=0.5).div_(6)


def _conjugate_gradients(
    x: torch.Tensor, removed: torch.Tensor, tol: float | None, max_iter: int | None
) -> torch.Tensor:
    """`linear_imputation` on x's device: every image and channel at once, batched.

    Conjugate gradients with a Jacobi preconditioner D = diag(s), started from the solution of
    the same problem at half resolution (nested iteration), to a relative residual `tol` in the
    D⁻¹ norm, ‖r‖/‖b‖ with ‖r‖² = Σ r²/s (within a factor 1.6 of the plain one; default 1e-10
    in float64; 1e-5 otherwise, where float32 inputs are solved in float32, which leaves errors
    near 1e-3 of the value range, below the default imputation noise), at most `max_iter`
    iterations (default 20·(H + W) + 100). removed: (N or 1, 1, H, W).
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if tol is None:
        tol = 1e-10 if dtype == torch.float64 else 1e-5
    m = removed.to(dtype)
    u = _solve(x.to(dtype) * (1 - m), m, tol, max_iter)
    return (x.to(dtype) * (1 - m) + u * m).to(x.dtype)


# Where reads wait for the device (`core.engine.free_reads`: a GPU), the host could not queue
# the next iterations while the device works: there the conjugate gradients read their
# convergence test every this many iterations, and a system that converged in between takes a
# few more steps (smaller residuals, the same solution to the tolerance).
CONVERGENCE_CHECK_EVERY = 8


def _solve(known: torch.Tensor, m: torch.Tensor, tol: float, max_iter: int | None) -> torch.Tensor:
    """Values u on the removed pixels (m = 1) of the imputation system; 0 elsewhere."""
    n, c, h, w = known.shape
    m = m.expand(n, c, h, w)
    s = _neighbours(torch.ones(1, 1, h, w, dtype=known.dtype, device=known.device))
    u = torch.zeros_like(known)
    on_host = free_reads(known.device)
    # (with nothing removed the coarse guess is 0, as is u: the test only saves work on the host)
    if min(h, w) >= 8 and (not on_host or bool(m.any())):
        # Nested iteration: the half-resolution problem gives a smooth first guess.
        keep = F.avg_pool2d(1 - m, 2, ceil_mode=True)
        coarse_known = F.avg_pool2d(known, 2, ceil_mode=True) / keep.clamp(min=1e-12)
        coarse_m = (keep == 0).to(known.dtype)
        coarse = _solve(coarse_known * (1 - coarse_m), coarse_m, tol, max_iter)
        guess = coarse_known * (1 - coarse_m) + coarse * coarse_m
        up = F.interpolate(guess, scale_factor=2, mode="bilinear", align_corners=False)
        u = up[..., :h, :w] * m

    def apply(v: torch.Tensor) -> torch.Tensor:  # A v on the removed pixels (v is 0 elsewhere)
        return torch.addcmul(s * v, _neighbours(v), m, value=-1)  # s v - (N v) m

    # Each iteration is a few fused updates (on a GPU at these sizes the time is kernel
    # launches: 25 kernels per iteration, was 40), and convergence is read from the
    # preconditioned residual r·z = Σ r²/s the iteration computes anyway, against tol²·(b·D⁻¹b).
    inv_s = 1 / s
    b = _neighbours(known).mul_(m)
    r = b - apply(u)
    z = r * inv_s
    p = z.clone()
    rz = (r * z).sum(dim=(2, 3), keepdim=True)
    stop = (b * b * inv_s).sum(dim=(2, 3), keepdim=True).mul_(tol * tol)
    limit = max_iter if max_iter is not None else 20 * (h + w) + 100
    tiny = torch.finfo(known.dtype).tiny
    every = 1 if on_host else CONVERGENCE_CHECK_EVERY
    for i in range(limit):
        if i % every == 0 and bool((rz <= stop).all()):
            break
        ap = apply(p)
        # α = r·z / p·Ap (0 for a system already solved: p = 0 there, and so is r·z)
        alpha = rz / (p * ap).sum(dim=(2, 3), keepdim=True).clamp_(min=tiny)
        u.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        torch.mul(r, inv_s, out=z)
        rz_new = (r * z).sum(dim=(2, 3), keepdim=True)
        beta = rz_new / rz.clamp(min=tiny)
        p = torch.addcmul(z, beta, p)
        rz = rz_new
    return u


class _Road(FaithfulnessMetric):
    """Curves of removing top (MoRF) or bottom (LeRF) pixels, refilled by noisy imputation."""

    range_of_probabilities = True  # areas of a probability: any value with score="logit"
    reference = (
        "Rong et al. 2022, A Consistent and Efficient Evaluation Strategy for Attribution "
        "Methods (ROAD)"
    )
    orders: tuple[str, ...] = ("morf", "lerf")

    def __init__(
        self,
        percentages: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
        noise: float = 0.01,
        seed: int = 0,
        score: str = "probability",
    ) -> None:
        pct = as_numbers(percentages)
        if (
            pct is None
            or pct.numel() < 2
            or not ((pct > 0) & (pct < 100)).all()
            or not (pct.diff() > 0).all()  # descending: every area's sign flipped
        ):
            raise SaliencelabError(
                f"The percentages of {self.name} must be at least two increasing numbers in "
                f"(0, 100) (the areas are over them), got {percentages!r}."
            )
        check_at_least(self.name, "noise", noise, 0, "the std of the imputation noise")
        super().__init__(percentages=as_tuple(percentages), noise=noise, seed=seed, score=score)

    def curves(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """{order: (B, P) scores} and the x axis (P,) = percentages / 100."""
        self.check_batch(batch)
        b, c, h, w = batch.x.shape
        pct = torch.tensor(self.percentages, dtype=torch.float64)
        counts = (pct * h * w / 100).long().to(batch.device)  # floor, as Quantus
        ranks = torch.stack(
            [ranks_of(pixel_order(batch.maps, descending=o == "morf")) for o in self.orders], 1
        )  # (B, orders, H·W)
        noise = torch.randn(c, h, w, generator=generator(self.seed), dtype=torch.float64)
        noise = (self.noise * noise).to(device=batch.device, dtype=batch.x.dtype)
        n_pct = counts.numel()

        def make(samples: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            o, p = k // n_pct, k % n_pct
            removed = (ranks[samples, o] < counts[p][:, None]).view(-1, 1, h, w)
            filled = linear_imputation(batch.x[samples], removed)
            return filled + noise * removed

        scores = run_rows(batch, len(self.orders) * n_pct, make, self.score_kind).double()
        out = {o: scores[:, i * n_pct : (i + 1) * n_pct] for i, o in enumerate(self.orders)}
        return out, pct / 100


@register_metric
class Road(_Road):
    """ROAD gap (Rong et al. 2022): area under LeRF minus area under MoRF. Higher is better.

    For each percentage p, the top (MoRF) or bottom (LeRF) p % of pixels by map value (ties by
    position; floor(p·H·W/100) pixels) are removed and refilled by noisy linear imputation:
    every removed pixel equals the 1/6 (direct), 1/12 (diagonal) weighted mean of its
    neighbours (`linear_imputation`), plus Gaussian noise of std `noise` (one seeded noise
    image shared by all samples and steps). Curves: the target's probability per percentage;
    areas: trapezoid over p/100. `extras` keeps both curves and areas. Costs 2 · len(percentages)
    forwards per sample, plus as many imputations (an exact sparse solve per row on the CPU,
    batched conjugate gradients elsewhere).
    """

    name = "road"
    direction = "higher"
    value_range = (-1.0, 1.0)

    def score(self, batch: EvalBatch) -> Scores:
        curves, x_axis = self.curves(batch)
        areas = {o: trapezoid(c, x_axis.to(c.device)) for o, c in curves.items()}
        return Scores(
            values=areas["lerf"] - areas["morf"],
            curves=curves["lerf"] - curves["morf"],
            curve_x=x_axis,
            extras={
                "morf_curve": curves["morf"],
                "lerf_curve": curves["lerf"],
                "morf_area": areas["morf"],
                "lerf_area": areas["lerf"],
            },
        )


class _OneOrder(_Road):
    """ROAD with one order: the value is the area under its curve."""

    def score(self, batch: EvalBatch) -> Scores:
        curves, x_axis = self.curves(batch)
        c = curves[self.orders[0]]
        return Scores(values=trapezoid(c, x_axis.to(c.device)), curves=c, curve_x=x_axis)


@register_metric
class RoadMoRF(_OneOrder):
    """ROAD, most relevant first: area under the MoRF curve (see `road`). Lower is better."""

    name = "road_morf"
    direction = "lower"
    value_range = (0.0, 1.0)
    orders = ("morf",)


@register_metric
class RoadLeRF(_OneOrder):
    """ROAD, least relevant first: area under the LeRF curve (see `road`). Higher is better."""

    name = "road_lerf"
    direction = "higher"
    value_range = (0.0, 1.0)
    orders = ("lerf",)
