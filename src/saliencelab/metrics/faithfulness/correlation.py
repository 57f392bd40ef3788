"""Faithfulness correlation (Bhatt et al. 2020): attribution sums against output drops."""

from __future__ import annotations

import torch

from ...core.errors import SaliencelabError
from ..base import EvalBatch, Scores, register_metric
from ..checks import check_choice, check_positive_int
from ..stats import pearson
from .perturbation import (
    FaithfulnessMetric,
    baseline_like,
    generator,
    input_first,
    run_rows,
)


def subset_indices(
    name: str, subsets: torch.Tensor | None, b: int, n_units: int, size: int, draws: int, seed: int
) -> torch.Tensor:
    """(1, D, size) drawn or (B, D, size) given unit indices of the subsets of each draw.

    Drawn: `draws` uniformly random subsets of `size` units (seeded, shared by all samples).
    Given: `subsets` of unit indices, (D, size) or (B, D, size).
    """
    if subsets is None:
        keys = torch.rand(draws, n_units, generator=generator(seed))
        return keys.topk(size, dim=1).indices[None]
    subsets = torch.as_tensor(subsets)
    if subsets.is_floating_point() or subsets.is_complex() or subsets.dtype == torch.bool:
        raise SaliencelabError(
            f"The subsets of {name} are {subsets.dtype}; give integer unit indices."
        )
    subsets = subsets.long().cpu()
    if subsets.dim() == 2:
        subsets = subsets[None]
    if subsets.dim() != 3 or subsets.shape[0] not in (1, b) or subsets.shape[1] < 2:
        raise SaliencelabError(
            f"The subsets of {name} have shape {tuple(subsets.shape)}; give unit indices as "
            f"(draws, size) or (batch={b}, draws, size), with at least 2 draws to correlate."
        )
    if subsets.numel() and (subsets.min() < 0 or subsets.max() >= n_units):
        raise SaliencelabError(
            f"The subsets of {name} index units outside 0..{n_units - 1}; give pixel (or, with "
            "unit='element', channel-pixel) indices of the flattened input."
        )
    return subsets


def unit_attributions(batch: EvalBatch, unit: str) -> torch.Tensor:
    """(B, N) attribution of each unit: the maps for pixels; for elements the full attributions
    when the batch has them, else the maps broadcast over channels."""
    if unit == "pixel":
        return batch.maps.flatten(1).double()
    a = batch.attributions
    if a is None or a.shape != batch.x.shape:
        a = batch.maps[:, None].expand(batch.x.shape)
    return a.reshape(batch.x.shape[0], -1).double()


def subset_sums(a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, D) sums of the (B, N) unit attributions over each subset of idx (1 or B, D, size)."""
    b = a.shape[0]
    d = idx.shape[1]
    flat = idx.to(a.device).expand(b, -1, -1).reshape(b, -1)
    return a.gather(1, flat).view(b, d, -1).sum(-1)


def subset_drop_scores(
    batch: EvalBatch, idx: torch.Tensor, unit: str, fill: torch.Tensor | float, score: str
) -> torch.Tensor:
    """(B, 1 + D) scores: column 0 the input itself, column d + 1 with draw d's units replaced
    by `fill` (a number, or a tensor broadcastable to x). `idx` (1 or B, D, size) unit indices
    (pixels: all channels move together)."""
    b, c, h, w = batch.x.shape
    idx = idx.to(batch.device)
    per_sample = idx.shape[0] > 1
    if unit == "pixel":  # a pixel's index in every channel plane
        planes = torch.arange(c, device=batch.device).view(1, 1, c, 1) * (h * w)
        idx = (idx[:, :, None, :] + planes).flatten(2)
    draws = idx.shape[1]
    if not isinstance(fill, float):  # one flat row per sample, or one for all
        fill = fill[:1] if fill.stride(0) == 0 else fill
        fill = fill.reshape(fill.shape[0], -1)

    def make(samples: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # k >= 1 only: k = 0, the input itself, is known
        d = k - 1
        cols = idx[samples, d] if per_sample else idx[0].index_select(0, d)
        out = batch.x.index_select(0, samples)  # a new tensor, filled in place
        flat = out.view(len(samples), -1)
        if isinstance(fill, float):
            flat.scatter_(1, cols, fill)
        else:
            src = fill.index_select(0, samples) if fill.shape[0] > 1 else fill
            flat.scatter_(1, cols, src.expand(len(samples), -1).gather(1, cols))
        return out

    known = input_first(batch, score)  # type: ignore[arg-type]
    return run_rows(batch, draws + 1, make, score, known)  # type: ignore[arg-type]


@register_metric
class FaithfulnessCorrelation(FaithfulnessMetric):
    """Faithfulness correlation (Bhatt et al. 2020). Higher is better, in [-1, 1].

    For `n_samples` random subsets S of `subset_size` units, replace S by `baseline` and take
    the Pearson correlation, over the subsets, of Σ_{i∈S} a_i with f(x) − f(x_S). Units are
    pixels (all channels together, a = the map; default) or, with `unit="element"`, single
    channel values (a = the full attributions when the batch has them, else the map broadcast
    over channels: Quantus' FaithfulnessCorrelation). Subsets are drawn with `seed`, the same
    for every sample, or given as `subsets` (indices, (n_samples, size) or (B, n_samples, size)).
    f is the target's logit by default, as in Quantus (`score="probability"`: its softmax
    probability). Costs n_samples + 1 forwards per sample. NaN where either side is constant.
    """

    name = "faithfulness_correlation"
    direction = "higher"
    value_range = (-1.0, 1.0)
    reference = "Bhatt et al. 2020, Evaluating and Aggregating Feature-based Model Explanations"

    def __init__(
        self,
        subset_size: int = 224,
        n_samples: int = 100,
        baseline: float | torch.Tensor = 0.0,
        unit: str = "pixel",
        seed: int = 0,
        subsets: torch.Tensor | None = None,
        score: str = "logit",
    ) -> None:
        check_choice(self.name, "unit", unit, ("pixel", "element"))
        check_positive_int(self.name, "subset_size", subset_size)
        check_positive_int(self.name, "n_samples", n_samples, "a correlation needs 2", minimum=2)
        super().__init__(
            subset_size=subset_size,
            n_samples=n_samples,
            baseline=baseline,
            unit=unit,
            seed=seed,
            subsets=subsets,
            score=score,
        )

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        super().check_inputs(x, maps, masks)
        c, h, w = x.shape[1:]
        n_units = h * w if self.unit == "pixel" else c * h * w
        if self.subsets is None and self.subset_size >= n_units:
            # every subset would be the whole input: all of them the same, no correlation
            raise SaliencelabError(
                f"The subset_size {self.subset_size} of {self.name} is not less than the "
                f"{n_units} {self.unit}s of the input; give a subset_size below {n_units}."
            )

    def score(self, batch: EvalBatch) -> Scores:
        self.check_inputs(batch.x, batch.maps)
        b, c, h, w = batch.x.shape
        unit, size, draws = self.unit, self.subset_size, self.n_samples
        n_units = h * w if unit == "pixel" else c * h * w
        if self.subsets is None:  # drawn: the same for every batch of this shape
            idx = self._draws.get(
                (n_units, size, draws, self.seed),
                lambda: subset_indices(self.name, None, b, n_units, size, draws, self.seed),
            )
        else:
            idx = subset_indices(self.name, self.subsets, b, n_units, size, draws, self.seed)
        fill = baseline_like(self.name, self.baseline, batch.x, allow_number=True)
        scores = subset_drop_scores(batch, idx, unit, fill, self.score_kind)
        drops = scores[:, :1] - scores[:, 1:]
        sums = subset_sums(unit_attributions(batch, unit), idx)
        return Scores(
            values=pearson(sums, drops), extras={"attribution_sums": sums, "drops": drops}
        )
