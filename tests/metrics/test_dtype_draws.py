"""The metrics' random draws do not depend on the model's floating dtype.

A float64 copy of a model, scored on the same float32 images and maps, gets the float32 model's
values up to rounding: noise, re-initialised weights and random classes are drawn in float32 (or
from the values, not their dtype's bytes) and cast. Deterministic metrics agree to ~1e-7, so a
difference beyond rounding is a draw that followed the dtype.
"""

from __future__ import annotations

import pytest
import torch

import saliencelab as sl

METRICS = {
    "model_randomisation": {"layers": 3},
    "max_sensitivity": {"n_samples": 3},
    "avg_sensitivity": {"n_samples": 3},
    "local_lipschitz": {"n_samples": 3},
    "random_logit": {},
}


@pytest.fixture(scope="module")
def setting():
    m32 = sl.load_model("shapes_cnn")
    x = m32.preprocess(sl.data.shapes.make(4, seed=0))
    maps = {"saliency": sl.explain(m32, x, methods="saliency")["saliency"].maps}
    return m32, x, maps


@pytest.mark.parametrize("metric", list(METRICS))
def test_a_float64_model_scores_as_the_float32_model(setting, metric):
    m32, x, maps = setting
    m64 = sl.load_model("shapes_cnn")
    m64.module.double()
    values = [
        sl.evaluate(
            m, x, maps, metrics={metric: METRICS[metric]}, explainer="saliency", references=False
        )["saliency"][metric].values
        for m in (m32, m64)
    ]
    # The randomisation tests rank the maps (Spearman): float64 breaks float32's near-ties
    # differently, which moves a value by up to ~1e-2 on some CPUs' kernels; other draws moved
    # them by 0.1-0.6.
    rtol = 2e-2 if metric in ("model_randomisation", "random_logit") else 1e-4
    torch.testing.assert_close(values[1], values[0], rtol=rtol, atol=1e-5)
    assert next(m64.module.parameters()).dtype == torch.float64  # restored in its dtype


def test_draws_do_not_follow_torchs_default_dtype():
    """The float32 draws name their dtype: a user's torch.set_default_dtype(torch.float64) does
    not change the noise of the robustness metrics, nor feature visualization's draws."""
    from saliencelab.featurevis.param import make_param
    from saliencelab.featurevis.transforms import Rng
    from saliencelab.metrics.robustness._noisy import draw_noise

    x = torch.zeros(2, 3, 8, 8)

    def draws():
        return [
            draw_noise(x, 3, 0.1, "uniform", seed=4),
            draw_noise(x, 3, 0.1, "gaussian", seed=4),
            Rng(seed=2).normal(x),
            *[make_param(p, 2, (8, 8), seed=3)().detach() for p in ("fft", "pixel", "maco")],
        ]

    plain = draws()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        wide = draws()
    finally:
        torch.set_default_dtype(before)
    for a, b in zip(plain, wide, strict=True):
        torch.testing.assert_close(b.float(), a, rtol=0, atol=1e-6)
