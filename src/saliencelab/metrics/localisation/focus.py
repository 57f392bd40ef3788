"""Focus (Arias-Duart et al. 2022) and the 2×2 mosaics it is computed on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...core.errors import SaliencelabError
from ..base import EvalBatch, Metric, Scores, register_metric
from ._common import flat_maps_and_masks, nan_where, ratio, target_extras, total


@dataclass
class Mosaics:
    """2×2 mosaics of images, for the Focus metric.

    Attributes:
        x: (M, C, 2H, 2W) mosaic inputs (or (M, C, *size) when resized).
        masks: (M, 2H, 2W) bool, True on the quadrants that hold an image of the target class.
        target: (M,) long, the mosaic's target class.
        quadrants: (M, 4) bool, which quadrants hold the target class, in the order top-left,
            top-right, bottom-left, bottom-right (Quantus' `custom_batch` layout).
        sources: (M, 4) long, the index of the image in each quadrant, same order.
    """

    x: torch.Tensor
    masks: torch.Tensor
    target: torch.Tensor
    quadrants: torch.Tensor
    sources: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


def make_mosaics(
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int | None = None,
    *,
    seed: int = 0,
    size: int | tuple[int, int] | None = None,
) -> Mosaics:
    """Build `n` 2×2 mosaics: two images of a target class and two of other classes, shuffled.

    As in Arias-Duart et al. 2022: each mosaic's target class is drawn uniformly among the
    classes with at least two images (and at least two images of other classes), two distinct
    images of it and two images of any other classes are drawn, and the four are placed in the
    quadrants in a random order. Everything is drawn at once from a generator seeded by `seed`
    (reproducible, no loop over mosaics). `n` defaults to len(images) // 4 (at least 1). `size`
    resizes the mosaics (bilinear, antialiased) and their masks (nearest) for models with a
    fixed input size; by default a mosaic is twice the images' height and width.

    Typical use::

        mos = make_mosaics(x, y, n=32)
        ex = sl.explain(model, mos.x, methods="gradcam", target=mos.target)
        sl.evaluate(model, mos.x, ex, metrics="focus", masks=mos.masks, target=mos.target)
    """
    if images.dim() != 4:
        raise SaliencelabError(
            f"make_mosaics needs (N, C, H, W) images, got shape {tuple(images.shape)}."
        )
    labels = torch.as_tensor(labels).long().flatten().cpu()
    if labels.numel() != images.shape[0]:
        raise SaliencelabError(
            f"make_mosaics got {images.shape[0]} images but {labels.numel()} labels; give one "
            "label per image."
        )
    total = labels.numel()
    classes, counts = torch.unique(labels, return_counts=True)
    eligible = classes[(counts >= 2) & (total - counts >= 2)]
    if eligible.numel() == 0:
        raise SaliencelabError(
            "make_mosaics needs a class with at least two images and at least two images of "
            "other classes; give images of several classes."
        )
    m = max(1, total // 4) if n is None else int(n)
    if m < 1:
        raise SaliencelabError(f"n must be at least 1 mosaic, got {n}.")
    g = torch.Generator().manual_seed(seed)
    target = eligible[torch.randint(len(eligible), (m,), generator=g)]
    same = labels[None, :] == target[:, None]  # (M, N)
    keys = torch.rand((m, total), generator=g)
    inf = torch.tensor(float("inf"))
    own = torch.where(same, keys, inf).topk(2, dim=1, largest=False).indices
    other = torch.where(~same, keys, inf).topk(2, dim=1, largest=False).indices
    tiles = torch.cat([own, other], dim=1)  # (M, 4): two of the target class, then two others
    perm = torch.rand((m, 4), generator=g).argsort(dim=1)  # quadrant q holds tile perm[q]
    sources = tiles.gather(1, perm)
    quadrants = perm < 2

    dev = images.device
    imgs = images[sources.flatten().to(dev)].reshape(m, 4, *images.shape[1:])
    top = torch.cat([imgs[:, 0], imgs[:, 1]], dim=-1)
    bottom = torch.cat([imgs[:, 2], imgs[:, 3]], dim=-1)
    x = torch.cat([top, bottom], dim=-2)
    h, w = images.shape[-2:]
    masks = (
        quadrants.reshape(m, 2, 2).to(dev).repeat_interleave(h, dim=1).repeat_interleave(w, dim=2)
    )
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    return Mosaics(x=x, masks=masks, target=target.to(dev), quadrants=quadrants, sources=sources)


def _split_near_middle(masks: torch.Tensor) -> torch.Tensor:
    """(B,) whether every (H, W) mask's rows are the first row up to some row r and the last
    row from r on, with r within one pixel of H / 2 (or all rows equal)."""
    h = masks.shape[1]
    like_first = (masks == masks[:, :1]).all(-1)  # (B, H)
    like_last = (masks == masks[:, -1:]).all(-1)
    r = like_first.long().cumprod(1).sum(1)  # rows before the first that differs from row 0
    before = torch.arange(h, device=masks.device) < r[:, None]
    return (r == h) | ((like_last | before).all(1) & ((2 * r - h).abs() <= 2))


def check_mosaic_masks(name: str, masks: torch.Tensor) -> None:
    """One sentence unless each (H, W) mask of (B, H, W) is a union of whole quadrants of a 2×2
    mosaic: the mask is constant on each of the four blocks cut by a row and a column within
    one pixel of the middle (a nearest resize of a mosaic's mask, `make_mosaics(size=...)`,
    moves the cut by up to one pixel)."""
    ok = _split_near_middle(masks) & _split_near_middle(masks.transpose(1, 2))
    if not bool(ok.all()):
        i = int(torch.nonzero(~ok)[0, 0])
        raise SaliencelabError(
            f"The metric {name} scores 2×2 mosaics, so each mask must be a union of whole "
            f"quadrants, but the mask of sample {i} is not; build the mosaics, their masks and "
            "targets with sl.metrics.make_mosaics."
        )


@register_metric
class Focus(Metric):
    """Focus (Arias-Duart et al. 2022): the share of positive relevance on the target's images.

    On a 2×2 mosaic (see :func:`make_mosaics`) with `masks` marking the quadrants of the target
    class: value = Σ_{p ∈ mask} max(R_p, 0) / Σ_p max(R_p, 0). Quantus 0.6.0 `Focus` adds 1e-9 to
    the denominator; here a map with no positive relevance gives NaN (undefined), as does an
    empty mask. Each mask must be a union of whole quadrants (Quantus takes the quadrants'
    labels, `Mosaics.quadrants`); any other mask is refused, since the value would then be the
    relevance mass of an object, not Focus.
    """

    name = "focus"
    direction = "higher"
    value_range = (0.0, 1.0)
    needs = ("masks",)
    family = "localisation"
    reference = "Arias-Duart et al. 2022, Focus! Rating XAI Methods and Finding Biases (FUZZ-IEEE)"

    def __init__(self) -> None:
        super().__init__()

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        if maps.dim() != 3:
            raise SaliencelabError(
                f"The metric {self.name} needs (B, H, W) maps of 2×2 mosaics, got maps of shape "
                f"{tuple(maps.shape)}."
            )
        if masks is not None and masks.shape == maps.shape:
            check_mosaic_masks(self.name, masks.bool())

    def score(self, batch: EvalBatch) -> Scores:
        v, m = flat_maps_and_masks(batch, self.name)
        self.check_inputs(batch.x, batch.maps, m.view(batch.maps.shape))
        r = v.clamp(min=0)
        values = nan_where(ratio(total(r, m), total(r)), ~m.any(1))
        return Scores(values=values, extras=target_extras(batch))
