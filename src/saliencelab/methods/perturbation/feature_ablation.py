"""Feature ablation: the score drop when one feature (a group of input elements) is removed.

    A(e) = S(x) − S(x with feature f(e) replaced by the baseline),   f(e) = mask[e]

for every element e of feature f, one forward per (sample, feature). The features come from an
integer feature mask (`features.py`): a grid (default), SLIC superpixels, or the user's tensor.
Equal to Captum's `FeatureAblation` with the same mask and baseline.

Rows are (sample, feature) pairs for the features each sample has, n_rows = Σ_b F_b; each chunk
is built in one gather of a keep-matrix over the mask (`apply_features`) and run by
`ctx.engine.forwards`.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

import torch

from ...core.batching import row_slice
from ...core.context import Context, MethodOutput
from ...core.registry import register
from ..gradient.baselines import positive_int
from ..options import check_flag
from .features import (
    BASELINE_CHOICES,
    DEFAULT_SEGMENTS,
    FEATURE_MASK_CHOICES,
    apply_features,
    clean_scores,
    feature_attributions,
    fill_value,
    n_features,
    perturbation_baseline,
    spread_features,
)
from .features import feature_mask as resolve_feature_mask
from .incremental import crop, local_forwards, plan_local_prefix, used_layer

__all__ = ["feature_ablation", "feature_boxes", "spread_features"]  # (from features.py)


@register(
    "feature_ablation",
    family="perturbation",
    cost=(
        "F forwards (F = features per sample); incremental: up to 6 more per call (3 rows checked)"
    ),
    reduction=(
        "score drop of the feature each pixel or value belongs to (summed over channels for "
        "per-channel masks)"
    ),
    # incremental forwards run crops outside the chunk's rows; a mask tensor is per batch
    rowwise=lambda options: (
        not options["incremental"]
        and (options["feature_mask"] is None or isinstance(options["feature_mask"], str))
    ),
    choices={"feature_mask": FEATURE_MASK_CHOICES, "baseline": BASELINE_CHOICES},
)
def feature_ablation(
    ctx: Context,
    *,
    feature_mask: Any = None,
    n_segments: int = DEFAULT_SEGMENTS,
    baseline: Any = 0.0,
    blur_sigma: float = 10.0,
    incremental: bool = True,
) -> MethodOutput:
    """Feature ablation: A(e) = S(x) − S(x with e's feature := baseline), one forward per feature.

    `feature_mask`: None (a grid of about `n_segments` cells; for tabular inputs one feature per
    column) | "grid" | "slic" (superpixels; both images only) | an integer tensor (H, W), (B, H, W),
    (B, C, H, W), (F,) / (B, F) for tabular inputs, (L,) for signals (B, C, L). `baseline`: a number
    (default 0.0; None and "zero" mean the same) | "blur" (`blur_sigma` px) | "mean" | a tensor
    broadcastable to the inputs, whole numbers for integer inputs; `n_segments` a positive int.
    Equals Captum's FeatureAblation with the same mask. extras["feature_mask"] is the mask.

    `incremental=True` recomputes the model's early layers only around each feature's bounding
    box when that saves time and reproduces full forwards (`incremental.py`); the result is the
    same up to float rounding. extras["incremental"] names the layer it ran from.
    """
    incremental = check_flag(incremental, "incremental", "feature_ablation")
    n_segments = positive_int(n_segments, "n_segments", "feature_ablation")
    x = ctx.x
    dev = x.device
    mask = resolve_feature_mask(feature_mask, x, n_segments, "feature_ablation")
    counts = n_features(mask)  # (B,)
    starts = torch.cumsum(counts, 0) - counts
    width = int(counts.max())
    base = perturbation_baseline(x, baseline, "feature_ablation", blur_sigma)
    features = torch.arange(width, device=dev)

    def split(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sample, feature) of rows given as indices on the device (`ids`)."""
        samples = torch.searchsorted(starts, rows, right=True) - 1
        return samples, rows - starts[samples]

    n_rows = int(counts.sum())
    # Every row's index on the device: a chunk's rows (the engine's CPU range) slice it, as
    # moving them to a GPU, or indexing its tensors with them, would wait for it every chunk.
    ids = torch.arange(n_rows, device=dev)
    prefix, boxes = None, None
    if incremental and x.dim() == 4:
        boxes = feature_boxes(mask, width)  # (B, F, 4)
        prefix = plan_local_prefix(ctx, boxes[features[None, :] < counts[:, None]])
    if base.dim() == 4 and base.shape[-2:] != (1, 1):
        base = base.expand(base.shape[0], *x.shape[1:])
    mask4 = mask if mask.dim() == 4 else mask[:, None]

    def perturbed(rows: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size) -> torch.Tensor:
        """Image rows (sample, feature f) cropped to `size` at (top, left): f := baseline."""
        samples, f = split(rows)
        off = crop(mask4, samples, top, left, size) == f[:, None, None, None]
        return torch.where(
            off, crop(base, samples, top, left, size), crop(x, samples, top, left, size)
        )

    def boxes_of(rows: torch.Tensor) -> torch.Tensor:
        samples, f = split(rows)
        return boxes[samples, f]

    clean = clean_scores(ctx)
    drops = torch.zeros(ctx.batch, width, dtype=clean.dtype, device=dev)
    check = torch.tensor(sorted({0, n_rows // 2, n_rows - 1}), device=dev)

    def sample_of(rows: torch.Tensor) -> torch.Tensor:
        return split(rows)[0]

    if x.dim() == 4:
        chunks = local_forwards(ctx, prefix, n_rows, sample_of, boxes_of, perturbed, check)
    else:  # any other input shape: one gather per chunk
        fill = fill_value(base)

        def make_inputs(rows: torch.Tensor) -> torch.Tensor:
            samples, f = split(row_slice(ids, rows))
            keep = features[None, :] != f[:, None]  # (n, F): every feature but f
            return apply_features(x, fill, mask, keep, samples)

        def samples_of(rows: torch.Tensor) -> torch.Tensor:
            return sample_of(row_slice(ids, rows))

        chunks = ctx.engine.forwards(n_rows, make_inputs, samples_of, ctx.target)
    with closing(chunks):  # the model restored also if this frame is kept
        for chunk in chunks:
            samples, f = split(row_slice(ids, chunk.rows))
            drops[samples, f] = clean[samples] - chunk.scores.to(dev)
    # in the inputs' dtype, but never an integer one (token ids): score drops are real numbers;
    # maps: a mask shared by the channels gives each position its feature's drop (images,
    # signals, volumes), a per-element mask the sum over channels, tabular inputs the drops
    attributions, maps = feature_attributions(drops, mask, x)
    extras = {"feature_mask": mask, "incremental": used_layer(prefix)}
    return MethodOutput(attributions, maps=maps, extras=extras)


def feature_boxes(mask: torch.Tensor, width: int) -> torch.Tensor:
    """(B, F, 4) bounding box (top, left, bottom, right) px, bottom/right exclusive, of each
    feature of an image mask (B, H, W) or (B, C, H, W); features absent from a sample get
    an empty box."""
    height, wid = mask.shape[-2:]
    dev = mask.device
    ys = torch.arange(height, device=dev)[:, None].expand(height, wid).expand(mask.shape)
    xs = torch.arange(wid, device=dev)[None, :].expand(height, wid).expand(mask.shape)
    ids = mask.flatten(1)
    b = mask.shape[0]

    def reduce(coords: torch.Tensor, how: str, fill: int) -> torch.Tensor:
        out = torch.full((b, width), fill, dtype=torch.long, device=dev)
        return out.scatter_reduce(1, ids, coords.flatten(1), how, include_self=True)

    return torch.stack(
        [
            reduce(ys, "amin", height),
            reduce(xs, "amin", wid),
            reduce(ys, "amax", -1) + 1,
            reduce(xs, "amax", -1) + 1,
        ],
        dim=2,
    )
