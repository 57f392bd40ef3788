"""ROAD: Remove And Debias (Rong et al. 2022) with noisy linear imputation, solved in torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...core.errors import SaliencelabError
from ..base import EvalBatch, Scores, register_metric
from ..stats import pixel_order, trapezoid
from .perturbation import FaithfulnessMetric, generator, ranks_of, run_rows


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
    return direct / 6 + diagonal / 12


def linear_imputation(
    x: torch.Tensor, removed: torch.Tensor, tol: float | None = None, max_iter: int | None = None
) -> torch.Tensor:
    """Fill the `removed` pixels of `x` so each equals the weighted mean of its neighbours.

    x: (N, C, H, W); removed: (N, 1, H, W) or (N, H, W) bool. For every removed pixel i,
    s_i·v_i = Σ_j w_ij·v_j, with w = 1/6 (direct) and 1/12 (diagonal) over the neighbours j
    inside the image and s_i = Σ_j w_ij; known pixels keep their values (Rong et al. 2022).
    The sparse symmetric positive definite system of each image and channel is solved at once,
    batched, by conjugate gradients with a Jacobi preconditioner, started from the solution of
    the same problem at half resolution (nested iteration), to a relative residual `tol`
    (default 1e-10 in float64; 1e-5 otherwise, where float32 inputs are solved in float32, which
    leaves errors near 1e-3 of the value range, below the default imputation noise). Each
    connected hole needs a known pixel next to it (any hole but the whole image has one).
    """
    if removed.dim() == 3:
        removed = removed[:, None]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if tol is None:
        tol = 1e-10 if dtype == torch.float64 else 1e-5
    m = removed.to(dtype)
    u = _solve(x.to(dtype) * (1 - m), m, tol, max_iter)
    return (x.to(dtype) * (1 - m) + u * m).to(x.dtype)


def _solve(known: torch.Tensor, m: torch.Tensor, tol: float, max_iter: int | None) -> torch.Tensor:
    """Values u on the removed pixels (m = 1) of the imputation system; 0 elsewhere."""
    n, c, h, w = known.shape
    m = m.expand(n, c, h, w)
    s = _neighbours(torch.ones(1, 1, h, w, dtype=known.dtype, device=known.device))
    u = torch.zeros_like(known)
    if min(h, w) >= 8 and bool(m.any()):
        # Nested iteration: the half-resolution problem gives a smooth first guess.
        keep = F.avg_pool2d(1 - m, 2, ceil_mode=True)
        coarse_known = F.avg_pool2d(known, 2, ceil_mode=True) / keep.clamp(min=1e-12)
        coarse_m = (keep == 0).to(known.dtype)
        coarse = _solve(coarse_known * (1 - coarse_m), coarse_m, tol, max_iter)
        guess = coarse_known * (1 - coarse_m) + coarse * coarse_m
        up = F.interpolate(guess, scale_factor=2, mode="bilinear", align_corners=False)
        u = up[..., :h, :w] * m

    def apply(v: torch.Tensor) -> torch.Tensor:  # A v on the removed pixels
        return (s * v - _neighbours(v)) * m

    b = _neighbours(known) * m
    r = b - apply(u)
    z = r / s
    p = z.clone()
    rz = (r * z).sum(dim=(2, 3), keepdim=True)
    b_norm = b.square().sum(dim=(2, 3), keepdim=True).sqrt().clamp(min=1e-30)
    limit = max_iter if max_iter is not None else 20 * (h + w) + 100
    tiny = torch.finfo(known.dtype).tiny
    for _ in range(limit):
        if ((r.square().sum(dim=(2, 3), keepdim=True).sqrt() / b_norm) <= tol).all():
            break
        ap = apply(p)
        pap = (p * ap).sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=tiny), torch.zeros_like(pap))
        u = u + alpha * p
        r = r - alpha * ap
        z = r / s
        rz_new = (r * z).sum(dim=(2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=tiny), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return u


class _Road(FaithfulnessMetric):
    """Curves of removing top (MoRF) or bottom (LeRF) pixels, refilled by noisy imputation."""

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
        super().__init__(percentages=tuple(percentages), noise=noise, seed=seed, score=score)

    def curves(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """{order: (B, P) scores} and the x axis (P,) = percentages / 100."""
        self.check_batch(batch)
        b, c, h, w = batch.x.shape
        pct = torch.tensor(self.percentages, dtype=torch.float64)
        if pct.dim() != 1 or pct.numel() < 2 or not ((pct > 0) & (pct < 100)).all():
            raise SaliencelabError(
                f"The percentages of {self.name} must be at least two numbers in (0, 100) (the "
                f"areas are over them), got {self.percentages!r}."
            )
        if not isinstance(self.noise, (int, float)) or self.noise < 0:
            raise SaliencelabError(f"The noise of {self.name} must be ≥ 0, got {self.noise!r}.")
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
    forwards per sample (plus the batched imputation solves).
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
