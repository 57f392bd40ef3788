"""Completeness (Sundararajan et al. 2017): attributions sum to the output difference."""

from __future__ import annotations

import math

import torch

from ...core.batching import row_range, row_slice
from ...core.errors import SaliencelabError
from ...core.registry import get_method
from ...methods.perturbation.features import feature_mask
from ..base import EvalBatch, Metric, Scores, register_metric
from ..checks import check_choice
from ._common import OUTPUTS, BaselineSpec, Output, baseline_of, check_baseline


@register_metric
class Completeness(Metric):
    """Completeness gap (Sundararajan et al. 2017, Integrated Gradients), lower is better.

    gap = |Σ_i a_i − (f(x) − f(x'))| with f the target's logit (`output="probability"`: its
    softmax probability) and x' the baseline: a number, a tensor, or per sample the minimum
    ("black"), maximum ("white") or mean ("mean") of its values. `relative=True` divides by
    |f(x) − f(x')| (NaN where that is 0). Σ a sums the full input-space attributions when the
    batch has them, else the maps. Integrated Gradients with enough steps scores ≈ 0 (its
    completeness axiom); plain gradients do not.

    Attributions of features (KernelSHAP, LIME, feature ablation: every element of feature g
    holds its value φ_g) are summed once per feature: Σ_g φ_g = Σ_i a_i / |g(i)|, |g(i)| the
    number of elements in i's feature, not Σ_i a_i = Σ_g |g| φ_g; exact KernelSHAP scores ≈ 0.
    The feature mask is the one the batch's explainer (`sl.evaluate` gives each method's,
    options included) makes for these inputs (`feature_mask`, `n_segments`), used where every
    feature's elements hold one value; give `explainer=sl.metrics.Explainer(method, options)`
    to a metric object for the same. Forwards: one per input (none where the batch
    already holds the inputs' logits, e.g. from resolving the predicted class), plus one per
    baseline: B for per-sample baselines, one for a baseline every sample shares.

    Quantus' `Completeness` tests exact equality of the same two sides (a boolean); this is the
    size of the gap.
    """

    name = "completeness"
    direction = "lower"
    value_range = (0.0, math.inf)
    needs = ("model",)
    family = "axiomatic"
    reference = "Sundararajan et al. 2017, Axiomatic Attribution for Deep Networks (ICML)"

    def __init__(
        self, baseline: BaselineSpec = 0.0, output: Output = "logit", relative: bool = False
    ) -> None:
        check_baseline(self.name, baseline)
        check_choice(self.name, "output", output, OUTPUTS)
        super().__init__(baseline=baseline, output=output, relative=relative)

    def check_inputs(
        self, x: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None
    ) -> None:
        if isinstance(self.baseline, torch.Tensor):
            baseline_of(x, self.baseline)  # one that does not broadcast: one sentence

    def output_difference(self, batch: EvalBatch) -> torch.Tensor:
        """(B,) f(x) − f(x') of the target class.

        One pass over the B inputs then the baselines (where the batch already holds the
        inputs' logits, `EvalBatch.input_logits`, only the baselines run): one baseline row
        when all samples share the baseline (a number, or a tensor without a batch of its own),
        scored for every sample's target, else B. Each chunk of rows is copied straight into
        the memory layout the engine feeds: one copy, no 0/1 blend of the two sides, no
        conversion copy in the engine.
        """
        x = batch.x
        b = x.shape[0]
        base = baseline_of(x, self.baseline)  # broadcastable to x
        if isinstance(self.baseline, (int, float)):
            base = base[:1]  # the same image for every sample
        shared = base.shape[0] == 1
        layout = batch.row_layout()
        kind = "logit" if self.output == "logit" else "probability"
        known = batch.input_logits is not None
        first = b if known else 0  # the first row to run: 0 (inputs) or b (baselines)

        def make(rows: torch.Tensor) -> torch.Tensor:
            # The engine's chunks are ranges of rows, in order (`row_range`).
            n, lo = rows.numel(), row_range(rows)[0] + first
            shape = (n, *x.shape[1:])
            out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
            k = max(0, min(n, b - lo))  # rows lo .. lo + k - 1 are inputs, the rest baselines
            if k:
                out[:k].copy_(x[lo : lo + k])
            if k < n:
                j = lo + k - b  # the sample of the first baseline row
                side = base[:1] if shared else base[j : j + n - k]
                out[k:].copy_(side.expand(n - k, *x.shape[1:]))
            return out

        n_rows = b - first + (1 if shared else b)
        # the sample of each row, on the device (a shared baseline row: sample 0, scored for all
        # below)
        samples = (torch.arange(n_rows, device=x.device) + first) % b

        def sample_of(rows: torch.Tensor) -> torch.Tensor:
            return row_slice(samples, rows)

        f = batch.scores(n_rows, make, sample_of, kind="logits" if shared else kind)
        if shared:
            f_base = batch.pick(f[-1:].expand(b, -1), None, kind).double()
            f_x = None if known else batch.pick(f[:b], None, kind).double()
        else:
            f = f.double()
            f_base, f_x = f[b - first :], None if known else f[:b]
        if f_x is None:
            f_x = batch.input_scores(kind).double().to(f_base.device)
        return f_x - f_base

    def score(self, batch: EvalBatch) -> Scores:
        full = batch.attributions
        a = full if full is not None and full.shape == batch.x.shape else batch.maps
        total = feature_total(batch, a)
        if total is None:  # attributions per element: each counts
            total = a.flatten(1).double().sum(1)
        delta = self.output_difference(batch).to(total.device)
        gap = (total - delta).abs()
        if self.relative:
            gap = torch.where(delta != 0, gap / delta.abs(), torch.full_like(gap, math.nan))
        return Scores(values=gap, extras={"sum_attributions": total, "output_difference": delta})


def feature_mask_of(batch: EvalBatch) -> torch.Tensor | None:
    """The feature mask (B, ...) of ids 0..F_b-1 that the batch's explainer makes for its
    inputs, where its method takes a `feature_mask` option; else None."""
    explainer = batch.explainer
    if explainer is None:
        return None
    options = get_method(explainer.method).options
    if "feature_mask" not in options:
        return None
    options = {**options, **explainer.options}
    try:
        return feature_mask(options["feature_mask"], batch.x, options.get("n_segments", 64))
    except SaliencelabError:  # a mask that does not fit these inputs: no features known
        return None


def feature_total(batch: EvalBatch, a: torch.Tensor) -> torch.Tensor | None:
    """(B,) Σ_g φ_g, each feature's value counted once, where `a` (attributions like the
    inputs, or maps) holds one value φ_g on all elements of each feature g of the explainer's
    mask; else None (per-element attributions, or no mask known)."""
    mask = feature_mask_of(batch)
    if mask is None:
        return None
    if a.dim() > 2 and mask.shape == a.shape[:1] + a.shape[2:]:
        mask = mask[:, None].expand(a.shape)  # a mask shared by the channels
    if mask.shape != a.shape:
        return None
    ids = mask.reshape(a.shape[0], -1)
    flat = a.reshape(a.shape[0], -1).double()
    width = int(ids.max()) + 1
    values = torch.zeros(a.shape[0], width, dtype=flat.dtype, device=flat.device)
    values.scatter_(1, ids.to(flat.device), flat)  # a member's value per feature
    if not torch.equal(values.gather(1, ids.to(flat.device)), flat):
        return None  # not one value per feature: per-element attributions
    return values.sum(1)
