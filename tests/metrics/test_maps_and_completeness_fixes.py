"""Fixes of the maps check and of completeness, found by a sweep.

- 1-D signals (B, C, L) whose batch size equals their channel count were refused as "one image
  without a batch axis"; maps of signals and volumes of a wrong shape were scored unchecked.
- completeness summed the per-element attributions of KernelSHAP, LIME and feature ablation,
  which repeat each feature's value once per element of the feature: exact Shapley values, which
  sum to f(x) − f(baseline), showed a large gap.

Each test compares with a reference computed here (the same samples in a batch of another size,
Shapley values enumerated over coalitions, score drops of each feature).
"""

from __future__ import annotations

import itertools
import math
import re
import warnings

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.metrics import Explainer

C, L = 3, 20


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def conv1d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(C, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()


def mlp(features: int = 6) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, 2)).eval()


def small_cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()


def score(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B,) float64 logit of class 1."""
    with torch.no_grad():
        return model(x)[:, 1].double()


# -- maps of 1-D signals and other inputs -----------------------------------------------------


def test_signals_with_as_many_samples_as_channels_score_as_in_a_larger_batch():
    """Was: x (3, 3, 20) with (3, 20) integrated-gradients maps was refused as one image without
    a batch axis (B = C); B = 4 was scored. The 3 samples score as they do beside a fourth."""
    model = conv1d()
    torch.manual_seed(3)
    x4 = torch.randn(4, C, L)
    x3 = x4[:3].clone()
    metrics = ["sparseness", "completeness"]
    values = {}
    for x in (x3, x4):
        ex = sl.explain(model, x, methods="integrated_gradients", target=1)
        assert ex["integrated_gradients"].maps.shape == (x.shape[0], L)
        rep = sl.evaluate(model, x, ex, metrics=metrics, target=1)
        values[x.shape[0]] = {m: rep["integrated_gradients"][m].values for m in metrics}
    for m in metrics:
        torch.testing.assert_close(values[3][m], values[4][m][:3], atol=1e-6, rtol=1e-5)
    # the metric object too, with and without the model
    maps = sl.explain(model, x3, methods="integrated_gradients", target=1)
    maps = maps["integrated_gradients"].maps
    alone = sl.metrics.get("sparseness")()(maps, x=x3).values
    torch.testing.assert_close(alone, values[3]["sparseness"])
    with_model = sl.metrics.get("sparseness")()(maps, x=x3, model=model, target=1).values
    torch.testing.assert_close(with_model, alone)


def test_one_image_without_a_batch_axis_is_still_named_for_an_image_model():
    """(3, 3, 20) inputs with (3, 20) maps of a Conv2d model: one 3 × 20 image of 3 channels
    (its channels would be read as the batch); an image model's inputs are refused as before."""
    x = torch.randn(3, 3, 20)
    maps = torch.rand(3, 20)
    with pytest.raises(sl.SaliencelabError, match="one image without a batch axis"):
        sl.metrics.get("sparseness")()(maps, x=x, model=small_cnn(), target=1)
    with pytest.raises(sl.SaliencelabError, match="one image without a batch axis"):
        sl.evaluate(small_cnn(), x, {"m": maps}, metrics="sparseness", target=1)
    # unambiguous shapes (C ≠ H) without a model: named too
    with pytest.raises(sl.SaliencelabError, match="one image without a batch axis"):
        sl.metrics.get("sparseness")()(torch.rand(8, 8), x=torch.rand(3, 8, 8))


@pytest.mark.parametrize(
    ("x_shape", "maps_shape"),
    [
        ((4, 3, 20), (4, 7)),  # signals: another length
        ((4, 3, 20), (4, 2, 20)),  # signals: neither (B, L) nor shaped like x
        ((4, 3, 20), (4, 20, 1)),
        ((2, 3, 2, 4, 4), (2, 4, 4)),  # volumes: a depth axis missing
        ((2, 3, 2, 4, 4), (2, 2, 4, 5)),
    ],
)
def test_maps_of_a_wrong_shape_for_signals_and_volumes_are_refused(x_shape, maps_shape):
    """Was: scored without complaint (only image and tabular maps were checked)."""
    x, maps = torch.randn(*x_shape), torch.rand(*maps_shape)
    spatial = str((x_shape[0], *x_shape[2:]))
    with pytest.raises(sl.SaliencelabError, match=rf"give {re.escape(spatial)} maps"):
        sl.metrics.get("sparseness")()(maps, x=x)
    if len(x_shape) == 3:
        with pytest.raises(sl.SaliencelabError, match=r"^wrong: The maps have shape"):
            sl.evaluate(conv1d(), x, {"wrong": maps}, metrics="sparseness", target=1)


@pytest.mark.parametrize(
    ("x_shape", "maps_shape", "scored_shape"),
    [
        ((4, 3, 20), (4, 20), (4, 20)),
        ((4, 3, 20), (4, 1, 20), (4, 20)),  # a channel axis of one is dropped
        ((4, 3, 20), (4, 3, 20), (4, 3, 20)),  # per-element attributions
        ((3, 3, 20), (3, 3, 20), (3, 3, 20)),
        ((2, 3, 2, 4, 4), (2, 2, 4, 4), (2, 2, 4, 4)),
        ((2, 3, 1, 4, 4), (2, 1, 4, 4), (2, 1, 4, 4)),  # depth 1: already (B, D, H, W)
        ((2, 3, 2, 4, 4), (2, 1, 2, 4, 4), (2, 2, 4, 4)),
        ((2, 3, 8, 8), (2, 1, 8, 8), (2, 8, 8)),
        ((5, 6), (5, 6), (5, 6)),
    ],
)
def test_maps_that_fit_the_inputs_are_kept(x_shape, maps_shape, scored_shape):
    maps = torch.rand(*maps_shape)
    batch = sl.metrics.base.make_batch(maps, x=torch.randn(*x_shape))
    assert batch.maps.shape == scored_shape
    expected = sl.metrics.get("sparseness")()(maps.reshape(scored_shape)).values
    torch.testing.assert_close(sl.metrics.get("sparseness")()(maps, x=batch.x).values, expected)


# -- completeness of attributions of features -----------------------------------------------------


def shapley_values(
    model: nn.Module, x: torch.Tensor, mask: torch.Tensor, base: float = 0.0
) -> torch.Tensor:
    """(B, M) exact Shapley values of the M features of `mask` (ids 0..M-1, shaped like one row
    of x or broadcast to it), each coalition's features kept and the others set to `base`."""
    m = int(mask.max()) + 1
    v = {}
    for size in range(m + 1):
        for s in itertools.combinations(range(m), size):
            keep = torch.isin(mask, torch.tensor(s, dtype=torch.long))
            v[s] = score(model, torch.where(keep, x, torch.full_like(x, base)))
    phi = torch.zeros(x.shape[0], m, dtype=torch.float64)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            w = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for s in itertools.combinations(others, size):
                phi[:, i] += w * (v[tuple(sorted((*s, i)))] - v[s])
    return phi


def test_exact_kernelshap_of_grouped_features_is_complete():
    """Was: a gap of 0.69 / 0.013 / 1.12 (each group's Shapley value counted once per member);
    Σφ = f(x) − f(0) exactly, so the gap is ≈ 0, and the sum is that of φ enumerated here."""
    model = mlp()
    torch.manual_seed(4)
    x = torch.randn(3, 6)
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    phi = shapley_values(model, x, groups)
    delta = score(model, x) - score(model, torch.zeros(1, 6))
    torch.testing.assert_close(phi.sum(1), delta)  # the reference is complete

    ex = sl.explain(model, x, methods="kernelshap", target=1, feature_mask=groups)
    a = ex["kernelshap"]
    torch.testing.assert_close(a.extras["shapley_values"], phi, atol=1e-5, rtol=1e-5)
    rep = sl.evaluate(model, x, ex, metrics="completeness", target=1)
    result = rep["kernelshap"]["completeness"]
    torch.testing.assert_close(result.extras["sum_attributions"], phi.sum(1), atol=1e-5, rtol=0)
    assert result.values.max() < 1e-5
    # the metric object, told the method and its mask by its explainer
    explainer = Explainer("kernelshap", {"feature_mask": groups})
    metric = sl.metrics.get("completeness")()
    alone = metric(
        a.maps, x=x, model=model, target=1, attributions=a.attributions, explainer=explainer
    )
    torch.testing.assert_close(alone.values, result.values)


def test_kernelshap_on_the_default_image_grid_is_complete():
    """The default grid of an image (here 4 cells of 4 × 4 pixels, 3 channels: 48 elements per
    feature): the gap was about 47 Σφ; the sum is that of φ enumerated over the cells."""
    model = small_cnn()
    torch.manual_seed(5)
    x = torch.rand(2, 3, 8, 8)
    ex = sl.explain(model, x, methods="kernelshap", target=1, n_segments=4)
    a = ex["kernelshap"]
    mask = a.extras["feature_mask"]
    assert int(mask.max()) + 1 == 4 and bool(a.extras["exact"].all())
    phi = torch.stack([shapley_values(model, x[i : i + 1], mask[i])[0] for i in range(2)])
    rep = sl.evaluate(model, x, ex, metrics="completeness", target=1, references=False)
    result = rep["kernelshap"]["completeness"]
    torch.testing.assert_close(result.extras["sum_attributions"], phi.sum(1), atol=1e-5, rtol=0)
    assert result.values.max() < 1e-5
    # the maps alone (no attributions): one value per pixel, each cell counted once
    metric = sl.metrics.get("completeness")()
    maps_only = metric(
        a.maps, x=x, model=model, target=1, explainer=Explainer("kernelshap", {"n_segments": 4})
    )
    torch.testing.assert_close(maps_only.values, result.values, atol=1e-5, rtol=0)


def test_feature_ablation_and_lime_sum_each_features_value_once():
    """Σ_g of each feature's score drop (feature ablation), of its coefficient (LIME), computed
    here from the groups, not Σ over the elements."""
    model = mlp()
    torch.manual_seed(6)
    x = torch.randn(3, 6)
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    drops = torch.stack(
        [score(model, x) - score(model, torch.where(groups == g, 0.0, x)) for g in range(3)], 1
    )
    methods = {"feature_ablation": {"feature_mask": groups}, "lime": {"feature_mask": groups}}
    ex = sl.explain(model, x, methods=methods, target=1)
    rep = sl.evaluate(model, x, ex, metrics="completeness", target=1)
    delta = score(model, x) - score(model, torch.zeros(1, 6))
    expected = {
        "feature_ablation": drops.sum(1),
        "lime": ex["lime"].extras["coefficients"].double().sum(1),
    }
    for name, total in expected.items():
        result = rep[name]["completeness"]
        torch.testing.assert_close(result.extras["sum_attributions"], total, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.values, (total - delta).abs(), atol=1e-5, rtol=0)


def test_per_element_attributions_are_summed_as_before():
    """Integrated Gradients (one value per element) is summed element by element, even where an
    explainer of a feature-mask method is given for every map (its mask does not fit IG)."""
    model = small_cnn()
    torch.manual_seed(7)
    x = torch.rand(2, 3, 8, 8)
    ex = sl.explain(model, x, methods="integrated_gradients", target=1)
    a = ex["integrated_gradients"]
    total = a.attributions.double().flatten(1).sum(1)
    delta = score(model, x) - score(model, torch.zeros(1, 3, 8, 8))
    for explainer in (None, "kernelshap"):
        rep = sl.evaluate(
            model, x, ex, metrics="completeness", target=1, references=False, explainer=explainer
        )
        result = rep["integrated_gradients"]["completeness"]
        torch.testing.assert_close(result.extras["sum_attributions"], total)
        torch.testing.assert_close(result.values, (total - delta).abs(), atol=1e-6, rtol=0)
