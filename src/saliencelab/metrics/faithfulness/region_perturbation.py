"""Region perturbation AOPC (Samek et al. 2017): MoRF and LeRF orders of patches."""

from __future__ import annotations

import torch

from ...core.errors import SaliencelabError
from ..base import EvalBatch, Scores, register_metric
from ..checks import check_choice, check_positive_int, check_range
from .perturbation import (
    FaithfulnessMetric,
    baseline_like,
    generator,
    patch_ids,
    ranked_replacement_scores,
    ranks_of,
)


class _RegionPerturbation(FaithfulnessMetric):
    """AOPC of cumulative patch perturbation; subclasses fix the order."""

    descending: bool = True
    value_range = (-1.0, 1.0)
    range_of_probabilities = True
    reference = (
        "Samek et al. 2017, Evaluating the visualization of what a deep neural network has learned"
    )

    def __init__(
        self,
        patch_size: int = 8,
        regions: int | None = 100,
        perturbation: str = "baseline",
        baseline: float | torch.Tensor = 0.0,
        uniform_range: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
        score: str = "probability",
    ) -> None:
        check_positive_int(self.name, "patch_size", patch_size)
        if regions is not None:
            check_positive_int(self.name, "regions", regions)
        check_choice(self.name, "perturbation", perturbation, ("baseline", "uniform"))
        check_range(self.name, "uniform_range", uniform_range)
        super().__init__(
            patch_size=patch_size,
            regions=regions,
            perturbation=perturbation,
            baseline=baseline,
            uniform_range=uniform_range,
            seed=seed,
            score=score,
        )

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        super().check_inputs(x, maps, masks)
        h, w = x.shape[-2:]
        p = self.patch_size
        if p > min(h, w):
            raise SaliencelabError(
                f"The patch_size {p} of {self.name} is larger than the {h}×{w} image; give a "
                f"patch_size of at most {min(h, w)}."
            )

    def score(self, batch: EvalBatch) -> Scores:
        self.check_inputs(batch.x, batch.maps)
        b, c, h, w = batch.x.shape
        p = self.patch_size
        ids, n_patches = patch_ids(h, w, p, batch.device)
        regions = n_patches if self.regions is None else min(self.regions, n_patches)
        # Relevance of each patch, and the rank of each pixel's patch in the order.
        sums = torch.zeros(b, n_patches, dtype=torch.float64, device=batch.device)
        sums.index_add_(1, ids, batch.maps.flatten(1).double())
        order = torch.sort(sums, dim=1, descending=self.descending, stable=True).indices
        pixel_ranks = ranks_of(order).gather(1, ids.expand(b, -1))
        if self.perturbation == "baseline":
            fill = baseline_like(self.name, self.baseline, batch.x, allow_number=True)
        else:
            lo, hi = self.uniform_range
            noise = torch.rand(c, h, w, generator=generator(self.seed), dtype=torch.float64)
            fill = (lo + (hi - lo) * noise).to(batch.x).expand(batch.x.shape)
        counts = torch.arange(regions + 1, device=batch.device)
        curve = ranked_replacement_scores(
            batch, pixel_ranks, counts, fill, batch.x, self.score_kind
        ).double()
        drops = curve[:, :1] - curve  # f(x) - f(x_k), k = 0..L (the k = 0 term is 0)
        return Scores(
            values=drops.mean(dim=1),
            curves=drops,
            curve_x=counts.double().cpu(),
            extras={"scores": curve},
        )


@register_metric
class AOPCMoRF(_RegionPerturbation):
    """AOPC, most relevant first (Samek et al. 2017). Higher is better.

    The map is cut into non-overlapping `patch_size` patches (a centred grid when the size does
    not divide the image), ranked by summed relevance, descending (ties by raster position).
    Patch after patch is replaced, cumulatively, by `baseline` (`perturbation="baseline"`) or by
    uniform noise in `uniform_range` (`"uniform"`, one seeded noise image shared by all samples).
    With x_0 = x and x_k the input after k patches,
    AOPC = 1/(L+1) · Σ_{k=0..L} (f(x) − f(x_k)), L = `regions` (None: all patches).
    The curve is f(x) − f(x_k); Quantus' RegionPerturbation returns its k = 1..L part, so
    AOPC = sum(Quantus curve) / (L + 1). Costs L + 1 forwards per sample.
    """

    name = "aopc_morf"
    direction = "higher"
    descending = True


@register_metric
class AOPCLeRF(_RegionPerturbation):
    """AOPC, least relevant first (Samek et al. 2017): as aopc_morf with patches ascending.

    Removing irrelevant patches first should barely change the output: lower is better.
    """

    name = "aopc_lerf"
    direction = "lower"
    descending = False
