"""Complexity metrics against loop-based formulas, closed-form cases and Quantus 0.6.0.

Quantus settings that compare like with like: `abs=True, normalise=False` (Quantus' default
normalise_by_max rescales the whole batch by one maximum). Sparseness: Quantus adds 1e-7 to each
|value| (tolerance 1e-6); Complexity: Quantus takes ln(p + 1e-12) (tolerance 1e-8);
EffectiveComplexity with eps on the raw maps ↔ ours with relative=False, and on maps we scale
to max |value| 1 per map ↔ ours with relative=True.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import saliencelab as sl


def run(name: str, maps: torch.Tensor, **params) -> torch.Tensor:
    m = sl.metrics.get(name)(**params)
    values = m(maps).values
    assert values.shape == (maps.shape[0],)
    return values


def random_maps(b=5, h=7, w=9, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn((b, h, w), generator=g, dtype=torch.float64)
    maps[1] = maps[1] * (torch.rand((h, w), generator=g) < 0.2)  # sparse, with exact zeros
    return maps


def ref_gini(a: torch.Tensor) -> float:
    """Gini as the mean absolute difference over all pairs / (2 · mean): no sorting."""
    v = a.abs().flatten().tolist()
    n, total = len(v), sum(v)
    if total == 0:
        return math.nan
    diff = sum(abs(x - y) for x in v for y in v)
    return diff / (2 * n * total)


def ref_entropy(a: torch.Tensor) -> float:
    v = a.abs().flatten().tolist()
    total = sum(v)
    if total == 0:
        return math.nan
    return -sum((x / total) * math.log(x / total) for x in v if x > 0)


def ref_count(a: torch.Tensor, eps: float, relative: bool) -> int:
    v = a.abs().flatten().tolist()
    scale = max(v) if relative else 1.0
    return sum(1 for x in v if x > eps * scale)


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def quantus_scores(quantus, cls, maps, **kw) -> np.ndarray:
    b, h, w = maps.shape
    model = nn.Sequential(nn.Flatten(), nn.Linear(h * w, 3))
    x = np.zeros((b, 1, h, w), dtype=np.float32)
    a = maps[:, None].numpy().astype(np.float64).copy()
    m = cls(abs=True, normalise=False, disable_warnings=True, **kw)
    out = m(model=model, x_batch=x, y_batch=np.zeros(b, dtype=int), a_batch=a, device="cpu")
    return np.asarray(out, dtype=np.float64)


# -- sparseness -----------------------------------------------------------------------------------


def test_sparseness_matches_pairwise_gini():
    maps = random_maps()
    maps[2] = 0.0
    got = run("sparseness", maps)
    want = torch.tensor([ref_gini(m) for m in maps], dtype=torch.double)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert math.isnan(got[2])


def test_sparseness_extremes():
    maps = torch.zeros(3, 4, 5)
    maps[0, 1, 2] = -3.0  # all on one pixel
    maps[1] = 2.0  # constant
    maps[2, 0] = 1.0  # a quarter of the pixels
    got = run("sparseness", maps)
    torch.testing.assert_close(got, torch.tensor([1 - 1 / 20, 0.0, 0.75], dtype=torch.double))


def test_sparseness_matches_quantus(quantus):
    maps = random_maps(seed=1)
    want = quantus_scores(quantus, quantus.Sparseness, maps)
    np.testing.assert_allclose(run("sparseness", maps), want, atol=1e-6)


# -- entropy --------------------------------------------------------------------------------------


def test_entropy_matches_loop_and_extremes():
    maps = random_maps(seed=2)
    maps[3] = 0.0
    maps[4] = -1.5
    got = run("entropy", maps)
    want = torch.tensor([ref_entropy(m) for m in maps], dtype=torch.double)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert got[4] == pytest.approx(math.log(63))  # constant map: ln n
    one = torch.zeros(1, 3, 3)
    one[0, 1, 1] = 5.0
    assert math.copysign(1.0, run("entropy", one)[0]) == 1.0  # 0, not -0 (printed "-0.0")
    normalised = run("entropy", maps, normalised=True)
    torch.testing.assert_close(normalised, want / math.log(63), equal_nan=True)


def test_entropy_declares_the_range_of_its_values():
    """H in [0, ln n] is unbounded over map sizes; H / ln n is in [0, 1], and says so."""
    maps = random_maps(seed=3)
    assert sl.metrics.get("entropy")()(maps).value_range == (0.0, math.inf)
    result = sl.metrics.get("entropy")(normalised=True)(maps)
    assert result.value_range == (0.0, 1.0)
    assert ((result.values >= 0) & (result.values <= 1)).all()
    assert sl.metrics.get("entropy")().value_range == (0.0, math.inf)  # the class's stays


def test_normalised_entropy_of_two_and_one_pixel_maps():
    """Normalised entropy H / ln n by hand on the smallest maps: a constant 1×2 map is uniform
    (1), a 2×1 map (1, 3) has H(1/4, 3/4) / ln 2, a one-hot pair 0, a single pixel 0."""
    pair = torch.tensor([[[2.0, -2.0]], [[0.0, 5.0]]])
    assert run("entropy", pair, normalised=True).tolist() == pytest.approx([1.0, 0.0])
    quarter = torch.tensor([[[1.0], [3.0]]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert run("entropy", quarter, normalised=True)[0] == pytest.approx(h)
    assert run("entropy", torch.full((1, 1, 1), 4.0), normalised=True)[0] == 0.0


def test_entropy_matches_quantus(quantus):
    maps = random_maps(seed=3)
    want = quantus_scores(quantus, quantus.Complexity, maps)
    np.testing.assert_allclose(run("entropy", maps), want, atol=1e-8)


# -- effective complexity -------------------------------------------------------------------------


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
def test_effective_complexity_matches_loop(relative, eps):
    maps = random_maps(seed=4)
    maps[0] = 0.0
    got = run("effective_complexity", maps, eps=eps, relative=relative)
    want = torch.tensor([ref_count(m, eps, relative) for m in maps], dtype=torch.double)
    torch.testing.assert_close(got, want)
    frac = run("effective_complexity", maps, eps=eps, relative=relative, fraction=True)
    torch.testing.assert_close(frac, want / 63)


def test_effective_complexity_matches_quantus(quantus):
    maps = random_maps(seed=5)
    for eps in [1e-5, 0.3]:
        want = quantus_scores(quantus, quantus.EffectiveComplexity, maps, eps=eps)
        np.testing.assert_array_equal(run("effective_complexity", maps, eps=eps, relative=False),
                                      want)  # fmt: skip
        scaled = maps / maps.abs().amax(dim=(1, 2), keepdim=True)
        want = quantus_scores(quantus, quantus.EffectiveComplexity, scaled, eps=eps)
        np.testing.assert_array_equal(run("effective_complexity", maps, eps=eps), want)


# -- the contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sparseness", "entropy", "effective_complexity"])
def test_update_compute_over_two_batches(name):
    maps = random_maps(b=6, seed=6)
    m = sl.metrics.get(name)()
    m.update(maps[:2])
    m.update(maps[2:])
    res = m.compute()
    torch.testing.assert_close(res.values, m(maps).values)
    assert res.values.shape == (6,) and res.forwards == 0
    assert res.direction == ("higher" if name == "sparseness" else "lower")


def test_complexity_in_evaluate(tiny_cnn, images):
    ex = sl.explain(tiny_cnn, images, methods="saliency")
    rep = sl.evaluate(tiny_cnn, images, ex, metrics=["sparseness", "entropy"], references=False)
    maps = ex["saliency"].maps
    want = torch.tensor([ref_gini(m) for m in maps], dtype=torch.double)
    torch.testing.assert_close(rep["saliency"]["sparseness"].values, want)
    assert rep["saliency"]["entropy"].forwards == 0
