"""RISE (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018).

    map = 1 / (N · p) · Σ_i S(x ⊙ M_i) M_i

over N random soft masks M_i, p the probability of keeping a grid cell. Mask i (the paper's
construction): a binary s × s grid, each cell 1 with probability p; upsampled bilinearly to
(s + 1)·c_H × (s + 1)·c_W with c = ⌈H / s⌉, ⌈W / s⌉ the cell size; cropped to H × W at a random
shift (0 ≤ dy < c_H, 0 ≤ dx < c_W). The bilinear upsampling is `F.interpolate(...,
align_corners=False)` (edge values clamped; the paper's code used skimage's `resize` with
reflection at the border).

All N grids and shifts are drawn once from a seeded `torch.Generator` (N·(s² + 2) numbers);
the full-size masks are built per chunk from the grids of that chunk's rows, so mask i depends
only on (seed, i): the map is the same for any chunk size. Rows are (sample, mask) pairs,
n_rows = B × N, run by `ctx.engine.forwards`; Σ S·M is accumulated per sample with `index_add_`.
"""

from __future__ import annotations

import math
import operator
from contextlib import closing

import torch
import torch.nn.functional as F

from ...core.batching import row_range, row_slice
from ...core.context import Context, MethodOutput, check_image_batch
from ...core.errors import SaliencelabError
from ...core.registry import register
from ..options import is_number
from ..reference import check_seed

__all__ = ["RiseMasks", "rise"]


class RiseMasks:
    """N random RISE masks for H × W images; `masks(indices)` builds those masks (n, H, W)."""

    def __init__(
        self,
        n_masks: int,
        size: tuple[int, int],
        cell: int,
        p_keep: float,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.n_masks, self.size, self.cell, self.p_keep = n_masks, tuple(size), cell, p_keep
        height, width = self.size
        self.cell_size = (math.ceil(height / cell), math.ceil(width / cell))
        self.up_size = ((cell + 1) * self.cell_size[0], (cell + 1) * self.cell_size[1])
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        grids = torch.rand(n_masks, cell, cell, generator=gen) < p_keep
        shifts = torch.rand(n_masks, 2, generator=gen) * torch.tensor(self.cell_size)
        self.grids = grids.to(device=device, dtype=dtype)
        self.shifts = shifts.long().to(device)  # uniform integers in [0, c)
        self.dtype = dtype

    def masks(self, indices: torch.Tensor) -> torch.Tensor:
        """(n, H, W) masks of these indices, values in [0, 1]."""
        indices = indices.to(self.grids.device)
        up = F.interpolate(
            self.grids[indices][:, None], size=self.up_size, mode="bilinear", align_corners=False
        )[:, 0]
        height, width = self.size
        dy, dx = self.shifts[indices, 0], self.shifts[indices, 1]
        hs = dy[:, None] + torch.arange(height, device=up.device)  # (n, H)
        ws = dx[:, None] + torch.arange(width, device=up.device)  # (n, W)
        n = torch.arange(len(indices), device=up.device)[:, None, None]
        return up[n, hs[:, :, None], ws[:, None, :]]


def _check(n_masks, cell, p_keep) -> tuple[int, int, float]:
    def positive(value, name):
        try:
            if isinstance(value, bool):
                raise TypeError
            v = operator.index(value)
        except TypeError:
            v = 0
        if v < 1:
            raise SaliencelabError(f"rise: {name} must be a positive int, not {value!r}.")
        return v

    n_masks, cell = positive(n_masks, "n_masks"), positive(cell, "cell")
    if not is_number(p_keep) or not 0 < p_keep <= 1:
        raise SaliencelabError(f"rise: p_keep must be a probability in (0, 1], not {p_keep!r}.")
    return n_masks, cell, float(p_keep)


@register(
    "rise",
    family="perturbation",
    cost="n_masks forwards",
    reduction="score-weighted mean of the masks (same for every channel)",
    rowwise=True,  # the masks depend on (seed, mask index) only
    # a mean score where each pixel is kept, offset by the mean score everywhere: drawn min-max
    # as in the paper (centred on zero, the offset painted every pixel one colour)
    signed=False,
)
def rise(
    ctx: Context,
    *,
    n_masks: int = 4000,
    cell: int = 7,
    p_keep: float = 0.5,
    seed: int = 0,
) -> MethodOutput:
    """RISE (Petsiuk et al. 2018): map = Σ_i S(x ⊙ M_i) M_i / (N · p_keep), random soft masks.

    M_i: a `cell` × `cell` grid of cells kept with probability `p_keep`, upsampled bilinearly to
    (cell + 1)·⌈H / cell⌉ and cropped at a random shift; `n_masks` masks drawn with `seed` (the
    same masks for every sample and any chunk size). Returns (B, H, W) maps.
    """
    check_image_batch(ctx.x, "rise")
    if not (ctx.x.is_floating_point() or ctx.x.is_complex()):
        raise SaliencelabError(
            f"rise multiplies the inputs by soft masks in [0, 1], which would turn {ctx.x.dtype} "
            "inputs into fractions; give images as floats (x.float() / 255), and for category "
            "or token ids use feature_ablation, occlusion or kernelshap with an integer baseline "
            "(e.g. a padding id)."
        )
    n_masks, cell, p_keep = _check(n_masks, cell, p_keep)
    seed = check_seed("rise", seed)
    x = ctx.x
    batch, _, height, width = x.shape
    dev = x.device
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    masks = RiseMasks(n_masks, (height, width), cell, p_keep, seed, dev, dtype)
    chunk_masks: dict[str, torch.Tensor] = {}
    # Row r = mask r // B of sample r % B: per-row tables on the device, sliced per chunk (the
    # engine's chunk rows are CPU ranges: moved to a GPU, they would wait for it every chunk).
    ids = torch.arange(batch * n_masks, device=dev)
    mask_of, samples = ids // batch, ids % batch

    def sample_of(rows: torch.Tensor) -> torch.Tensor:
        return row_slice(samples, rows)

    # A chunk's rows share few masks, built once: masks first .. last, read from its range.
    def make_inputs(rows: torch.Tensor) -> torch.Tensor:
        lo, hi = row_range(rows)
        first = lo // batch
        m = masks.masks(torch.arange(first, (hi - 1) // batch + 1, device=dev))
        chunk_masks["m"] = m
        return x[sample_of(rows)] * m[row_slice(mask_of, rows) - first][:, None]

    total = torch.zeros(batch, height, width, dtype=dtype, device=dev)
    passes = ctx.engine.forwards(batch * n_masks, make_inputs, sample_of, ctx.target)
    with closing(passes) as chunks:  # the model restored also if this frame is kept
        for chunk in chunks:
            first = row_range(chunk.rows)[0] // batch
            m = chunk_masks["m"][row_slice(mask_of, chunk.rows) - first]
            total.index_add_(0, chunk.samples, m * chunk.scores.to(dev, dtype)[:, None, None])
    maps = total / (n_masks * p_keep)
    return MethodOutput(maps[:, None].expand(x.shape), maps=maps)
