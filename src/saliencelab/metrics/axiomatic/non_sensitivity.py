"""Non-sensitivity (Nguyen & Martínez 2020): zero attribution exactly where the output ignores."""

from __future__ import annotations

import math
from typing import Literal

import torch

from ...core.batching import row_range, row_slice
from ...core.errors import SaliencelabError
from ..base import EvalBatch, Metric, Scores, register_metric
from ..checks import check_choice, check_positive, check_positive_int
from ..faithfulness.perturbation import as_01, exact_float, replaced, rows_of
from ._common import OUTPUTS, BaselineSpec, Output, baseline_of, check_baseline


@register_metric
class NonSensitivity(Metric):
    """Non-sensitivity violations (Nguyen & Martínez 2020), lower is better.

    Features are taken `features_in_step` at a time in raster order; each group is replaced by
    the baseline in one forward. A group violates the axiom when its attribution is zero
    (max |a| / max_image |a| < eps, `normalise=False`: max |a| < eps) but the output moves
    (|f(x') − f(x)| ≥ eps), or when its attribution is non-zero but the output does not move.
    The value is the number of violating groups (`fraction=True`: their fraction).

    `unit="pixel"`: a feature is a pixel of the maps, all channels replaced together;
    `unit="element"`: a feature is one input element (c, h, w), with the full attributions when
    the batch has them, else the maps broadcast over channels (Quantus' NonSensitivity, which
    also normalises by the maximum over the whole batch rather than per sample). f is the target's
    softmax probability (`output="logit"`: its logit). Forwards per sample: 1 + the number of
    groups, run through the engine in chunks.
    """

    name = "non_sensitivity"
    direction = "lower"
    value_range = (0.0, math.inf)
    needs = ("model",)
    family = "axiomatic"
    reference = (
        "Nguyen & Martínez 2020, On Quantitative Aspects of Model Interpretability "
        "(arXiv:2007.07584)"
    )

    def __init__(
        self,
        eps: float = 1e-5,
        features_in_step: int = 1,
        baseline: BaselineSpec = "black",
        unit: Literal["pixel", "element"] = "pixel",
        normalise: bool = True,
        output: Output = "probability",
        fraction: bool = False,
    ) -> None:
        check_positive(self.name, "eps", eps, "the zero threshold")
        check_positive_int(self.name, "features_in_step", features_in_step)
        check_choice(self.name, "unit", unit, ("pixel", "element"))
        check_baseline(self.name, baseline)
        check_choice(self.name, "output", output, OUTPUTS)
        super().__init__(
            eps=eps,
            features_in_step=features_in_step,
            baseline=baseline,
            unit=unit,
            normalise=normalise,
            output=output,
            fraction=fraction,
        )

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        check_image_inputs(x)
        if isinstance(self.baseline, torch.Tensor):
            baseline_of(x, self.baseline)  # one that does not broadcast: one sentence

    def _attributions(self, batch: EvalBatch) -> torch.Tensor:
        """(B, F) |a| per feature, normalised per sample by its maximum if asked."""
        x = batch.x
        if self.unit == "pixel":
            a = batch.maps
        elif batch.attributions is not None and batch.attributions.shape == x.shape:
            a = batch.attributions
        else:
            a = batch.maps.unsqueeze(1).expand(-1, x.shape[1], -1, -1)
        a = a.flatten(1).double().abs()
        if self.normalise:
            top = a.amax(dim=1, keepdim=True)
            a = a / torch.where(top > 0, top, torch.ones_like(top))
        return a

    def score(self, batch: EvalBatch) -> Scores:
        x = batch.x
        check_image_inputs(x)
        b, c, h, w = x.shape
        k = self.features_in_step
        a = self._attributions(batch)
        n_feat = a.shape[1]
        groups = -(-n_feat // k)
        base = baseline_of(x, self.baseline)  # broadcastable to x
        exact = exact_float(groups)
        feature_group = (torch.arange(n_feat, device=x.device) // k).to(exact)
        shape = (-1, 1, h, w) if self.unit == "pixel" else (-1, c, h, w)

        # the sample and the feature group of every row (-1: none, an original row), made once
        # on the device and read per chunk as slices (`row_range`)
        n_rows = b * (groups + 1)
        every = torch.arange(n_rows, device=x.device)
        pert = every < b * groups
        sample_of_row = torch.where(pert, every // groups, every - b * groups)
        group_of_row = torch.where(pert, every % groups, torch.full_like(every, -1)).to(exact)

        def make(rows: torch.Tensor) -> torch.Tensor:
            lo, hi = row_range(rows)
            sample = sample_of_row[lo:hi]
            # 1 where the feature keeps x: all of an original row (group -1)
            keep = as_01(torch.ne, feature_group, group_of_row[lo:hi, None], x.dtype).view(shape)
            return replaced(rows_of(x, sample), keep, rows_of(base, sample))

        def sample_of(rows: torch.Tensor) -> torch.Tensor:
            return row_slice(sample_of_row, rows)

        kind = "logit" if self.output == "logit" else "probability"
        f = batch.scores(n_rows, make, sample_of, kind=kind).double()
        moved = (f[: b * groups].view(b, groups) - f[b * groups :, None]).abs() >= self.eps
        pad = groups * k - n_feat
        a_groups = torch.nn.functional.pad(a, (0, pad)).view(b, groups, k).amax(dim=2)
        zero = a_groups < self.eps
        violations = (moved & zero) | (~moved & ~zero)
        values = violations.sum(1).double()
        if self.fraction:
            values = values / groups
        return Scores(
            values=values,
            extras={
                "zero_but_sensitive": (moved & zero).sum(1),
                "nonzero_but_insensitive": (~moved & ~zero).sum(1),
            },
        )


def check_image_inputs(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise SaliencelabError(
            f"non_sensitivity needs (B, C, H, W) image inputs, got shape {tuple(x.shape)}."
        )
