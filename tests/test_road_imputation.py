"""ROAD's linear imputation: the CPU direct solve and the conjugate gradients (the CUDA path)
against a dense solve of the same system, written out pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saliencelab.metrics.faithfulness import linear_imputation, road
from saliencelab.metrics.faithfulness.road import _conjugate_gradients, _grid, _solve_image


def imputation_system(img: np.ndarray, removed: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """The system written out pixel by pixel: s_i·v_i - Σ_{j removed} w_ij·v_j = Σ_{j known}
    w_ij·x_j for every removed pixel i, over the in-image 8-neighbours (w = 1/6 direct, 1/12
    diagonal). Returns (pixel -> unknown number, dense matrix, right-hand sides (k, C))."""
    c, h, w = img.shape
    ids = {p: k for k, p in enumerate(zip(*np.nonzero(removed), strict=True))}
    a = np.zeros((len(ids), len(ids)))
    rhs = np.zeros((len(ids), c))
    for (i, j), k in ids.items():
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ii, jj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= ii < h and 0 <= jj < w):
                    continue
                weight = 1 / 12 if di and dj else 1 / 6
                a[k, k] += weight
                if (ii, jj) in ids:
                    a[k, ids[ii, jj]] -= weight
                else:
                    rhs[k] += weight * img[:, ii, jj]
    return ids, a, rhs


def _filled(img: np.ndarray, ids: dict, sol: np.ndarray) -> np.ndarray:
    out = img.copy()
    for (i, j), k in ids.items():
        out[:, i, j] = sol[k]
    return out


def dense_imputation(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The system solved densely (numpy)."""
    ids, a, rhs = imputation_system(img, removed)
    return _filled(img, ids, np.linalg.solve(a, rhs)) if ids else img.copy()


def spsolve_imputation(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The same system as a sparse matrix, solved by scipy's spsolve (another solver)."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    ids, a, rhs = imputation_system(img, removed)
    sol = spsolve(csc_matrix(a), rhs).reshape(len(ids), -1)
    return _filled(img, ids, sol)


def _mask(h: int, w: int, kind: str) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    if kind == "corner":
        m[0, 0] = True
    elif kind == "corners":
        m[0, 0] = m[0, -1] = m[-1, 0] = m[-1, -1] = True
    elif kind == "border":
        m[0], m[-1], m[:, 0], m[:, -1] = True, True, True, True
    elif kind == "top_row_right_column":
        m[0], m[:, -1] = True, True
    elif kind == "all_but_centre":
        m[:] = True
        m[h // 2, w // 2] = False
    elif kind == "all_but_corner":
        m[:] = True
        m[-1, -1] = False
    elif kind == "block":
        m[1 : h - 1, 2 : w - 1] = True
    else:  # random, 70 %
        m = torch.rand(h, w, generator=torch.Generator().manual_seed(h * w)) < 0.7
        m[h // 2, 0] = False
    return m


KINDS = [
    "corner",
    "corners",
    "border",
    "top_row_right_column",
    "all_but_centre",
    "all_but_corner",
    "block",
    "random",
]
SIZES = [(6, 6), (5, 8), (9, 7), (1, 7), (6, 1)]


def _case(h: int, w: int, kind: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    removed = torch.stack([_mask(h, w, kind), _mask(h, w, "random")])
    if removed.all(dim=(1, 2)).any():  # a 1-pixel-wide image with every pixel removed
        removed[:, 0, 0] = False
    return x.to(dtype), removed


def _reference(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    ref = [dense_imputation(x[i].double().numpy(), removed[i].numpy()) for i in range(len(x))]
    return torch.from_numpy(np.stack(ref))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_direct_solve_equals_dense(size, kind, dtype):
    x, removed = _case(*size, kind, dtype)
    out = linear_imputation(x, removed)
    assert out.dtype == dtype and out.shape == x.shape
    ref = _reference(x, removed)
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=0)
    known = ~removed[:, None].expand_as(x)
    assert torch.equal(out[known], x[known])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(6, 6), (9, 7), (1, 7)])
def test_conjugate_gradients_equal_dense(size, kind, dtype):
    x, removed = _case(*size, kind, dtype)
    out = _conjugate_gradients(x, removed[:, None], None, None)
    atol = 1e-8 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), _reference(x, removed), atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_conjugate_gradients_read_their_convergence_every_8_iterations_on_a_gpu(
    kind, dtype, monkeypatch, sync_count
):
    """Where reads are not free (`core.engine.free_reads`, as on CUDA) the convergence test is
    read every `CONVERGENCE_CHECK_EVERY` iterations: the same solution to the tolerance, a
    fraction of the waits for the device (each read waits for it)."""
    x, removed = _case(17, 19, kind, dtype)
    atol = 1e-8 if dtype == torch.float64 else 1e-4

    def waits() -> tuple[torch.Tensor, int]:
        out = []
        counter, _ = sync_count.count_syncs(
            lambda: out.append(_conjugate_gradients(x, removed[:, None], None, None)), chunk=8
        )
        return out[-1], sum(counter.sites.values())

    monkeypatch.setattr(road, "CONVERGENCE_CHECK_EVERY", 1)
    every, every_waits = waits()  # (sync_count runs the CUDA path: no host check)
    monkeypatch.setattr(road, "CONVERGENCE_CHECK_EVERY", 8)
    spaced, spaced_waits = waits()
    torch.testing.assert_close(spaced.double(), _reference(x, removed), atol=atol, rtol=0)
    torch.testing.assert_close(every.double(), _reference(x, removed), atol=atol, rtol=0)
    assert spaced_waits <= every_waits // 4 + 2, (spaced_waits, every_waits)


@pytest.mark.parametrize("pattern", ["smooth", "random"])
def test_direct_solve_equals_conjugate_gradients_on_64x64(pattern):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g, dtype=torch.float64)
    if pattern == "smooth":
        score = torch.nn.functional.interpolate(torch.rand(2, 1, 5, 5, generator=g), size=64)
    else:
        score = torch.rand(2, 1, 64, 64, generator=g)
    removed = score > score.flatten(1).quantile(0.3, dim=1)[:, None, None, None]  # 70 %
    cg = _conjugate_gradients(x, removed, 1e-12, None)
    torch.testing.assert_close(linear_imputation(x, removed), cg, atol=1e-9, rtol=0)


def _masks(h: int, w: int) -> dict[str, np.ndarray]:
    """Removed-pixel masks like ROAD's: noisy (saliency-like) and smooth (Grad-CAM-like) maps
    at 10, 50 and 90 %, plus a few shapes."""
    g = torch.Generator().manual_seed(h * w)
    noisy = torch.rand(h, w, generator=g, dtype=torch.float64)
    coarse = torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0, 0]
    out = {}
    for name, score in (("noisy", noisy), ("smooth", smooth)):
        ranks = score.flatten().argsort(descending=True).argsort().view(h, w)
        for p in (10, 50, 90):
            out[f"{name}{p}"] = (ranks < p * h * w // 100).numpy()
    for kind in ("corner", "border", "all_but_centre", "block"):
        out[kind] = _mask(h, w, kind).numpy()
    return out


@pytest.mark.parametrize("size", [(64, 64), (23, 40), (40, 23), (3, 50), (100, 100)])
def test_band_and_sparse_lu_solves_agree(size, monkeypatch):
    """`_solve_image`'s two exact solvers (LAPACK band Cholesky, SuperLU in nested dissection
    order) give the same values, and they solve the system (residual) on ROAD-like masks."""
    monkeypatch.setattr(road, "_BAND", float("inf"))  # the band solve at any bandwidth
    h, w = size
    img = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name, mask in _masks(h, w).items():
        if mask.all() or not mask.any():
            continue
        known = img.masked_fill(torch.from_numpy(mask), 0.0)[None]
        near = road._neighbours(known)[0].numpy()
        with road._scipy()[2].limit(limits=1, user_api="blas"):  # as `_direct` does
            band = _solve_image(mask, near, band=True)
            lu = _solve_image(mask, near, band=False)
        assert band.shape == (3, int(mask.sum()))
        np.testing.assert_allclose(band, lu, atol=1e-11, rtol=0, err_msg=name)
        # residual of the system: s_i·v_i - Σ_j w_ij·v_j over all neighbours = 0 at removed i
        v = known[0].clone()
        v[:, torch.from_numpy(mask)] = torch.from_numpy(band)
        s = torch.from_numpy(_grid(h, w)[2])
        residual = (s * v - road._neighbours(v[None])[0])[:, torch.from_numpy(mask)]
        assert residual.abs().max() < 1e-12, name
    if size == (64, 64):  # within the band solve's reach: it is what linear_imputation uses
        monkeypatch.undo()
        mask = _masks(h, w)["noisy90"]
        u, _ = road._band_pairs(mask)
        assert u <= w + 1 and u * u <= road._BAND * np.log2(mask.sum())


def test_without_threadpoolctl_the_sparse_lu_is_used(monkeypatch):
    """Without threadpoolctl (to keep SciPy's BLAS on one thread) only SuperLU solves; the
    values are the same."""
    x, removed = _case(9, 7, "random", torch.float64)
    ref = linear_imputation(x, removed)
    calls = []
    band, sparse, _ = road._scipy()
    monkeypatch.setattr(road, "_scipy", lambda: (band, sparse, None))
    solve = road._superlu_solve
    monkeypatch.setattr(road, "_superlu_solve", lambda *a: calls.append(1) or solve(*a))
    torch.testing.assert_close(linear_imputation(x, removed), ref, atol=1e-13, rtol=0)
    assert len(calls) == 2


def test_mask_shapes_broadcast_and_edge_cases():
    x, removed = _case(6, 5, "block", torch.float32)
    out = linear_imputation(x, removed)
    torch.testing.assert_close(linear_imputation(x, removed[:, None]), out, atol=0, rtol=0)
    one = linear_imputation(x, removed[:1, None])  # one mask for the whole batch
    torch.testing.assert_close(one[1], linear_imputation(x[1:], removed[:1])[0], atol=0, rtol=0)
    assert torch.equal(linear_imputation(x, torch.zeros_like(removed)), x)
    every = torch.ones_like(removed)  # nothing to interpolate from: 0, as the CG path gives
    assert torch.equal(linear_imputation(x, every), torch.zeros_like(x))
    assert torch.equal(_conjugate_gradients(x, every[:, None], None, None), torch.zeros_like(x))
    with torch.inference_mode():
        torch.testing.assert_close(linear_imputation(x, removed), out, atol=0, rtol=0)
    assert linear_imputation(x.requires_grad_(), removed).dtype == torch.float32


def test_threads_give_the_same_result():
    x, removed = _case(9, 7, "random", torch.float32)
    x, removed = x.repeat(3, 1, 1, 1), removed.repeat(3, 1, 1)
    removed[::2, :4] = True  # systems of several sizes: the band buffers are reused per thread
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = linear_imputation(x, removed)
        torch.set_num_threads(3)
        assert torch.equal(linear_imputation(x, removed), one)
    finally:
        torch.set_num_threads(threads)


def test_nested_dissection_rank_is_a_permutation():
    for h, w in [(1, 1), (1, 9), (7, 3), (31, 64)]:
        rank, steps, s = _grid(h, w)
        assert sorted(rank.ravel().tolist()) == list(range(h * w))
        assert steps.shape == (8,) and s.shape == (h, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_conjugate_gradients_equal_cpu_direct_solve():
    x, removed = _case(9, 7, "random", torch.float64)
    out = linear_imputation(x.cuda(), removed.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), linear_imputation(x, removed), atol=1e-8, rtol=0)


def test_linear_imputation_solves_its_system():
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(5)
    img = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    removed = torch.rand(2, 9, 8) < 0.7
    removed[:, 0, 0] = False
    filled = linear_imputation(img, removed)
    noisy_linear_imputation = quantus.functions.perturb_func.noisy_linear_imputation

    for b in range(2):
        ref = spsolve_imputation(img[b].numpy(), removed[b].numpy())
        torch.testing.assert_close(filled[b], torch.from_numpy(ref), atol=1e-8, rtol=0)
        idx = removed[b].flatten().nonzero()[:, 0].numpy()
        q = noisy_linear_imputation(img[b].numpy(), idx, noise=0.0)
        torch.testing.assert_close(filled[b], torch.from_numpy(q), atol=1e-8, rtol=0)
    assert torch.equal(
        filled[~removed[:, None].expand_as(img)], img[~removed[:, None].expand_as(img)]
    )
