"""Pointing game (Zhang et al. 2018), mask dilation by a disk, and per-class means."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from ...core.errors import SaliencelabError
from ..base import EvalBatch, Metric, MetricResult, Scores, register_metric
from ..checks import check_at_least, check_choice
from ._common import flat_maps_and_masks, nan_where, target_extras

Ties = Literal["any", "first", "expected"]


def dilate_masks(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Dilate (B, H, W) bool masks by a Euclidean disk: pixels within `radius` of the mask.

    A pixel (y, x) is in the result when some mask pixel (y', x') has
    (y - y')² + (x - x')² ≤ radius². The disk is the union of its horizontal chords, so the
    dilation is, for each row offset dy, a horizontal max-pool of half-width
    floor(sqrt(radius² - dy²)) shifted by dy: batched, O(radius · B · H · W).
    """
    if radius < 0:
        raise SaliencelabError(f"The dilation radius must be ≥ 0, got {radius}.")
    m = masks.bool()
    r = int(math.floor(radius))
    if r == 0:
        return m.clone()
    b, h, w = m.shape
    mf = F.pad(m.to(torch.float32)[:, None], (0, 0, r, r))  # (B, 1, H + 2r, W), zero rows
    out = torch.zeros((b, 1, h, w), dtype=torch.bool, device=m.device)
    rows: dict[int, torch.Tensor] = {}
    for dy in range(-r, r + 1):
        half = math.isqrt(int(math.floor(radius * radius)) - dy * dy)
        if half not in rows:
            rows[half] = (
                F.max_pool2d(mf, (1, 2 * half + 1), stride=1, padding=(0, half)) > 0
                if half
                else mf > 0
            )
        # Output row y takes mask row y + dy, which sits at y + dy + r in the padded tensor.
        out |= rows[half][:, :, r + dy : r + dy + h]
    return out[:, 0]


#: The default tolerance on image maps, in pixels of the maps (Zhang et al. 2018: 15 pixels).
IMAGE_TOLERANCE = 15


@register_metric
class PointingGame(Metric):
    """Pointing game (Zhang et al. 2018): is the map's maximum on the object?

    value = 1 if argmax(map) lies within `tolerance` pixels of the ground-truth mask (distance
    ≤ tolerance), else 0 (the mask is dilated by a disk of that radius). Zhang et al. use 15
    pixels on the photos, with the maps resized to each photo (VOC and COCO images, ~500 px
    wide; TorchRay's benchmark counts distance < 15); here the pixels are the maps', so on maps
    much smaller than the photos (a 64 × 64 test bed, 224 × 224 inputs) scale the tolerance
    with them. `tolerance=None` (default): 15 pixels on (B, H, W) image maps, 0 on (B, F) maps of
    features or words, whose neighbours are no nearer than any other (a given tolerance there
    counts positions along the row).

    Ties in the maximum: `ties="any"` (default) counts a hit if any maximal pixel is in the
    dilated mask, as Quantus 0.6.0 does (so a constant map scores 1 whenever the mask is not
    empty); `"first"` uses only the first maximal pixel in raster order (torch.argmax);
    `"expected"` gives the fraction of maximal pixels in the dilated mask (the mean hit under a
    random choice among them). An empty mask gives NaN (there is nothing to point at).
    Extras: "target", the class of each sample, for :func:`per_class_mean`.
    """

    name = "pointing_game"
    direction = "higher"
    value_range = (0.0, 1.0)
    needs = ("masks",)
    family = "localisation"
    reference = (
        "Zhang et al. 2018, Top-down Neural Attention by Excitation Backprop (IJCV 126:1084)"
    )

    def __init__(self, tolerance: float | None = None, ties: Ties = "any") -> None:
        if tolerance is not None:
            check_at_least(self.name, "tolerance", tolerance, 0, "pixels")
        check_choice(self.name, "ties", ties, ("any", "first", "expected"))
        super().__init__(tolerance=tolerance, ties=ties)

    def score(self, batch: EvalBatch) -> Scores:
        v, m = flat_maps_and_masks(batch, self.name)
        b = v.shape[0]
        # (B, H, W) maps, or (B, D) feature maps as one row of D (tolerance in features)
        image = batch.maps.dim() >= 3
        h, w = batch.maps.shape[-2:] if image else (1, batch.maps.shape[-1])
        tolerance = self.tolerance
        if tolerance is None:
            tolerance = IMAGE_TOLERANCE if image else 0
        first = v.argmax(1)  # the first maximal pixel in raster order
        if self.ties == "first":
            hit = near_mask(first, m.reshape(b, h, w), tolerance)
        else:
            is_max = v == v.max(1, keepdim=True).values
            n_max = is_max.sum(1)
            # One maximal pixel (the usual case): the mask pixels in its disk decide, O(B·r²).
            hit = near_mask(first, m.reshape(b, h, w), tolerance)
            tied = torch.nonzero(n_max > 1)[:, 0]
            if tied.numel():  # several maxima: dilate those rows' masks by the disk
                zone = m[tied]
                if tolerance >= 1:
                    zone = dilate_masks(zone.reshape(-1, h, w), tolerance).reshape(len(tied), -1)
                on = (is_max[tied] & zone).sum(1).double()
                hit[tied] = (on > 0).double() if self.ties == "any" else on / n_max[tied]
        values = nan_where(hit, ~m.any(1))
        return Scores(values=values, extras=target_extras(batch))


def near_mask(index: torch.Tensor, masks: torch.Tensor, radius: float) -> torch.Tensor:
    """1.0 where pixel `index` (B,) (raster order) lies within `radius` of the (B, H, W) mask.

    Looks only at the mask pixels in the disk around each point: O(B · radius²).
    """
    b, h, w = masks.shape
    flat = masks.reshape(b, -1)
    if radius < 1:
        return flat.gather(1, index[:, None])[:, 0].double()
    r = int(math.floor(radius))
    offs = torch.arange(-r, r + 1, device=masks.device)
    dy, dx = torch.meshgrid(offs, offs, indexing="ij")
    keep = dy.square() + dx.square() <= radius * radius
    yy = (index // w)[:, None] + dy[keep][None]  # (B, K) the disk's pixels around each point
    xx = (index % w)[:, None] + dx[keep][None]
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    pos = yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)
    return (flat.gather(1, pos) & inside).any(1).double()


def per_class_mean(result: MetricResult) -> dict[int, float]:
    """{class: mean value} of a localisation result, skipping NaN values.

    Uses `result.extras["target"]`, which every localisation metric records (pass the classes as
    `target=` when there is no model to predict them).
    """
    if "target" not in result.extras:
        raise SaliencelabError(
            f"The result of {result.metric} has no per-sample classes; score it with a "
            "localisation metric and pass target=... ."
        )
    t = result.extras["target"].long()
    v = result.values.double()
    ok = torch.isfinite(v)
    classes, inverse = torch.unique(t, return_inverse=True)
    sums = torch.zeros(len(classes), dtype=torch.double).index_add_(0, inverse[ok], v[ok])
    counts = torch.zeros(len(classes), dtype=torch.double).index_add_(
        0, inverse[ok], torch.ones_like(v[ok])
    )
    means = sums / counts  # 0/0 = NaN for a class whose values are all NaN
    return {int(c): float(x) for c, x in zip(classes, means, strict=True)}
