"""Surrogate-model machinery shared by LIME and KernelSHAP: coalitions, their scores, and a
batched weighted least-squares fit in closed form.

Both methods explain f around x with a linear model g(z) = β_0 + Σ_f β_f z_f over binary
coalitions z ∈ {0, 1}^F of features: the model sees x where z_f = 1 and a baseline where
z_f = 0 (:func:`apply_features` on a feature mask). They differ in how the coalitions are drawn,
how each is weighted, and the constraints on β.

Layout. Sample b of the batch has F_b features (its mask's ids 0..F_b-1) and N_b coalitions.
Coalitions are held padded, `z` (B, N, F) bool with N = max N_b and F = max F_b: columns
f ≥ F_b and rows k ≥ N_b are False and weigh nothing. The Σ_b N_b evaluated rows are flat (row r
is coalition `slot[r]` of sample `sample[r]`), so the engine chunks them freely; each chunk's
inputs are built in one gather. Each sample's coalitions come from its own
`torch.Generator(seed)`, so a sample's result depends on its own input only, not on the other
samples of the batch nor on the chunk size.

The fit solves the normal equations (XᵀWX + D) β = XᵀWy of all samples at once in float64,
(B, P, P) systems on the model's device; D is a diagonal of ridge penalties, and 1 on the
padded columns (whose X column is 0), which pins their coefficient to exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.batching import row_range, row_slice
from ...core.context import Context
from ...core.errors import SaliencelabError
from .features import apply_features, channels_last_ok, feature_attributions, fill_value

__all__ = [  # feature_attributions lives in features.py (shared with feature ablation)
    "Coalitions",
    "coalition_scores",
    "feature_attributions",
    "weighted_least_squares",
]


@dataclass
class Coalitions:
    """Padded coalitions of a batch: `z` (B, N, F) bool, `counts` (B,) rows used per sample."""

    z: torch.Tensor
    counts: torch.Tensor

    @staticmethod
    def stack(per_sample: list[torch.Tensor], n_features: int) -> Coalitions:
        """Pad each sample's (N_b, F_b) coalitions to (N, F) with False and stack them."""
        n = max((z.shape[0] for z in per_sample), default=0)
        device = per_sample[0].device
        z = torch.zeros(len(per_sample), n, n_features, dtype=torch.bool, device=device)
        for b, zb in enumerate(per_sample):  # one copy per sample, not per feature
            z[b, : zb.shape[0], : zb.shape[1]] = zb
        counts = torch.tensor([zb.shape[0] for zb in per_sample], device=device)
        return Coalitions(z, counts)


def coalition_scores(
    ctx: Context,
    coalitions: Coalitions,
    mask: torch.Tensor,
    baseline: torch.Tensor,
) -> torch.Tensor:
    """(B, N) float64 target score of every coalition (0 on padded rows), forward passes only.

    A coalition drawn more than once for the same sample (KernelSHAP's sampler draws the small
    and large sizes often) is evaluated once: the forwards run over the distinct (sample,
    coalition) pairs only, and each drawn row takes its pair's score. Row r of the pass is
    distinct pair r; its input is x[sample] where the coalition keeps the element's feature and
    the baseline elsewhere, built per chunk (channels-last where that is faster, see
    `channels_last_ok`).
    """
    x, z, counts = ctx.x, coalitions.z, coalitions.counts
    dev = x.device
    sample = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(sample), device=dev) - starts[sample]
    drawn = z[sample, slot]  # (R, F) every drawn row
    keyed = torch.cat([sample[:, None], drawn.to(torch.long)], dim=1)
    distinct, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    u_sample, u_keep = distinct[:, 0], distinct[:, 1:].bool()
    layout = torch.channels_last if channels_last_ok(ctx) else torch.contiguous_format
    if layout == torch.channels_last:  # rows gathered from NHWC sources come out NHWC: no copy
        x = x.contiguous(memory_format=layout)
        if baseline.dim() == 4 and baseline.shape[-2:] != (1, 1):
            baseline = baseline.contiguous(memory_format=layout)

    shared = bool((mask == mask[:1]).all())  # one mask for every sample (e.g. the grid)
    base = fill_value(baseline)

    # A chunk's rows slice the tables of distinct pairs (the engine's chunk rows are CPU ranges:
    # moved to a GPU, or indexing its tensors, they would wait for it every chunk).
    def sample_of(rows: torch.Tensor) -> torch.Tensor:
        return row_slice(u_sample, rows)

    def make_inputs(rows: torch.Tensor) -> torch.Tensor:
        keep = row_slice(u_keep, rows)
        out = apply_features(x, base, mask, keep, sample_of(rows), shared)
        return out.contiguous(memory_format=layout)  # a no-op when already in that layout

    scores = torch.zeros(len(distinct), dtype=torch.float64, device=dev)
    for chunk in ctx.engine.forwards(len(distinct), make_inputs, sample_of, ctx.target):
        lo, hi = row_range(chunk.rows)
        scores[lo:hi] = chunk.scores.to(device=dev, dtype=torch.float64)
    y = torch.zeros(z.shape[:2], dtype=torch.float64, device=dev)
    y[sample, slot] = scores[inverse]
    return y


def weighted_least_squares(
    design: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    penalty: torch.Tensor,
    *,
    method: str,
    remedy: str,
) -> torch.Tensor:
    """β (B, P) minimising Σ_k w_k (y_k − X_k β)² + Σ_j D_j β_j² for each sample, in float64.

    Closed form: (XᵀWX + diag(D)) β = XᵀWy, solved for all B samples at once. `design` (B, N, P),
    `y` and `weights` (B, N), `penalty` D (B, P) or (P,). A singular system (too few distinct
    coalitions for the unknowns) raises one clear sentence ending with `remedy`, what the
    method's user can change (LIME's ridge `alpha`; KernelSHAP has none).
    """
    x = design.to(torch.float64)
    w = weights.to(torch.float64)
    wx = x * w[..., None]
    a = wx.transpose(1, 2) @ x
    a = a + torch.diag_embed(penalty.to(a).expand(a.shape[:2]))
    rhs = (wx.transpose(1, 2) @ y.to(torch.float64)[..., None])[..., 0]
    solve_on = a.device if a.device.type != "mps" else torch.device("cpu")  # no float64 on MPS
    beta, info = torch.linalg.solve_ex(a.to(solve_on), rhs.to(solve_on))
    if bool((info != 0).any()) or not bool(torch.isfinite(beta).all()):
        raise SaliencelabError(
            f"{method}: the surrogate's least-squares system is singular (too few distinct "
            f"coalitions for the number of features); {remedy}."
        )
    return beta.to(design.device)
