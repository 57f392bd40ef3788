"""Randomisation sanity checks: similarities vs scipy / skimage, MPRT vs a direct loop and vs
Quantus' MPRT (identical randomisation), random logit vs a loop and Quantus, restoration of the
model, bad inputs, and the sanity-check finding on EfficientNet-Lite0 (small setting)."""

from __future__ import annotations

import copy
import hashlib
import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from skimage.feature import hog as sk_hog
from skimage.metrics import structural_similarity
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.metrics import stats
from saliencelab.metrics.base import Explainer
from saliencelab.metrics.randomisation import similarity as S
from saliencelab.metrics.randomisation import stages

MPRT = sl.metrics.get("model_randomisation")
RandomLogit = sl.metrics.get("random_logit")


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 40, 37, generator=g)
    b = a + 0.8 * torch.randn(3, 40, 37, generator=g)
    b[0] = torch.randn(40, 37, generator=g)  # an unrelated pair
    b[2, :5] = b[2, 5:10]  # some ties
    return a, b


# -- similarities ----------------------------------------------------------------------------


def test_spearman_with_and_without_abs_match_scipy(pair):
    a, b = pair
    for absolute in (False, True):
        ours = S.spearman(a, b, absolute=absolute)
        f = (lambda t: t.abs()) if absolute else (lambda t: t)
        ref = [scipy.stats.spearmanr(f(a[i]).flatten(), f(b[i]).flatten())[0] for i in range(3)]
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)
    assert not torch.allclose(S.spearman(a, b), S.spearman_abs(a, b))
    # the cached form used by the metrics (ranks of `a` once, r_b in sorted order)
    b2 = b.clone()
    b2[1] = 0.5  # a constant map: no ranking, similarity 0 (scipy: NaN)
    for name in ("spearman", "spearman_abs"):
        cached = S.similarity_to(name, a)(b2)
        direct = S.spearman(a, b2, absolute=name == "spearman_abs")  # scattered ranks
        assert cached[1] == 0 and direct[1] == 0
        np.testing.assert_allclose(cached[[0, 2]].numpy(), direct[[0, 2]].numpy(), atol=1e-12)


def test_average_ranks_match_scipy_rankdata_with_many_ties():
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 6, (5, 200), generator=g).float()
    v[0] = torch.arange(200.0)  # no ties
    v[1] = 3.0  # all tied
    v[2, :50], v[2, 50:100] = -0.0, 0.0  # equal values, different bits
    v[3] = torch.randn(200, generator=g) * 1e30  # negative and huge
    ref = scipy.stats.rankdata(v.numpy(), axis=1)
    for dtype in (torch.float32, torch.float64):  # NumPy's int-key sort / argsort
        np.testing.assert_array_equal(stats.ranks(v.to(dtype)).numpy(), ref)
    half = stats.ranks(v[:3].half())  # exact in float16: sorted as float32 keys
    np.testing.assert_array_equal(half.numpy(), ref[:3])
    ints = torch.randint(-3, 3, (3, 200), generator=g)  # torch.sort (the path off the CPU)
    ref = scipy.stats.rankdata(ints.numpy(), axis=1)
    np.testing.assert_array_equal(stats.ranks(ints).numpy(), ref)
    a = torch.randn(5, 200, generator=g)
    np.testing.assert_allclose(
        S.spearman(v[:, None], a[:, None]).numpy()[2:],
        [scipy.stats.spearmanr(v[i], a[i])[0] for i in range(2, 5)],
        atol=1e-12,
    )
    assert S.spearman(v[:, None], a[:, None])[1] == 0  # a constant map: no ranking, 0


def saliency_like(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Maps with many ties: rectified, rounded to a few levels, one map all zero."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, h, w, generator=g).relu().mul(3).round()
    maps[-1] = 0.0
    return maps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tied", [False, True])
def test_spearman_random_and_tied_maps_match_scipy(dtype, tied):
    g = torch.Generator().manual_seed(1)
    if tied:
        a, b = saliency_like(4, 33, 30, seed=2), saliency_like(4, 33, 30, seed=3)
        a[-1] = torch.randn(33, 30, generator=g).round()  # b's last map is constant
    else:
        a, b = torch.randn(4, 33, 30, generator=g), torch.randn(4, 33, 30, generator=g)
    b[1] = 0.8 * a[1] - b[1]  # a correlated pair
    a, b = a.to(dtype), b.to(dtype)
    na, nb = a.flatten(1).numpy(), b.flatten(1).numpy()
    for name in ("spearman", "spearman_abs"):
        f = np.abs if name == "spearman_abs" else (lambda z: z)
        with warnings.catch_warnings():  # scipy warns on the constant map (NaN)
            warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
            ref = np.array([scipy.stats.spearmanr(f(na[i]), f(nb[i]))[0] for i in range(4)])
        # a constant map has no ranking: similarity 0 where scipy's is NaN (tied: b's last map)
        assert np.isnan(ref[-1]) == tied and np.isfinite(ref[:-1]).all()
        for ours in (S.similarity(name, a, b), S.spearman(a, b, name == "spearman_abs")):
            assert ours.dtype == torch.float64
            np.testing.assert_allclose(ours.numpy(), np.nan_to_num(ref, nan=0.0), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("window", [11, 7])
def test_ssim_random_and_tied_maps_match_skimage(dtype, tied, window):
    g = torch.Generator().manual_seed(4)
    if tied:
        a, b = saliency_like(3, 40, 29, seed=5), saliency_like(3, 40, 29, seed=6)
    else:
        a, b = torch.randn(3, 40, 29, generator=g), torch.randn(3, 40, 29, generator=g)
    a, b = a.to(dtype), b.to(dtype)
    na, nb = S.minmax(a).numpy(), S.minmax(b).numpy()
    kw = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    # skimage's Gaussian is truncated at 3.5 σ: the window is 2 * int(3.5 σ + 0.5) + 1 wide
    sigma = 1.5 if window == 11 else 0.9
    kw["sigma"] = sigma
    ref = [structural_similarity(na[i], nb[i], **kw) for i in range(3)]
    opts = {"window": window, "sigma": sigma}
    # float32 maps are compared in float32 (test_ssim_in_float32_agrees_with_float64)
    tol = dict(atol=1e-12, rtol=0) if dtype == torch.float64 else dict(atol=1e-6, rtol=0)
    np.testing.assert_allclose(S.similarity("ssim", a, b, opts).numpy(), ref, **tol)
    np.testing.assert_allclose(S.ssim(a, b, **opts).numpy(), ref, **tol)
    # normalise=False on maps already in [0, 1]: the same values
    raw = S.ssim(S.minmax(a), S.minmax(b), normalise=False, **opts)
    np.testing.assert_allclose(raw.numpy(), ref, atol=1e-12)


def test_ssim_matches_skimage_gaussian_window(pair):
    a, b = pair
    na, nb = S.minmax(a).numpy(), S.minmax(b).numpy()
    ref = [
        structural_similarity(
            na[i], nb[i], data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
        for i in range(3)
    ]  # fmt: skip
    np.testing.assert_allclose(S.ssim(a.double(), b.double()).numpy(), ref, atol=1e-12, rtol=0)
    np.testing.assert_allclose(S.ssim(a, b).numpy(), ref, atol=1e-6, rtol=0)  # float32
    assert S.ssim(a, a).allclose(torch.ones(3, dtype=torch.double))
    # min-max normalisation per map: an affine rescaling of one map changes nothing
    assert torch.allclose(S.ssim(a, 3 * b + 2), S.ssim(a, b))


def _np_minmax(a: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1] in NumPy, a constant map to zeros (the module docstring)."""
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def _sk_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """skimage's SSIM with the documented settings on NumPy min-max normalised maps."""
    na, nb = _np_minmax(a.double().numpy()), _np_minmax(b.double().numpy())
    return structural_similarity(
        na, nb, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


def test_ssim_similarity_to_defaults_match_skimage(pair):
    """The cached SSIM the metrics use (`similarity_to("ssim")`, no options) has ssim's
    documented defaults: skimage with σ = 1.5 on min-max normalised maps."""
    a, b = pair
    ref = [_sk_ssim(a[i], b[i]) for i in range(3)]
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        got = S.similarity_to("ssim", a.to(dtype))(b.to(dtype))
        np.testing.assert_allclose(got.numpy(), ref, atol=atol, rtol=0)
    np.testing.assert_allclose(S.similarity("ssim", a, b).numpy(), ref, atol=1e-6, rtol=0)


def test_ssim_in_float32_agrees_with_float64():
    """float32 maps are compared in float32: the local moments E[x²], E[xy] carry relative
    rounding of ~1e-7, which the variances subtract from μ² (cancellation where a map is flat
    far from 0); C1 = 1e-4 and C2 = 9e-4 bound the error in every window. With the maps shifted
    so that their zero stays 0 (flat zero regions filter exactly), sparse and signed maps
    agree with float64 to ~1e-8 here (1e-6 asserted). Maps flat far from their zero keep the
    cancellation, ~1e-5: every pixel near 1 but one, or signed maps normalised beforehand
    (normalise=False: their zero, now at ~0.5, is no longer known)."""
    g = torch.Generator().manual_seed(7)
    sparse = torch.randn(6, 48, 40, generator=g).relu() ** 3  # peaked, exact zeros
    signed = torch.randn(6, 48, 40, generator=g) * (torch.rand(6, 48, 40, generator=g) < 0.3)
    flat_one = 1 - 0.01 * torch.rand(6, 48, 40, generator=g)
    flat_one[:, 0, 0] = 0
    cases = [(sparse, 1e-6, 1e-6), (signed, 1e-6, 1e-4), (flat_one, 1e-4, 1e-4)]
    for maps, atol, raw_atol in cases:
        other = maps.roll(3, dims=-1) + 0.1 * maps.std() * torch.randn(maps.shape, generator=g)
        for a, b in [(maps, other), (other, maps), (maps, maps.flip(0))]:
            ref = S.ssim(a.double(), b.double())
            ours = S.ssim(a, b)
            assert ours.dtype == torch.float64
            np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=atol, rtol=0)
            raw = S.ssim(S.minmax(a).float(), S.minmax(b).float(), normalise=False)
            np.testing.assert_allclose(raw.numpy(), ref.numpy(), atol=raw_atol, rtol=0)


@pytest.mark.parametrize("name", ["spearman", "spearman_abs", "ssim", "hog"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_similarity_to_takes_stacked_batches(name, dtype):
    """f(b) of K batches stacked (K·B maps) equals f of each batch (MPRT compares its steps in
    one call)."""
    g = torch.Generator().manual_seed(8)
    a = saliency_like(3, 33, 30, seed=9).to(dtype) + 0.1 * torch.rand(3, 33, 30, generator=g)
    steps = [a + s * torch.randn(3, 33, 30, generator=g, dtype=dtype) for s in (0.1, 1.0)]
    steps.append(saliency_like(3, 33, 30, seed=10).to(dtype))  # ties, one constant map
    opts = {"cell": 4} if name == "hog" else None
    f = S.similarity_to(name, a, opts)
    one_by_one = torch.cat([S.similarity_to(name, a, opts)(b) for b in steps])
    stacked = f(torch.cat(steps))
    assert stacked.shape == (9,) and stacked.dtype == torch.float64
    np.testing.assert_allclose(stacked.numpy(), one_by_one.numpy(), atol=1e-12, rtol=0)
    assert f(steps[0]).shape == (3,)  # and f goes on taking single batches
    with pytest.raises(SaliencelabError, match="same shape"):
        f(torch.cat(steps)[:4])


def test_spearman_tie_corrections_match_scipy_with_long_and_many_runs():
    """Spearman's ties are corrections at the tied sorted positions only: runs at the start
    and end of a row, runs of one pixel pair, a row that is one run, rows of many short runs."""
    g = torch.Generator().manual_seed(11)
    b = torch.randn(6, 300, generator=g)
    b[0, :40] = b[0].min() - 1  # a long run at the start (the smallest values)
    b[0, -25:] = b[0].max() + 1  # and at the end
    b[1, ::2] = b[1, 1::2]  # 150 runs of two
    b[2] = 4.0  # constant: 0 (scipy: NaN)
    b[3] = torch.randint(0, 3, (300,), generator=g).float()  # three long runs
    b[4, 10], b[4, 200] = b[4, 50], b[4, 50]  # one run of three, spread out
    a = torch.randn(6, 300, generator=g)
    a[5] = torch.randint(0, 7, (300,), generator=g).float()  # ties on the reference side
    rho = S.similarity_to("spearman", a[:, None])(b[:, None])
    ref = [scipy.stats.spearmanr(a[i], b[i])[0] for i in (0, 1, 3, 4, 5)]
    np.testing.assert_allclose(rho[[0, 1, 3, 4, 5]].numpy(), ref, atol=1e-12)
    assert rho[2] == 0


@pytest.mark.parametrize("name", ["spearman", "spearman_abs"])
def test_spearman_sorted_keys_path_equals_the_generic_path(name):
    """On the CPU float32 maps are ranked as int64 keys carrying 2 r_a through b's sort; float64
    maps take the generic path (sort positions, gather r_a): the same exact sums, so the same
    values bit for bit, with ties on both sides, ±0.0 and stacked batches."""
    g = torch.Generator().manual_seed(3)
    a = (torch.randn(4, 16, 16, generator=g) * 3).round()  # many ties
    b = torch.randn(12, 16, 16, generator=g)
    b[1::3] = (b[1::3] * 2).round()
    b[2, :4] = -0.0
    b[2, 4:8] = 0.0
    b[5] = -1.5  # constant, against a constant map too: 1
    b[6] = 2.0  # constant, against a ranked map: 0
    a[1] = 0.25  # constant: 0 against the ranked maps 9 and 1 (b[1] is tied, not constant)
    a[3, :, :5] = -a[3, :, :5]
    keyed = S.similarity_to(name, a)(b)
    generic = S.similarity_to(name, a.double())(b.double())
    assert torch.equal(keyed, generic)
    assert keyed[5] == 1 and keyed[1] == keyed[9] == keyed[6] == 0 and keyed.isfinite().all()
    fa, fb = a.flatten(1), b.flatten(1)
    if name == "spearman_abs":
        fa, fb = fa.abs(), fb.abs()
    ranked = [i for i in range(12) if i not in (1, 5, 6, 9)]
    ref = [scipy.stats.spearmanr(fa[i % 4], fb[i])[0] for i in ranked]
    np.testing.assert_allclose(keyed[ranked].numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("orientations,cell,block", [(9, 8, 3), (7, 5, 2)])
def test_hog_features_and_similarity_match_skimage(pair, orientations, cell, block):
    a, b = pair
    na, nb = S.minmax(a).numpy(), S.minmax(b).numpy()
    kw = dict(orientations=orientations, pixels_per_cell=(cell, cell))
    kw.update(cells_per_block=(block, block), block_norm="L2-Hys")
    ref_a = np.stack([sk_hog(na[i], **kw) for i in range(3)])
    ref_b = np.stack([sk_hog(nb[i], **kw) for i in range(3)])
    ours = S.hog_features(S.minmax(a), orientations, cell, block)
    np.testing.assert_allclose(ours.numpy(), ref_a, atol=1e-6)
    ref = [np.corrcoef(ref_a[i], ref_b[i])[0, 1] for i in range(3)]
    sim = S.hog(a, b, orientations=orientations, cell=cell, block=block)
    np.testing.assert_allclose(sim.numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_constant_map_has_similarity_zero_and_two_constant_maps_one(dtype):
    """The stated convention (similarity.py): a constant map has no ranking, no gradients and
    no contrast, so its Spearman (of maps or |maps|), HOG and SSIM similarity to a non-constant
    map is 0; two constant maps rank and normalise alike (all tied, all zero), so theirs is 1
    (scipy and Quantus give NaN in both cases). Cached and direct forms agree."""
    g = torch.Generator().manual_seed(21)
    a = torch.randn(4, 24, 24, generator=g, dtype=dtype)
    b = a + 0.5 * torch.randn(4, 24, 24, generator=g, dtype=dtype)
    a[1] = 3.0  # constant original, ranked comparison
    b[2] = 0.0  # constant comparison, ranked original
    a[3], b[3] = -1.0, 7.0  # both constant (different values)
    signs = torch.ones(24, 24, dtype=dtype)
    signs[::2] = -1
    opts = {"hog": {"cell": 4, "block": 2}, "ssim": {"window": 7}}
    for name in ("spearman", "spearman_abs", "hog", "ssim"):
        cached = S.similarity_to(name, a, opts.get(name))(b)
        direct = S.similarity(name, a, b, opts.get(name))
        assert torch.equal(cached, direct) and direct.isfinite().all()
        assert direct[1] == 0 and direct[2] == 0
        assert 0.3 < direct[0] < 1
        assert direct[3] == 1
        stacked = S.similarity_to(name, a, opts.get(name))(torch.cat([b, a]))  # K = 2 batches
        assert torch.equal(stacked[:4], direct) and stacked[[5, 7]].tolist() == [1.0, 1.0]
        assert stacked[4:].tolist() == pytest.approx([1.0] * 4, abs=1e-6)  # float32 SSIM: ~1e-7
    # |map| constant but the map not: 0 for spearman_abs only
    flip = a.clone()
    flip[0] = 2 * signs
    assert S.spearman_abs(flip, b)[0] == 0 and S.spearman(flip, b)[0] != 0
    assert S.spearman_abs(flip[:1], 5 * signs[None])[0] == 1


@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_of_a_map_gone_flat_is_zero_not_near_one(dtype, normalise):
    """A sparse map (mostly 0) against a constant one: min-max normalisation makes the constant
    map all zeros, whose SSIM to the sparse map was ~0.95 from luminance alone (an explanation
    gone flat after randomisation looked unchanged); the constant-map rule makes it 0, in either
    argument, and leaves the non-constant pairs of the batch at skimage's value."""
    sparse = torch.zeros(3, 64, 64, dtype=dtype)
    sparse[:, 30:34, 30:34] = 1.0
    sparse[2] = torch.linspace(0, 1, 64, dtype=dtype).repeat(64, 1)  # a smooth ramp
    flat = torch.full((3, 64, 64), 0.7, dtype=dtype)
    flat[1] = sparse[1].roll(5, -1)  # a non-constant pair stays skimage's SSIM
    for a, b in ((sparse, flat), (flat, sparse)):
        got = S.ssim(a, b, normalise=normalise)
        assert got[0] == 0 and got[2] == 0
        ref = _sk_ssim(a[1], b[1])
        np.testing.assert_allclose(float(got[1]), ref, atol=1e-6, rtol=0)
        assert 0 < ref < 0.99
    assert S.ssim(flat[:1], torch.zeros(1, 64, 64, dtype=dtype), normalise=normalise) == 1


def test_similarities_of_equal_maps_are_one_not_above(tiny_cnn, images):
    """float32 SSIM of a map with itself came out 1 + ~3e-8, outside the value range [-1, 1]
    (random logit hit it where the random class's map equalled the target's)."""
    torch.manual_seed(0)
    maps = torch.rand(8, 64, 64)
    for name in ("ssim", "spearman", "spearman_abs", "hog"):
        assert (S.similarity(name, maps, maps.clone()) == 1).all(), name


@pytest.mark.parametrize("metric", ["random_logit", "model_randomisation"])
def test_maps_that_require_grad_are_scored_as_their_values(tiny_cnn, images, metric):
    """Was: SSIM's out= buffers raised autograd's RuntimeError on maps requiring grad."""
    torch.manual_seed(0)
    maps = torch.rand(4, 12, 12)
    settings = {"layers": 2, "similarity": "ssim"} if metric == "model_randomisation" else {}
    kw = dict(x=images, model=tiny_cnn, target=0, explainer="saliency")
    want = sl.metrics.get(metric)(**settings)(maps, **kw).values
    for given in (maps.clone().requires_grad_(), maps.clone().requires_grad_() * 1.0):
        got = sl.metrics.get(metric)(**settings)(given, **kw).values
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_similarity_bad_inputs():
    a = torch.rand(2, 8, 8)
    with pytest.raises(SaliencelabError, match="Unknown similarity 'spearmann'.*spearman"):
        S.similarity("spearmann", a, a)
    with pytest.raises(SaliencelabError, match="smaller than the 11×11 SSIM window"):
        S.ssim(a, a)
    with pytest.raises(SaliencelabError, match="too small for HOG"):
        S.hog(a, a)
    with pytest.raises(SaliencelabError, match="same shape"):
        S.spearman(a, torch.rand(2, 8, 9))
    big = torch.rand(2, 16, 16)
    for name, opts in [("ssim", {"windw": 7}), ("spearman_abs", {"absolute": True})]:
        with pytest.raises(SaliencelabError, match=f"Bad similarity_options for '{name}'"):
            S.similarity_to(name, big, opts)
    with pytest.raises(SaliencelabError, match="odd size"):
        S.similarity_to("ssim", big, {"window": 6})


# -- model randomisation ---------------------------------------------------------------------


def _layer_seed(seed: int, name: str) -> int:
    """The documented per-layer seed: the first 63 bits of SHA-1 of f"{seed}:{name}"."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _direct_mprt(net, x, target, method, order, seed, stage_layers, sim, seeding="per_layer"):
    """Deep copy, randomise (reset seeded per layer, or once per stage with seeding="same"),
    explain, correlate with scipy: a loop."""
    original = sl.explain(net, x, method, target=target)[method].maps
    out = []
    work = copy.deepcopy(net)
    for layers in stage_layers:  # output side first
        if order == "independent":
            work = copy.deepcopy(net)
        if seeding == "same":
            torch.manual_seed(seed)
        for name in layers:
            if seeding != "same":
                torch.manual_seed(_layer_seed(seed, name))
            work.get_submodule(name).reset_parameters()
        maps = sl.explain(work, x, method, target=target)[method].maps
        out.append([sim(original[i].flatten(), maps[i].flatten()) for i in range(x.shape[0])])
    return original, np.array(out).T  # (B, steps)


@pytest.mark.parametrize("seeding", ["per_layer", "same"])
@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_mprt_matches_a_direct_loop(tiny_cnn, images, order, seeding):
    target = torch.tensor([0, 1, 2, 3])
    plan = [["fc"], ["features.2"], ["features.0"]]

    def rho(u, v):
        return scipy.stats.spearmanr(u, v)[0]

    maps, ref = _direct_mprt(tiny_cnn, images, target, "saliency", order, 7, plan, rho, seeding)
    for value in ("last", "mean"):
        r = MPRT(order=order, seed=7, value=value, seeding=seeding)(
            maps, x=images, model=tiny_cnn, target=target, explainer="saliency"
        )
        np.testing.assert_allclose(r.curves.numpy(), ref, atol=1e-10)
        expected = ref[:, -1] if value == "last" else ref.mean(1)
        np.testing.assert_allclose(r.values.numpy(), expected, atol=1e-10)
        assert r.params["randomised"] == ["fc", "features.2", "features.0"]
        assert r.direction == "lower" and r.passes == pytest.approx(3.0)


def test_mprt_default_similarity_is_signed_spearman(tiny_cnn, images):
    """Default-constructed MPRT compares signed maps (input × gradient) by Spearman of the
    signed values: scipy.stats.spearmanr in a direct loop (|maps| would rank differently)."""
    target = torch.tensor([0, 1, 2, 3])
    plan = [["fc"], ["features.2"], ["features.0"]]

    def rho(u, v):
        return scipy.stats.spearmanr(u, v)[0]

    def rho_abs(u, v):
        return scipy.stats.spearmanr(u.abs(), v.abs())[0]

    method = "input_x_gradient"
    maps, ref = _direct_mprt(tiny_cnn, images, target, method, "cascading", 42, plan, rho)
    assert (maps < 0).any() and (maps > 0).any()
    _, ref_abs = _direct_mprt(tiny_cnn, images, target, method, "cascading", 42, plan, rho_abs)
    assert np.abs(ref - ref_abs).max() > 0.05  # the test tells signed from absolute ranks
    r = MPRT()(maps, x=images, model=tiny_cnn, target=target, explainer=method)
    np.testing.assert_allclose(r.curves.numpy(), ref, atol=1e-10)
    np.testing.assert_allclose(r.values.numpy(), ref[:, -1], atol=1e-10)


def test_mprt_ssim_matches_skimage_in_a_direct_loop(tiny_cnn, images):
    """MPRT with similarity="ssim" and no options: skimage's SSIM (σ = 1.5, data range 1 on
    min-max normalised maps) of the original and randomised maps of a direct loop."""
    target = torch.tensor([0, 1, 2, 3])
    plan = [["fc"], ["features.2"], ["features.0"]]

    def sim(u, v):
        return _sk_ssim(u.view(12, 12), v.view(12, 12))

    maps, ref = _direct_mprt(tiny_cnn, images, target, "saliency", "cascading", 42, plan, sim)
    r = MPRT(similarity="ssim")(maps, x=images, model=tiny_cnn, target=target, explainer="saliency")
    np.testing.assert_allclose(r.curves.numpy(), ref, atol=1e-6, rtol=0)


def test_mprt_matches_quantus_mprt_with_the_same_randomisation(tiny_cnn, images):
    """Quantus seeds `seed + 1` before each layer's reset_parameters() (top_down = our cascading,
    one layer per step), so ours with seed=s+1, seeding="same" reproduces its randomisation
    exactly; both explain with the same saliency function and compare |maps| by Spearman
    (Quantus abs=True). Our default per-layer seeds draw other weights: other values."""
    quantus = pytest.importorskip("quantus")
    target = torch.tensor([0, 1, 2, 3])
    maps = sl.explain(tiny_cnn, images, "saliency", target=target)["saliency"].maps

    def explain(model, inputs, targets, **kwargs):
        x = torch.as_tensor(inputs, dtype=torch.float32)
        t = torch.as_tensor(targets).long()
        return sl.explain(model, x, "saliency", target=t)["saliency"].maps[:, None].numpy()

    q = quantus.MPRT(
        similarity_func=quantus.similarity_func.correlation_spearman,
        layer_order="top_down", seed=41, abs=True, normalise=True, disable_warnings=True,
    )  # fmt: skip
    scores = q(
        model=copy.deepcopy(tiny_cnn), x_batch=images.numpy(), y_batch=target.numpy(),
        a_batch=maps[:, None].numpy(), explain_func=explain, device="cpu",
    )  # fmt: skip
    layers = [k for k in scores if k != "original"]
    ref = np.array([scores[k] for k in layers]).T
    kw = dict(x=images, model=tiny_cnn, target=target, explainer="saliency")
    metric = MPRT(granularity="layer", seed=42, similarity="spearman_abs", seeding="same")
    r = metric(maps, **kw)
    assert r.params["randomised"] == layers == ["fc", "features.2", "features.0"]
    np.testing.assert_allclose(r.curves.numpy(), ref, atol=1e-6)
    own = MPRT(granularity="layer", seed=42, similarity="spearman_abs")(maps, **kw)
    assert np.abs(own.curves.numpy() - ref).max() > 1e-3


def test_gradient_maps_decorrelate_and_model_independent_maps_do_not(tiny_cnn, images):
    target = torch.tensor([0, 1, 2, 3])
    ex = sl.explain(tiny_cnn, images, ["saliency", "sobel"], target=target)
    kw = dict(x=images, model=tiny_cnn, target=target)
    grad = MPRT()(ex["saliency"].maps, explainer="saliency", **kw)
    edges = MPRT()(ex["sobel"].maps, explainer="sobel", **kw)
    assert grad.mean < 0.5 and grad.curves[:, -1].mean() < grad.curves[:, 0].mean()
    assert torch.allclose(edges.values, torch.ones(4, dtype=torch.double))
    ssim = MPRT(similarity="ssim", similarity_options={"window": 7})
    assert ssim(ex["saliency"].maps, explainer="saliency", **kw).mean < 0.6


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


class _Raising(Explainer):
    def __init__(self, after: int) -> None:
        super().__init__("saliency")
        self.after = after

    def __call__(self, model, x, target):
        out = super().__call__(model, x, target)
        if self.rows > self.after:
            raise RuntimeError("explainer failed")
        return out


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("order", ["cascading", "independent"])
@pytest.mark.parametrize("init", ["reset", "normal"])
def test_model_is_restored_also_when_the_explainer_raises(tiny_cnn, images, order, init, batched):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), tiny_cnn.pool)
    net = nn.Sequential(net, nn.Flatten(), nn.Linear(4, 3))
    net[0][1].running_mean.uniform_()
    net.train()
    net[0].eval()  # mixed training flags
    net[2].bias.requires_grad_(False)  # mixed requires_grad
    before = _state(net)
    params = [id(p) for p in net.parameters()]
    flags = [m.training for m in net.modules()]
    grads = [p.requires_grad for p in net.parameters()]
    x = images
    maps = torch.rand(4, 12, 12)
    metric = MPRT(order=order, init=init, granularity="layer", batched=batched)
    # batched, the one call raises with the layers' two weight versions installed
    for explainer in ("saliency", _Raising(after=4), _Raising(after=0)):
        if isinstance(explainer, _Raising):
            with pytest.raises(RuntimeError, match="explainer failed"):
                metric(maps, x=x, model=net, target=0, explainer=explainer)
        else:
            metric(maps, x=x, model=net, target=0, explainer=explainer)
        assert not any("forward" in m.__dict__ for m in net.modules())
        after = net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert [id(p) for p in net.parameters()] == params
        assert [m.training for m in net.modules()] == flags
        assert [p.requires_grad for p in net.parameters()] == grads


def test_randomise_stage_reset_and_normal_inits():
    from saliencelab.metrics.randomisation.parameter import Stage, randomise_stage

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(60, 80), nn.BatchNorm1d(80))
    with torch.no_grad():
        net[0].weight.mul_(3).add_(0.5)
        net[1].running_var.fill_(4.0)
    stage = Stage("all", ["0", "1"])
    for seeding in ("per_layer", "same"):
        ref = copy.deepcopy(net)
        for name in ("0", "1"):  # per layer: each its own seed; same: one seed for the stage
            if seeding == "per_layer" or name == "0":
                torch.manual_seed(_layer_seed(5, name) if seeding == "per_layer" else 5)
            ref.get_submodule(name).reset_parameters()
        work = copy.deepcopy(net)
        randomise_stage(work, stage, seed=5, init="reset", seeding=seeding)
        assert all(
            torch.equal(a, b)
            for a, b in zip(work.state_dict().values(), ref.state_dict().values(), strict=True)
        )
    work = copy.deepcopy(net)
    randomise_stage(work, stage, seed=5, init="normal")
    w0, w1 = net[0].weight.detach(), work[0].weight.detach()
    assert not torch.equal(w0, w1)
    assert abs(float(w1.mean() - w0.mean())) < 0.05 and abs(float(w1.std() / w0.std()) - 1) < 0.05
    assert torch.equal(work[1].running_var, net[1].running_var)  # normal: buffers untouched
    again = copy.deepcopy(net)
    randomise_stage(again, stage, seed=5, init="normal")
    assert torch.equal(again[0].weight, w1)  # seeded
    # in_place=False: the same draws, returned; the model is left as it was
    for init in ("reset", "normal"):
        work, kept = copy.deepcopy(net), copy.deepcopy(net)
        randomise_stage(work, stage, seed=5, init=init)
        draws = randomise_stage(kept, stage, seed=5, init=init, in_place=False)
        for name in stage.layers:
            for key, t in {**work.get_submodule(name).state_dict()}.items():
                assert torch.equal(draws[name][key], t)
        for a, b in zip(kept.state_dict().values(), net.state_dict().values(), strict=True):
            assert torch.equal(a, b)


class _Recording(Explainer):
    """Saliency, recording the module's parameters at every call (one call per step)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__("saliency")
        self.net, self.states = net, []

    def __call__(self, model, x, target):
        self.states.append(_state(self.net))
        return super().__call__(model, x, target)


def test_each_layer_gets_its_own_draw_the_same_in_either_order(images):
    """Adebayo et al. re-initialise each layer with its own independent draw: by default
    (seeding="per_layer") two layers of the same shape get different weights, and a layer gets
    the same weights in cascading and independent order and whether its stage holds other
    layers or not. seeding="same" (Quantus' scheme: the seed set before every stage) gives
    same-shaped layers identical weights."""
    from saliencelab.metrics.randomisation.parameter import Stage, randomise_stage

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    before = _state(net)
    maps = torch.rand(4, 12, 12)
    for seeding in ("per_layer", "same"):
        states = {}
        for order in ("cascading", "independent"):
            rec = _Recording(net)
            r = MPRT(order=order, seeding=seeding, batched=False)(
                maps, x=images, model=net, target=0, explainer=rec
            )
            assert r.params["randomised"] == ["8", "4", "2", "0"]
            states[order] = rec.states
        for step, name in enumerate(["8", "4", "2", "0"]):  # stage `name` randomised at `step`
            for key in ("weight", "bias"):
                cascading = states["cascading"][step][f"{name}.{key}"]
                assert torch.equal(cascading, states["independent"][step][f"{name}.{key}"])
                assert not torch.equal(cascading, before[f"{name}.{key}"])
        last = states["cascading"][-1]  # every stage randomised
        same_weights = torch.equal(last["2.weight"], last["4.weight"])
        assert same_weights == (seeding == "same")
        if seeding == "per_layer":
            corr = torch.corrcoef(
                torch.stack([last["2.weight"].flatten(), last["4.weight"].flatten()])
            )
            assert abs(float(corr[0, 1])) < 0.5
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # per layer: a layer's draw does not depend on the other layers of its stage
    alone = randomise_stage(net, Stage("4", ["4"]), seed=42, in_place=False)
    shared = randomise_stage(net, Stage("both", ["2", "4"]), seed=42, in_place=False)
    assert all(torch.equal(alone["4"][k], shared["4"][k]) for k in ("weight", "bias"))
    assert not torch.equal(shared["2"]["weight"], shared["4"]["weight"])
    with pytest.raises(SaliencelabError, match="Unknown seeding 'layer'.*per_layer"):
        MPRT(seeding="layer")


def test_the_rng_state_of_the_caller_is_untouched(tiny_cnn, images):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    maps = torch.rand(4, 12, 12)
    torch.manual_seed(123)
    MPRT()(maps, x=images, model=tiny_cnn, target=0, explainer="saliency")
    assert torch.equal(torch.rand(3), expected)


def test_stages_blocks_layers_and_selection(tiny_cnn, images):
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())
    )
    assert [(s.name, s.layers) for s in stages(net)] == [
        ("0", ["0", "1"]),  # the norm layer joins the conv before it
        ("2.0", ["2.0"]),  # a container is split into its children
    ]
    assert [s.name for s in stages(net, "layer")] == ["0", "1", "2.0"]
    maps = torch.rand(4, 12, 12)
    kw = dict(x=images, model=tiny_cnn, target=0, explainer="saliency")
    assert MPRT(layers=2)(maps, **kw).params["randomised"] == ["fc", "features.2"]
    r = MPRT(layers=["features.0", "fc"])(maps, **kw)
    assert r.params["randomised"] == ["fc", "features.0"] and r.curves.shape == (4, 2)
    r = MPRT(layers="features")(maps, **kw)  # a module: all layers inside, one step
    assert r.params["randomised"] == ["features"] and r.curves.shape == (4, 1)


def test_stages_look_inside_a_data_parallel_wrapper(tiny_cnn, images):
    """nn.DataParallel holds the model as `module`: its stages are the model's (was one stage,
    `module`, so layers=2 asked "for more stages than the model's 1")."""
    wrapped = nn.DataParallel(tiny_cnn)
    assert [(s.name, s.layers) for s in stages(wrapped)] == [
        (f"module.{s.name}", [f"module.{n}" for n in s.layers]) for s in stages(tiny_cnn)
    ]
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}
    maps = sl.explain(tiny_cnn, images, ["saliency"], target=0)["saliency"].maps
    r = MPRT(layers=2)(maps, x=images, model=wrapped, target=0, explainer="saliency")
    assert r.params["randomised"] == ["module.fc", "module.features.2"]
    assert all(torch.equal(before[k], v) for k, v in wrapped.state_dict().items())


def test_a_parametrized_layer_is_one_step_with_its_originals():
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    torch.manual_seed(0)
    net = nn.Sequential(
        weight_norm(nn.Conv2d(3, 4, 3, padding=1)), nn.ReLU(), nn.Flatten(),
        spectral_norm(nn.Linear(4 * 6 * 6, 3)),
    )  # fmt: skip
    expected = [
        ("0", ["0", "0.parametrizations.weight"]),
        ("3", ["3", "3.parametrizations.weight"]),
    ]
    for granularity in ("layer", "block"):  # the weight's originals were a step of their own
        assert [(s.name, s.layers) for s in stages(net, granularity)] == expected
    x = torch.randn(2, 3, 6, 6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    maps = sl.explain(net, x, ["saliency"], target=0)["saliency"].maps
    r = MPRT(granularity="layer")(maps, x=x, model=net, target=0, explainer="saliency")
    assert r.params["randomised"] == ["3", "0"] and r.curves.shape == (2, 2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_mprt_bad_inputs(tiny_cnn, images):
    maps = torch.rand(4, 12, 12)
    kw = dict(x=images, model=tiny_cnn, target=0, explainer="saliency")
    with pytest.raises(SaliencelabError, match="no layer or block named 'fc2'.*Did you mean: fc"):
        MPRT(layers=["fc2"])(maps, **kw)
    with pytest.raises(SaliencelabError, match="Unknown similarity 'pearson'"):
        MPRT(similarity="pearson")
    with pytest.raises(SaliencelabError, match="Unknown order"):
        MPRT(order="bottom_up")
    with pytest.raises(SaliencelabError, match="more stages than the model's 3"):
        MPRT(layers=5)(maps, **kw)
    with pytest.raises(SaliencelabError, match="has no parameters to randomise"):
        MPRT(layers=["pool"])(maps, **kw)
    with pytest.raises(SaliencelabError, match="needs explainer"):
        MPRT()(maps, x=images, model=tiny_cnn, target=0)
    before = _state(tiny_cnn)
    with pytest.raises(SaliencelabError, match="SSIM window"):
        MPRT(similarity="ssim", similarity_options={"window": 13})(maps, **kw)
    with pytest.raises(SaliencelabError, match="Bad similarity_options"):
        MPRT(similarity="hog", similarity_options={"cells": 4})(maps, **kw)
    assert all(torch.equal(before[k], v) for k, v in tiny_cnn.state_dict().items())


def test_mprt_through_evaluate(tiny_cnn, images):
    ex = sl.explain(tiny_cnn, images, ["saliency", "guided_backprop"], target=0)
    rep = sl.evaluate(
        tiny_cnn, images, ex, metrics={"model_randomisation": {"layers": 2}}, target=0,
        references=False,
    )  # fmt: skip
    r = rep["saliency"]["model_randomisation"]
    assert r.values.shape == (4,) and r.curves.shape == (4, 2)
    rows = []
    handle = tiny_cnn.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:  # the chunk size reaches the explanations the metric recomputes
        sl.evaluate(
            tiny_cnn, images, ex, metrics={"model_randomisation": {"layers": 2}}, target=0,
            references=False, chunk_size=3,
        )  # fmt: skip
    finally:
        handle.remove()
    assert rows and max(rows) <= 3


# -- several randomised models in one explanation call -----------------------------------------


def _bn_cnn() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
        nn.Conv2d(5, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(20, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 4),
    )  # fmt: skip
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("order", ["cascading", "independent"])
@pytest.mark.parametrize(
    "method, options",
    [
        ("saliency", {}),
        ("integrated_gradients", {"n_steps": 3}),  # rows of a sample are not contiguous
        ("gradcam", {"layer": "3"}),
        ("rise", {"n_masks": 6, "cell": 4}),  # forward-only passes
    ],
)
@pytest.mark.parametrize("chunk", [None, 3, 5, 9])
def test_batched_mprt_equals_one_call_per_step(images, order, method, options, chunk):
    """K randomised models as one call of K·B rows (each randomised layer computes each row with
    its step's weights) give the maps of K calls of B rows; chunk sizes 3 and 5 mix the steps
    inside chunks and split the rows of a sample; 9 puts rows of one version on both sides of
    the other's (independent order). Equal up to float rounding, in float64: chunks of other
    rows round the maps differently, which can swap near-tied values of a 12 × 12 map, and each
    adjacent swap moves a Spearman ρ by 6·2 / (n(n² − 1)) ≈ 3e-6 (n = 144); in float32 the
    number of swaps depends on the CPU's kernels (30 on one with AVX2 only)."""
    net = _bn_cnn().double()
    target = torch.tensor([0, 1, 2, 3])
    maps = torch.rand(4, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(x=images.double(), model=net, target=target)
    before = _state(net)
    results = {}
    for batched in (True, False):
        metric = MPRT(order=order, batched=batched, layers=5, granularity="layer")
        explainer = Explainer(method, options, chunk_size=chunk)
        r = metric(maps, explainer=explainer, **kw)
        assert explainer.rows == 4 * 5  # every step's rows, in one call or five
        assert r.params["calls"] == (1 if batched else 5)
        results[batched] = r.curves
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        assert not any("forward" in m.__dict__ for m in net.modules())
    torch.testing.assert_close(results[True], results[False], atol=1e-5, rtol=0, equal_nan=True)


def test_mprt_runs_one_call_per_step_where_it_cannot_batch(images):
    """Non-row-wise methods (draws per batch position, or weights read by the method), a layer
    type not known to be row-wise, and a row-wise layer that sees other rows than the chunk's
    (found during the call) all fall back to one call per step, with the same values."""
    net = _bn_cnn()
    maps = torch.rand(4, 12, 12)
    kw = dict(granularity="layer", layers=3)
    for explainer in (
        "smoothgrad",
        "lrp",
        Explainer("integrated_gradients", {"baselines": "uniform"}),
    ):
        r = MPRT(**kw)(maps, x=images, model=net, target=0, explainer=explainer)
        assert r.params["calls"] == 3

    class Scale(nn.Module):  # owns a parameter; not a known row-wise layer
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.tensor(1.5))

        def forward(self, x):
            return x * self.weight

    scaled = nn.Sequential(_bn_cnn(), Scale())
    r = MPRT(**kw)(maps, x=images, model=scaled, target=0, explainer="saliency")
    assert r.params["calls"] == 3 and r.params["randomised"][0] == "1"

    class Gated(nn.Module):  # a Linear called on one row of its own, not the chunk's rows
        def __init__(self) -> None:
            super().__init__()
            self.net = _bn_cnn()
            self.gate = nn.Linear(1, 4)

        def forward(self, x):
            return self.net(x) + self.gate(torch.ones(1, 1))

    gated = Gated().eval()
    r = MPRT(**kw)(maps, x=images, model=gated, target=0, explainer="saliency")
    ref = MPRT(batched=False, **kw)(maps, x=images, model=gated, target=0, explainer="saliency")
    assert r.params["calls"] == 3 and r.params["randomised"][0] == "gate"
    torch.testing.assert_close(r.curves, ref.curves, atol=1e-6, rtol=0)
    assert not any("forward" in m.__dict__ for m in gated.modules())


def test_tied_weights_run_one_call_per_step_and_change_wherever_they_are_used(images):
    """conv2 holds conv1's weight. Batched steps gave each module its own draws, untying them
    (at step conv2, conv1 kept the trained weight): curves off by up to 0.19 from one call per
    step, where the tied tensor is randomised in place for both. Now they are not batched, and
    the curves are those of a copy of the model randomised step by step by hand."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.conv2.weight = self.conv1.weight
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            for conv in (self.conv0, self.conv1, self.conv2):
                x = torch.relu(conv(x))
            return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))

    from saliencelab.metrics.randomisation.parameter import Stage, randomise_stage

    torch.manual_seed(0)
    net = Tied().eval().double()
    x, target = images[:2].double(), torch.tensor([0, 1])
    maps = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(x=x, model=net, target=target, explainer="saliency")
    for order in ("cascading", "independent"):
        r = MPRT(order=order, similarity="spearman")(maps, **kw)
        assert r.params["calls"] == 4 and r.params["randomised"] == [
            "fc",
            "conv2",
            "conv0",
            "conv1",
        ]
        by_hand = copy.deepcopy(net)  # keeps the tie
        curve = []
        for name in r.params["randomised"]:
            if order == "independent":
                by_hand = copy.deepcopy(net)
            randomise_stage(by_hand, Stage(name, [name]), seed=r.params["seed"], init="reset")
            again = sl.explain(by_hand, x, "saliency", target=target)["saliency"].maps
            curve.append(S.similarity_to("spearman", maps)(again))
        torch.testing.assert_close(r.curves, torch.stack(curve, 1), atol=1e-12, rtol=0)
        assert net.conv2.weight is net.conv1.weight  # still tied afterwards


def test_a_normal_draw_changes_a_parameter_of_equal_values():
    """init="normal" drew N(mean, std) with the std of one value taken as 0: a scalar scale
    kept its value while the step counted it as randomised. Equal values draw N(mean, mean²);
    an all-zero parameter stays 0."""
    from saliencelab.metrics.randomisation.parameter import Stage, randomise_stage

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(2.0))
            self.flat = nn.Parameter(torch.full((50,), 0.5))
            self.zero = nn.Parameter(torch.zeros(3))

    net = Scaled()
    randomise_stage(net, Stage("<root>", [""]), seed=0, init="normal")
    scale, flat = float(net.scale.detach()), net.flat.detach()
    assert scale != 2.0 and len(set(flat.tolist())) == 50
    assert abs(float(flat.std()) - 0.5) < 0.2 and net.zero.eq(0).all()


@pytest.mark.parametrize(
    "samples",
    [
        [4, 1, 5, 0, 2, 3],  # versions T F T F T T: interleaved, gathered by index
        [0, 1, 2, 3, 4, 5],  # F F T T T T: two stretches
        [4, 0, 1, 5, 2, 3],  # T F F T T T: three stretches
    ],
)
def test_weight_versions_computes_each_row_with_its_version(samples):
    """A linear layer with two weight versions: row i of a chunk gets W_v(i) x_i + b_v(i), and
    the input gradient of row i is W_v(i)ᵀ (the definition, row by row)."""
    from saliencelab.core.row_versions import NotRowwise, chunk_samples, weight_versions

    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    other = {"weight": torch.randn(2, 3), "bias": torch.randn(2)}
    samples = torch.tensor(samples)  # group = sample // 2
    uses_other = [0, 1, 1]  # groups 1 and 2 use the other version (any truthy value)
    x = torch.randn(6, 3, requires_grad=True)
    with (
        weight_versions(
            layer, {"": other}, lambda s: [v // 2 for v in s.tolist()], {"": uses_other}
        ),
        chunk_samples(samples),
    ):
        out = layer(x)
    rows_other = samples // 2 >= 1
    w = torch.where(rows_other[:, None, None], other["weight"], layer.weight.detach())
    b = torch.where(rows_other[:, None], other["bias"], layer.bias.detach())
    torch.testing.assert_close(out, torch.einsum("noi,ni->no", w, x) + b)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    torch.testing.assert_close(grad, w[:, 0, :])
    assert "forward" not in layer.__dict__
    with pytest.raises(ValueError, match="not a row-wise layer"):
        with weight_versions(nn.Sequential(layer), {"": other}, list, {"": uses_other}):
            pass
    with weight_versions(layer, {"": other}, lambda s: [0] * len(s), {"": uses_other}):
        torch.testing.assert_close(layer(x[:1]), x[:1] @ layer.weight.T + layer.bias)  # a probe
        with pytest.raises(NotRowwise), chunk_samples(samples):
            layer(x[:4])  # not the chunk's rows
    assert "forward" not in layer.__dict__


def test_weight_versions_keep_channels_last_gradients():
    """Rows of a chunk in stretches of one version each: the input gradient keeps the rows'
    channels-last layout (gathering the stretches into zeros would give every layer below a
    gradient to convert), and equals each stretch's own convolution's."""
    from saliencelab.core.row_versions import chunk_samples, weight_versions

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    other = {"weight": torch.randn(4, 3, 3, 3), "bias": torch.randn(4)}
    x = torch.randn(6, 3, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    with (
        weight_versions(conv, {"": other}, lambda s: [v // 3 for v in s.tolist()], {"": [0, 1]}),
        chunk_samples(torch.arange(6)),
    ):
        out = conv(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    top = x[:3].detach().requires_grad_()
    bottom = x[3:].detach().requires_grad_()
    y = torch.cat([conv(top), F.conv2d(bottom, other["weight"], other["bias"], padding=1)])
    torch.testing.assert_close(out, y)
    torch.testing.assert_close(
        grad, torch.cat(torch.autograd.grad(y.square().sum(), [top, bottom]))
    )


# -- random logit ----------------------------------------------------------------------------


def test_random_logit_matches_a_direct_loop(tiny_cnn, images):
    target = torch.tensor([0, 1, 2, 3])
    maps = sl.explain(tiny_cnn, images, "saliency", target=target)["saliency"].maps
    r = RandomLogit(similarity="spearman", seed=3)(
        maps, x=images, model=tiny_cnn, target=target, explainer="saliency"
    )
    other = r.extras["random_class"]
    assert (other != target).all() and ((other >= 0) & (other < 5)).all()
    ref = []
    for i in range(4):
        m = sl.explain(tiny_cnn, images[i : i + 1], "saliency", target=int(other[i]))
        ref.append(scipy.stats.spearmanr(maps[i].flatten(), m["saliency"].maps[0].flatten())[0])
    np.testing.assert_allclose(r.values.numpy(), ref, atol=1e-10)
    again = RandomLogit(similarity="spearman", seed=3)(
        maps, x=images, model=tiny_cnn, target=target, explainer="saliency"
    )
    assert torch.equal(again.extras["random_class"], other)
    # the other classes are drawn uniformly among the classes that are not the target
    many = sl.metrics.randomisation.random_logit.random_other_class(
        torch.zeros(5000, dtype=torch.long), 5, 0, torch.randn(5000, 3)
    )
    counts = torch.bincount(many, minlength=5)
    assert counts[0] == 0 and (counts[1:] > 1100).all()


def test_random_logit_default_ssim_matches_skimage(tiny_cnn, images):
    """Default-constructed random logit: skimage's SSIM (σ = 1.5, data range 1 on min-max
    normalised maps, the 11 × 11 window's valid positions) of the target's map and the random
    class's map, each explained directly."""
    target = torch.tensor([0, 1, 2, 3])
    maps = sl.explain(tiny_cnn, images, "saliency", target=target)["saliency"].maps
    r = RandomLogit()(maps, x=images, model=tiny_cnn, target=target, explainer="saliency")
    other = r.extras["random_class"]
    ref = []
    for i in range(4):
        m = sl.explain(tiny_cnn, images[i : i + 1], "saliency", target=int(other[i]))
        ref.append(_sk_ssim(maps[i], m["saliency"].maps[0]))
    np.testing.assert_allclose(r.values.numpy(), ref, atol=1e-6, rtol=0)


def test_random_logit_matches_quantus_with_two_classes(images):
    """With two classes the other class is forced (1 − c), so Quantus' draw is ours."""
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(0)
    from conftest import TinyCNN

    net = TinyCNN(classes=2).eval()
    target = torch.tensor([0, 1, 1, 0])
    maps = sl.explain(net, images, "saliency", target=target)["saliency"].maps

    def explain(model, inputs, targets, **kwargs):
        x, t = torch.as_tensor(inputs), torch.as_tensor(targets).long()
        return sl.explain(model, x, "saliency", target=t)["saliency"].maps[:, None].numpy()

    q = quantus.RandomLogit(
        similarity_func=quantus.similarity_func.correlation_spearman, num_classes=2,
        disable_warnings=True,
    )  # fmt: skip
    ref = q(
        model=net, x_batch=images.numpy(), y_batch=target.numpy(),
        a_batch=maps[:, None].numpy(), explain_func=explain, device="cpu",
    )  # fmt: skip
    r = RandomLogit(similarity="spearman")(
        maps, x=images, model=net, target=target, explainer="saliency"
    )
    assert torch.equal(r.extras["random_class"], 1 - target)
    np.testing.assert_allclose(r.values.numpy(), np.asarray(ref, dtype=float), atol=1e-6)


class _ConstantRows(Explainer):
    """Saliency, with the maps of samples 1 and 3 made constant (as Grad-CAM's are once the top
    blocks are random: the ReLU of a negative CAM is all zero)."""

    def __call__(self, model, x, target):
        out = super().__call__(model, x, target)
        out.maps[1::2] = 0.0
        return out


@pytest.mark.parametrize("similarity", ["spearman", "spearman_abs", "hog", "ssim"])
@pytest.mark.parametrize("batched", [True, False])
def test_constant_randomised_maps_score_zero_not_nan(tiny_cnn, images, similarity, batched):
    """A constant recomputed map has no ranking (no HOG gradients, no SSIM contrast), so its
    similarity to the original is 0: every sample counts in the mean (NaN there had made
    methods whose maps go flat look less sensitive to randomisation than they are; SSIM's ~1
    had made them look unchanged)."""
    target = torch.tensor([0, 1, 2, 3])
    maps = sl.explain(tiny_cnn, images, "saliency", target=target)["saliency"].maps
    kw = dict(x=images, model=tiny_cnn, target=target, explainer=_ConstantRows("saliency"))
    opts = {"cell": 3, "block": 2} if similarity == "hog" else None
    for value in ("last", "mean"):
        r = MPRT(similarity=similarity, value=value, batched=batched, similarity_options=opts)(
            maps, **kw
        )
        assert r.n == 4 and r.curves.isfinite().all()
        assert (r.curves[1::2] == 0).all() and (r.values[1::2] == 0).all()
        assert r.mean == pytest.approx(float(r.values.mean()))
    r = RandomLogit(similarity=similarity, similarity_options=opts)(maps, **kw)
    assert r.n == 4 and (r.values[1::2] == 0).all()


def test_random_logit_bad_inputs(tiny_cnn, images):
    maps = torch.rand(4, 12, 12)
    with pytest.raises(SaliencelabError, match="Unknown similarity"):
        RandomLogit(similarity="cosine")
    with pytest.raises(SaliencelabError, match=r"classes in \[0, 3\)"):
        RandomLogit(num_classes=3)(maps, x=images, model=tiny_cnn, target=4, explainer="saliency")


# -- the sanity-check finding on the real model ----------------------------------------------


def test_efficientnet_gradient_decorrelates_guided_backprop_does_not():
    """Adebayo et al.'s finding, small: 1 photograph at 64×64, the top 3 blocks randomised
    (the full setting is scripts/sanity_checks.py, docs/sanity_checks.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: steadier on a loaded CPU, restored below
    try:
        _efficientnet_finding()
    finally:
        torch.set_num_threads(threads)


def _efficientnet_finding() -> None:
    model = sl.load_model("efficientnet_lite0")
    x = model.preprocess(sl.sample_image("chelsea"))
    x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
    ex = sl.explain(model, x, ["saliency", "guided_backprop"])
    kw = dict(x=x, model=model, target=None)
    metric = MPRT(layers=3)
    grad = metric(ex["saliency"].maps, explainer="saliency", **kw)
    guided = metric(ex["guided_backprop"].maps, explainer="guided_backprop", **kw)
    assert guided.values[0] > 0.9
    assert grad.values[0] < guided.values[0] - 0.3


def test_recomputed_maps_with_nan_have_no_similarity_not_a_perfect_pass():
    """A method that fails (NaN maps) on the randomised model scored Spearman and HOG 0, "changed
    completely", the best a method can do; SSIM gave NaN. Now every similarity gives NaN there,
    and n counts only the samples whose maps are finite."""
    from saliencelab.core.registry import _REGISTRY

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    original = model[0].weight.detach().clone()

    @sl.register("nan_once_randomised", family="gradient", cost="1")
    def nan_once_randomised(ctx):
        g = ctx.capture(input_grad=True).input_grad
        return g if torch.equal(model[0].weight, original) else g * math.nan

    try:
        x = torch.rand(3, 3, 8, 8)
        maps = sl.explain(model, x, "nan_once_randomised")["nan_once_randomised"].maps
        for similarity in ("spearman", "spearman_abs", "hog", "ssim"):
            options = {"cell": 4, "block": 2} if similarity == "hog" else None
            if similarity == "ssim":
                options = {"window": 3}
            mprt = MPRT(similarity=similarity, similarity_options=options)
            r = mprt(maps, x=x, model=model, explainer="nan_once_randomised")
            assert torch.isnan(r.values).all() and r.n == 0, similarity
            r = RandomLogit(similarity=similarity, similarity_options=options)(
                maps, x=x, model=model, explainer="nan_once_randomised"
            )
            assert torch.isfinite(r.values).all(), similarity  # same weights: finite maps
        # one map of the batch with a NaN: only its value is NaN
        b = maps.clone()
        b[1, 0, 0] = math.inf
        values = S.similarity("spearman", maps, b)
        assert torch.isnan(values[1]) and torch.isfinite(values[[0, 2]]).all()
        assert torch.allclose(values[[0, 2]], torch.ones(2, dtype=values.dtype))
        assert torch.isnan(S.similarity("ssim", b, maps, {"window": 3})[1])  # either side
    finally:
        _REGISTRY.pop("nan_once_randomised", None)


def test_similarity_of_empty_batches_is_empty():
    for name in ("spearman", "ssim"):
        assert S.similarity(name, torch.rand(0, 16, 16), torch.rand(0, 16, 16)).numel() == 0
