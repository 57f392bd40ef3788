"""Localisation metrics against loop-based formulas, exact enumeration, sklearn and Quantus 0.6.0.

Quantus settings that compare like with like (all with `normalise=False, abs=False`, so Quantus
scores the raw maps as we do; its model and x_batch are required but unused):
- PointingGame ↔ pointing_game(tolerance=0, ties="any") (Quantus has no tolerance; any tied
  maximum in the mask is a hit);
- RelevanceMassAccuracy ↔ relevance_mass(part="signed") on signed maps, and part="positive" on
  non-negative maps (Quantus divides by the plain sum);
- RelevanceRankAccuracy, TopKIntersection ↔ ours on tie-free maps (Quantus breaks ties by
  NumPy's unstable argsort, we average over them);
- AUC ↔ roc_auc; Focus ↔ focus with custom_batch = Mosaics.quadrants (Quantus adds 1e-9 to
  the denominator, hence a 1e-6 tolerance).
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.metrics.base import EvalBatch
from saliencelab.metrics.localisation import (
    boxes_to_masks,
    dilate_masks,
    make_mosaics,
    per_class_mean,
)


class _Metric:
    """A metric whose calls with masks expect an `EmptyMaskWarning` exactly when a mask is
    empty (the values there are NaN), naming those samples."""

    def __init__(self, m) -> None:
        self.m = m

    def __call__(self, maps, *args, masks=None, **kwargs):
        if masks is None:
            return self.m(maps, *args, **kwargs)
        empty = (~masks.bool().flatten(1).any(1)).nonzero().flatten().tolist()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            out = self.m(maps, *args, masks=masks, **kwargs)
        said = [str(w.message) for w in seen if w.category is sl.metrics.EmptyMaskWarning]
        if empty:
            assert len(said) == 1 and f"(samples {', '.join(map(str, empty[:10]))}" in said[0]
        else:
            assert not said
        return out

    def __getattr__(self, name):
        return getattr(self.m, name)


def metric(name: str, **params):
    return _Metric(sl.metrics.get(name)(**params))


def run(name: str, maps, masks, target=None, **params) -> torch.Tensor:
    return metric(name, **params)(maps, masks=masks, target=target).values


def random_case(b=6, h=9, w=10, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn((b, h, w), generator=g, dtype=torch.float64)
    masks = torch.rand((b, h, w), generator=g) < p
    masks[:, 0, 0] = True  # never empty
    return maps, masks


def quadrant_masks(quadrants: torch.Tensor, h: int, w: int, top: int, left: int) -> torch.Tensor:
    """(B, H, W) masks on the quadrants marked in (B, 4) (top-left, top-right, bottom-left,
    bottom-right), the rows split at `top` and the columns at `left`."""
    rows = (torch.arange(h) >= top).long()[:, None]
    cols = (torch.arange(w) >= left).long()[None, :]
    return quadrants.bool()[:, 2 * rows + cols]


# -- loop-based references ------------------------------------------------------------------------


def ref_dilate(mask: torch.Tensor, r: float) -> torch.Tensor:
    h, w = mask.shape
    pts = [(i, j) for i in range(h) for j in range(w) if mask[i, j]]
    out = torch.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            out[y, x] = any((y - i) ** 2 + (x - j) ** 2 <= r * r for i, j in pts)
    return out


def ref_pointing(a: torch.Tensor, mask: torch.Tensor, tol: float, ties: str) -> float:
    if not mask.any():
        return math.nan
    zone = ref_dilate(mask, tol)
    flat_a, flat_z = a.flatten().tolist(), zone.flatten().tolist()
    top = max(flat_a)
    maxima = [i for i, v in enumerate(flat_a) if v == top]
    hits = [flat_z[i] for i in maxima]
    if ties == "first":
        return float(hits[0])
    if ties == "any":
        return float(any(hits))
    return sum(hits) / len(hits)


def ref_mass(a, mask, part="positive") -> float:
    num = den = 0.0
    for v, m in zip(a.flatten().tolist(), mask.flatten().tolist(), strict=True):
        r = max(v, 0.0) if part == "positive" else abs(v) if part == "absolute" else v
        den += r
        num += r if m else 0.0
    return num / den if den != 0 and mask.any() else math.nan


def ref_top_k_enumerated(a, mask, k) -> float:
    """Mean share of mask pixels among the first k, over every order that sorts `a` descending."""
    vals, inside = a.flatten().tolist(), mask.flatten().tolist()
    shares = []
    for order in itertools.permutations(range(len(vals))):
        if all(vals[order[i]] >= vals[order[i + 1]] for i in range(len(order) - 1)):
            shares.append(sum(inside[i] for i in order[:k]) / k)
    return sum(shares) / len(shares)


def ref_auc(a, mask) -> float:
    pos = [v for v, m in zip(a.flatten().tolist(), mask.flatten().tolist(), strict=True) if m]
    neg = [v for v, m in zip(a.flatten().tolist(), mask.flatten().tolist(), strict=True) if not m]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


# -- Quantus --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def quantus_scores(quantus, cls, maps, masks=None, custom=None, **kw) -> np.ndarray:
    b, h, w = maps.shape
    model = nn.Sequential(nn.Flatten(), nn.Linear(h * w, 3))
    x = np.zeros((b, 1, h, w), dtype=np.float32)
    a = maps[:, None].numpy().astype(np.float64)
    extra = {} if masks is None else {"s_batch": masks[:, None].numpy().astype(np.float64)}
    if custom is not None:
        extra["custom_batch"] = custom
    m = cls(normalise=False, abs=False, disable_warnings=True, **kw)
    out = m(model=model, x_batch=x, y_batch=np.zeros(b, dtype=int), a_batch=a, device="cpu",
            **extra)  # fmt: skip
    return np.asarray(out, dtype=np.float64)


# -- dilation and the pointing game ---------------------------------------------------------------


@pytest.mark.parametrize("radius", [0, 1, 1.5, 2, 3.2])
def test_dilate_masks_matches_loop_and_scipy(radius):
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk

    g = torch.Generator().manual_seed(3)
    masks = torch.rand((3, 11, 13), generator=g) < 0.05
    masks[2] = False
    masks[1, 0, 12] = True  # at a corner, so the disk is clipped
    ours = dilate_masks(masks, radius)
    for i in range(3):
        assert torch.equal(ours[i], ref_dilate(masks[i], radius))
        if radius == int(radius) > 0:  # skimage's disk(r) = {x² + y² ≤ r²}, integer r
            expect = binary_dilation(masks[i].numpy(), structure=disk(int(radius)))
            assert np.array_equal(ours[i].numpy(), expect)


def test_pointing_game_default_tolerance_is_15_px_on_images_and_0_on_features():
    """Words or features (B, F) have no distance: a maximum next to the mask used to count as a
    hit within 15 positions."""
    feats = torch.tensor([[0.1, 0.9, 0.2, 0.0]])
    mask = torch.tensor([[False, False, True, False]])  # the maximum sits next to the mask
    assert float(run("pointing_game", feats, mask)[0]) == 0.0
    assert float(run("pointing_game", feats, mask, tolerance=1)[0]) == 1.0
    image = torch.zeros(1, 40, 40)
    image[0, 5, 5] = 1.0
    near = torch.zeros(1, 40, 40, dtype=torch.bool)
    near[0, 5, 19] = True  # 14 px away: within the default 15 px
    assert float(run("pointing_game", image, near)[0]) == 1.0
    assert float(run("pointing_game", image, near, tolerance=13)[0]) == 0.0


def test_top_k_on_feature_or_word_maps_speaks_of_features():
    with pytest.raises(SaliencelabError, match="more than the 7 features or words of the maps"):
        run("top_k_intersection", torch.rand(2, 7), torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(SaliencelabError, match="more than the 35 pixels of the maps"):
        run("top_k_intersection", torch.rand(2, 5, 7), torch.ones(2, 5, 7, dtype=torch.bool))


def test_pointing_game_tolerance_hand_made():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 4, 4] = True
    # (max position, distance to the mask pixel)
    cases = [((4, 7), 3.0), ((6, 6), math.sqrt(8)), ((1, 0), 5.0), ((4, 4), 0.0)]
    for (y, x), dist in cases:
        a = torch.zeros(1, 9, 9)
        a[0, y, x] = 1.0
        for tol in [0, 1, 2, 2.9, 3, 4, 5, 15]:
            got = float(run("pointing_game", a, mask, tolerance=tol)[0])
            assert got == float(dist <= tol), (y, x, tol)


@pytest.mark.parametrize("ties", ["any", "first", "expected"])
@pytest.mark.parametrize("tol", [0, 2, 3.5])
def test_pointing_game_matches_loop(ties, tol):
    g = torch.Generator().manual_seed(5)
    maps = torch.randint(0, 4, (8, 7, 8), generator=g).double()  # many tied maxima
    masks = torch.rand((8, 7, 8), generator=g) < 0.15
    masks[0] = False  # empty → NaN
    maps[1] = 2.0  # constant map
    maps[5:] = torch.randn((3, 7, 8), generator=g, dtype=torch.float64)  # one maximum each
    got = run("pointing_game", maps, masks, tolerance=tol, ties=ties)
    want = torch.tensor([ref_pointing(maps[i], masks[i], tol, ties) for i in range(8)])
    torch.testing.assert_close(got, want.double(), equal_nan=True)
    assert math.isnan(got[0])


def test_pointing_game_ties_on_a_constant_map():
    a = torch.ones(1, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 3, :2] = True
    assert run("pointing_game", a, mask, tolerance=0, ties="any")[0] == 1
    assert run("pointing_game", a, mask, tolerance=0, ties="first")[0] == 0  # pixel (0, 0)
    assert run("pointing_game", a, mask, tolerance=0, ties="expected")[0] == 2 / 16


def test_pointing_game_default_tolerance_is_15_pixels():
    """The default-constructed metric dilates by the paper's 15 px disk: hand-computed
    Euclidean distances from a one-pixel mask at (5, 5) (9² + 12² = 15²)."""
    mask = torch.zeros(1, 30, 30, dtype=torch.bool)
    mask[0, 5, 5] = True
    cases = [((5, 15), 1.0), ((14, 17), 1.0), ((5, 20), 1.0), ((5, 21), 0.0), ((17, 15), 0.0)]
    for (y, x), hit in cases:  # distances 10, 15, 15, 16, √244 ≈ 15.6
        a = torch.zeros(1, 30, 30)
        a[0, y, x] = 1.0
        assert metric("pointing_game")(a, masks=mask).values[0] == hit, (y, x)


def test_pointing_game_default_ties_count_any_maximum():
    """Default ties="any" (Quantus 0.6.0): a constant map scores 1 for any non-empty mask, here
    one 35 px from pixel (0, 0), which "first" would take (and miss even at tolerance 15)."""
    a = torch.ones(2, 30, 30)
    mask = torch.zeros(2, 30, 30, dtype=torch.bool)
    mask[0, 25, 25] = True
    mask[1, 20:, 28:] = True
    assert metric("pointing_game")(a, masks=mask).values.tolist() == [1.0, 1.0]


def test_pointing_game_matches_quantus(quantus):
    maps, masks = random_case(b=8, seed=1)
    maps[2, 0, 0] = maps[2].max() + 1  # a hit on the always-set pixel
    got = run("pointing_game", maps, masks, tolerance=0)
    want = quantus_scores(quantus, quantus.PointingGame, maps, masks)
    assert np.array_equal(got.numpy(), want)
    assert 0 < got.sum() < 8  # both outcomes occur


def test_per_class_mean():
    maps, masks = random_case(b=6, seed=2)
    masks[5] = False  # NaN, skipped
    target = torch.tensor([0, 1, 0, 2, 1, 2])
    result = metric("pointing_game", tolerance=1)(maps, masks=masks, target=target)
    means = per_class_mean(result)
    v = result.values
    assert set(means) == {0, 1, 2}
    assert means[0] == pytest.approx(float(v[[0, 2]].mean()))
    assert means[1] == pytest.approx(float(v[[1, 4]].mean()))
    assert means[2] == pytest.approx(float(v[3]))
    with pytest.raises(SaliencelabError, match="no per-sample classes"):
        per_class_mean(metric("sparseness")(maps))


# -- relevance mass, relevance rank, top-k ---------------------------------------------------------


@pytest.mark.parametrize("part", ["positive", "absolute", "signed"])
def test_relevance_mass_matches_loop(part):
    maps, masks = random_case(seed=4)
    masks[3] = False
    maps[4] = -maps[4].abs()  # no positive relevance: NaN for part="positive"
    got = run("relevance_mass", maps, masks, part=part)
    want = torch.tensor([ref_mass(maps[i], masks[i], part) for i in range(len(maps))])
    torch.testing.assert_close(got, want.double(), equal_nan=True)
    assert math.isnan(got[3])
    assert math.isnan(got[4]) == (part == "positive")
    lo, hi = sl.metrics.get("relevance_mass")(part=part).value_range  # (0, 1) said for signed
    finite = got[torch.isfinite(got)]
    assert bool(((finite >= lo) & (finite <= hi)).all()) and (hi == math.inf) == (part == "signed")


def test_relevance_mass_matches_quantus(quantus):
    maps, masks = random_case(seed=6)
    want = quantus_scores(quantus, quantus.RelevanceMassAccuracy, maps, masks)
    np.testing.assert_allclose(run("relevance_mass", maps, masks, part="signed"), want)
    pos = maps.abs()
    want = quantus_scores(quantus, quantus.RelevanceMassAccuracy, pos, masks)
    np.testing.assert_allclose(run("relevance_mass", pos, masks), want)


def test_relevance_rank_and_top_k_average_ties_exactly():
    # 2×3 maps with ties; the reference enumerates every order of the tied pixels.
    maps = torch.tensor(
        [
            [[1.0, 1.0, 0.0], [1.0, 0.5, 0.5]],
            [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]],
            [[3.0, 1.0, 2.0], [0.0, 2.0, 1.0]],
        ]
    )
    masks = torch.tensor(
        [
            [[True, False, False], [False, True, False]],
            [[True, True, False], [False, False, False]],
            [[False, True, True], [False, True, False]],
        ]
    )
    got = run("relevance_rank", maps, masks)
    want = [ref_top_k_enumerated(maps[i], masks[i], int(masks[i].sum())) for i in range(3)]
    torch.testing.assert_close(got, torch.tensor(want).double())
    assert got[1] == pytest.approx(2 / 6)  # a constant map scores chance
    for k in [1, 2, 4]:
        got = run("top_k_intersection", maps, masks, k=k)
        want = [ref_top_k_enumerated(maps[i], masks[i], k) for i in range(3)]
        torch.testing.assert_close(got, torch.tensor(want).double())


def test_relevance_rank_matches_quantus(quantus):
    maps, masks = random_case(seed=7)
    want = quantus_scores(quantus, quantus.RelevanceRankAccuracy, maps, masks)
    np.testing.assert_allclose(run("relevance_rank", maps, masks), want)


@pytest.mark.parametrize("concept_influence", [False, True])
def test_top_k_matches_quantus(quantus, concept_influence):
    maps, masks = random_case(seed=8)
    want = quantus_scores(
        quantus, quantus.TopKIntersection, maps, masks, k=12, concept_influence=concept_influence
    )
    got = run("top_k_intersection", maps, masks, k=12, concept_influence=concept_influence)
    np.testing.assert_allclose(got, want)


def test_top_k_fraction_and_too_large_k():
    maps, masks = random_case(h=10, w=10, seed=9)
    by_fraction = run("top_k_intersection", maps, masks, k=0.12)
    torch.testing.assert_close(by_fraction, run("top_k_intersection", maps, masks, k=12))
    with pytest.raises(SaliencelabError, match="more than the 100 pixels"):
        run("top_k_intersection", maps, masks)  # default k = 1000


def test_top_k_fraction_rounds_to_nearest():
    """A fraction k stands for round(k · n) pixels, not the truncation: hand-computed on a
    descending 1×10 map, k · n = 3.7 → the 4 highest pixels (truncating would take 3)."""
    a = torch.arange(10.0, 0.0, -1.0)[None, None]  # pixel i has the (i + 1)-th highest value
    mask = torch.zeros(1, 1, 10, dtype=torch.bool)
    mask[0, 0, 3] = True  # the 4th highest pixel only
    assert run("top_k_intersection", a, mask, k=0.37)[0] == pytest.approx(1 / 4)
    mask[0, 0, :2] = True  # pixels 0, 1 and 3: 3 of the top 4
    assert run("top_k_intersection", a, mask, k=0.37)[0] == pytest.approx(3 / 4)
    assert run("top_k_intersection", a, mask, k=0.32)[0] == pytest.approx(2 / 3)  # 3.2 → 3


# -- ROC-AUC ---------------------------------------------------------------------------------------


def test_roc_auc_matches_loop_and_sklearn(quantus):
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(10)
    maps = torch.randint(0, 5, (6, 6, 7), generator=g).double()  # many ties
    masks = torch.rand((6, 6, 7), generator=g) < 0.4
    masks[4] = False  # one class only: NaN
    masks[5] = True
    got = run("roc_auc", maps, masks)
    want = torch.tensor([ref_auc(maps[i], masks[i]) for i in range(6)])
    torch.testing.assert_close(got, want.double(), equal_nan=True)
    for i in range(4):
        sk = roc_auc_score(masks[i].flatten().numpy(), maps[i].flatten().numpy())
        assert float(got[i]) == pytest.approx(sk, abs=1e-12)
    assert math.isnan(got[4]) and math.isnan(got[5])
    q = quantus_scores(quantus, quantus.AUC, maps[:4], masks[:4])
    np.testing.assert_allclose(got[:4], q)


# -- Focus and mosaics ----------------------------------------------------------------------------


def test_make_mosaics_layout():
    g = torch.Generator().manual_seed(11)
    images = torch.randn((10, 3, 4, 5), generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4])
    mos = make_mosaics(images, labels, n=7, seed=3)
    assert mos.x.shape == (7, 3, 8, 10) and mos.masks.shape == (7, 8, 10) and len(mos) == 7
    quads = [(slice(0, 4), slice(0, 5)), (slice(0, 4), slice(5, 10))]
    quads += [(slice(4, 8), slice(0, 5)), (slice(4, 8), slice(5, 10))]
    for i in range(7):
        src = mos.sources[i]
        assert len(set(src.tolist())) == 4
        own = labels[src] == mos.target[i]
        assert torch.equal(own, mos.quadrants[i]) and int(own.sum()) == 2
        for q, (ys, xs) in enumerate(quads):
            assert torch.equal(mos.x[i, :, ys, xs], images[src[q]])
            assert bool(mos.masks[i, ys, xs].all()) == bool(mos.quadrants[i, q])
            assert bool(mos.masks[i, ys, xs].any()) == bool(mos.quadrants[i, q])
    again = make_mosaics(images, labels, n=7, seed=3)
    assert torch.equal(again.x, mos.x) and torch.equal(again.target, mos.target)
    assert not torch.equal(make_mosaics(images, labels, n=7, seed=4).sources, mos.sources)
    small = make_mosaics(images, labels, n=2, seed=3, size=(4, 6))
    assert small.x.shape == (2, 3, 4, 6) and small.masks.shape == (2, 4, 6)
    with pytest.raises(SaliencelabError, match="several classes"):
        make_mosaics(images[:4], torch.zeros(4))


def test_focus_matches_loop_and_quantus(quantus):
    g = torch.Generator().manual_seed(12)
    images = torch.randn((8, 1, 5, 5), generator=g)
    mos = make_mosaics(images, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), n=6, seed=0)
    maps = torch.randn((6, 10, 10), generator=g, dtype=torch.float64)
    maps[5] = -maps[5].abs()  # no positive relevance: NaN (Quantus: 0)
    got = run("focus", maps, mos.masks, target=mos.target)
    want = torch.tensor([ref_mass(maps[i], mos.masks[i], "positive") for i in range(6)])
    torch.testing.assert_close(got, want.double(), equal_nan=True)
    q = quantus_scores(quantus, quantus.Focus, maps, custom=mos.quadrants.numpy().astype(int))
    np.testing.assert_allclose(got[:5], q[:5], atol=1e-6)
    assert q[5] == 0 and math.isnan(got[5])


def test_focus_takes_unions_of_mosaic_quadrants_only():
    """Focus is the relevance on the target's quadrants of a 2×2 mosaic: a mask must be a union
    of whole quadrants (any of the 16, split at the middle, or one pixel off it as a nearest
    resize puts it). An ordinary object mask gets one sentence pointing to make_mosaics (it
    used to give relevance mass under another name)."""
    quads = torch.tensor(list(itertools.product([False, True], repeat=4)))  # all 16 unions
    for h, w in [(8, 10), (7, 9), (12, 12)]:
        maps = torch.randn(16, h, w, dtype=torch.float64).abs()
        for top, left in [(h // 2, w // 2), ((h + 1) // 2, (w - 1) // 2)]:
            masks = quadrant_masks(quads, h, w, top, left)
            got = run("focus", maps, masks)
            want = [ref_mass(maps[i], masks[i]) for i in range(16)]
            torch.testing.assert_close(got, torch.tensor(want).double(), equal_nan=True)
    g = torch.Generator().manual_seed(3)
    images = torch.randn((8, 1, 32, 32), generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for size in (None, 224, 225, (97, 131), (5, 7)):
        mos = make_mosaics(images, labels, n=6, seed=1, size=size)
        maps = torch.rand(mos.masks.shape, generator=g)
        assert run("focus", maps, mos.masks, target=mos.target).isfinite().all()
    maps = torch.rand(3, 12, 12, generator=g)
    objects = torch.zeros(3, 12, 12, dtype=torch.bool)
    objects[:, 3:8, 4:9] = True  # a box, as the shapes' masks are
    halves = quadrant_masks(torch.tensor([[1, 1, 0, 0]] * 3), 12, 12, 6, 6)
    off = quadrant_masks(torch.tensor([[1, 0, 1, 0]] * 3), 12, 12, 6, 3)  # split far off
    for bad in (objects, halves ^ objects, off):
        bad = torch.cat([halves[:1], bad[1:]])  # the first sample is a fine mosaic mask
        with pytest.raises(SaliencelabError, match="make_mosaics") as err:
            run("focus", maps, bad)
        msg = str(err.value)
        assert "sample 1 " in msg and "\n" not in msg and msg.endswith(".")


def test_focus_end_to_end_with_evaluate(tiny_cnn):
    g = torch.Generator().manual_seed(13)
    images = torch.randn((8, 3, 6, 6), generator=g)
    mos = make_mosaics(images, torch.tensor([0, 0, 1, 1, 2, 2, 3, 4]), n=3, seed=1)
    ex = sl.explain(tiny_cnn, mos.x, methods="saliency", target=mos.target)
    rep = sl.evaluate(
        tiny_cnn, mos.x, ex, metrics=["focus", "pointing_game"], masks=mos.masks,
        target=mos.target, references=False,
    )  # fmt: skip
    maps = ex["saliency"].maps
    want = torch.tensor([ref_mass(maps[i], mos.masks[i]) for i in range(3)])
    torch.testing.assert_close(rep["saliency"]["focus"].values, want.double())
    assert torch.equal(rep["saliency"]["focus"].extras["target"], mos.target)


# -- boxes, errors, accumulation ------------------------------------------------------------------


def test_boxes_to_masks():
    one = boxes_to_masks(torch.tensor([[1, 2, 4, 3]]), (5, 6))  # x 1..3, y 2..2
    want = torch.zeros(1, 5, 6, dtype=torch.bool)
    want[0, 2, 1:4] = True
    assert torch.equal(one, want)
    xywh = boxes_to_masks(torch.tensor([[1, 2, 3, 1]]), (5, 6), format="xywh")
    assert torch.equal(xywh, want)
    several = boxes_to_masks([[[0, 0, 2, 2], [4, 3, 6, 5]], [], torch.tensor([0.4, 0, 1.6, 1])], 6)
    assert several.shape == (3, 6, 6)
    assert int(several[0].sum()) == 8 and several[0, 4, 5] and not several[0, 2, 2]
    assert not several[1].any()
    assert several[2, 0, :2].all() and int(several[2].sum()) == 2  # centres 0.5 and 1.5
    with pytest.raises(SaliencelabError, match="end before they start"):
        boxes_to_masks(torch.tensor([[3, 0, 1, 2]]), 5)


ALL = [
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "top_k_intersection",
    "roc_auc",
    "focus",
]


@pytest.mark.parametrize("name", ALL)
def test_mask_errors(name):
    maps = torch.randn(2, 6, 6)
    m = metric(name, k=4) if name == "top_k_intersection" else metric(name)
    with pytest.raises(SaliencelabError, match="masks have shape"):
        m(maps, masks=torch.ones(2, 6, 5, dtype=torch.bool))
    with pytest.raises(SaliencelabError, match="needs masks"):
        m(maps)
    batch = EvalBatch(x=torch.empty(2, 0), maps=maps, target=torch.zeros(2, dtype=torch.long),
                      masks=torch.ones(2, 5, 6, dtype=torch.bool))  # fmt: skip
    with pytest.raises(SaliencelabError, match="masks have shape"):
        m.score(batch)
    empty = torch.zeros(2, 6, 6, dtype=torch.bool)
    empty[1, 2:4, 2:4] = True
    if name == "focus":  # a union of quadrants of a 2×2 mosaic
        empty[1] = False
        empty[1, :3, 3:] = True
    values = m(maps, masks=empty).values
    assert math.isnan(values[0]) and math.isfinite(values[1])  # empty mask: undefined


@pytest.mark.parametrize("name", ALL)
def test_update_compute_over_two_batches(name):
    maps, masks = random_case(b=6, seed=14)
    if name == "focus":  # a union of quadrants of a 2×2 mosaic
        masks = quadrant_masks(
            torch.rand(6, 4, generator=torch.Generator().manual_seed(1)) < 0.5, 9, 10, 4, 5
        )
    target = torch.arange(6) % 3
    m = metric(name, k=5) if name == "top_k_intersection" else metric(name)
    m.update(maps[:4], masks=masks[:4], target=target[:4])
    m.update(maps[4:], masks=masks[4:], target=target[4:])
    res = m.compute()
    whole = m(maps, masks=masks, target=target)
    torch.testing.assert_close(res.values, whole.values, equal_nan=True)
    assert torch.equal(res.extras["target"], target)
    assert res.values.shape == (6,) and res.direction == "higher"


def test_bad_parameters_say_what_to_do():
    with pytest.raises(SaliencelabError, match="tolerance must be"):
        metric("pointing_game", tolerance=-1)
    with pytest.raises(SaliencelabError, match="use 'any', 'first' or 'expected'"):
        metric("pointing_game", ties="all")
    with pytest.raises(SaliencelabError, match="use 'positive'"):
        metric("relevance_mass", part="negative")
    for k in (0, 1.5, math.inf, math.nan, True):
        with pytest.raises(SaliencelabError, match="whole pixel count ≥ 1 or a fraction"):
            metric("top_k_intersection", k=k)
    for tolerance in (math.nan, math.inf, -1e-9):
        with pytest.raises(SaliencelabError, match="tolerance must be a finite number ≥ 0"):
            metric("pointing_game", tolerance=tolerance)
    with pytest.raises(SaliencelabError, match="eps must be a finite number ≥ 0"):
        metric("effective_complexity", eps=math.nan)  # (NaN passed `eps < 0`: all scored 0)


@pytest.mark.parametrize("tolerance", [0, 1, 2.5])
def test_pointing_game_on_feature_maps(tolerance):
    """(B, D) maps of tabular inputs are one row of D features (the tolerance in features), as
    the other localisation metrics read them; the game on the same maps as (B, 1, D) images."""
    maps = torch.tensor([[0.1, 0.9, 0.2, 0.3, 0.0], [0.1, 0.2, 0.3, 0.0, 0.8], [0.5, 0, 0, 0, 0]])
    masks = torch.zeros(3, 5, dtype=torch.bool)
    masks[:, 2] = True
    flat = metric("pointing_game", tolerance=tolerance)(
        maps, masks=masks, target=torch.zeros(3, dtype=torch.long)
    )
    image = metric("pointing_game", tolerance=tolerance)(
        maps[:, None], masks=masks[:, None], target=torch.zeros(3, dtype=torch.long)
    )
    assert torch.equal(flat.values, image.values)
    # the maximum at feature 1, 4, 0; the object at 2: within 1 feature for the first only
    expected = {0: [0.0, 0.0, 0.0], 1: [1.0, 0.0, 0.0], 2.5: [1.0, 1.0, 1.0]}[tolerance]
    assert flat.values.tolist() == expected
    with pytest.raises(SaliencelabError, match="radius must be"):
        dilate_masks(torch.ones(1, 3, 3, dtype=torch.bool), -2)
