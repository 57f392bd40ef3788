"""Completeness (Sundararajan et al. 2017): attributions sum to the output difference."""

from __future__ import annotations

import math

import torch

from ...core.batching import row_range, row_slice
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
    completeness axiom); plain gradients do not. Forwards: one per input (none where the batch
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
        total = a.flatten(1).double().sum(1)
        delta = self.output_difference(batch).to(total.device)
        gap = (total - delta).abs()
        if self.relative:
            gap = torch.where(delta != 0, gap / delta.abs(), torch.full_like(gap, math.nan))
        return Scores(values=gap, extras={"sum_attributions": total, "output_difference": delta})
