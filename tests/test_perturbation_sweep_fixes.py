"""Perturbation sweep fixes: integer inputs take whole-number baselines only, feature ablation's
maps on signals and volumes are the feature's drop (not C times it), and feature-mask options
that shape nothing (tabular "grid" / "slic" / n_segments, n_segments with a mask tensor) are
refused.

References: score drops and Shapley values computed by hand (brute force over coalitions), and
the exact drops of a linear model, f(x) = W·x + b: removing a group takes away
Σ_{c, i ∈ group} W[t, c, i] (x_i − baseline_i).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError

pytestmark = pytest.mark.usefixtures("one_thread")

# LIME without ridge: exact on a linear model (the score is linear in the coalition)
SURROGATES = {"lime": {"n_samples": 64, "alpha": 0.0}, "kernelshap": {}}
FEATURE_METHODS = {"feature_ablation": {}, **SURROGATES}


def _one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.endswith(".")
    return message


# -- 1. integer inputs: whole-number baselines only ---------------------------------------------


class Categories(nn.Module):
    """Three categorical columns (ids 0..4), each embedded; a linear head. Takes any integer
    dtype (uint8 included)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(5, 2)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x.long()).flatten(1))


@pytest.fixture
def categories() -> tuple[nn.Module, torch.Tensor]:
    return Categories().eval(), torch.tensor([[3, 4, 1], [2, 2, 4]])


def _ablation_by_hand(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """(B, F) score drop (target 1) when column i takes baseline[i]."""
    with torch.no_grad():
        clean, drops = model(x)[:, 1], []
        for i in range(x.shape[1]):
            z = x.clone()
            z[:, i] = baseline[i]
            drops.append(clean - model(z)[:, 1])
    return torch.stack(drops, 1)


def _shapley_by_hand(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """(B, F) exact Shapley values (target 1), the absent columns at the baseline."""
    n = x.shape[1]

    def value(coalition: tuple[int, ...]) -> torch.Tensor:
        z = baseline.expand_as(x).clone()
        z[:, list(coalition)] = x[:, list(coalition)]
        with torch.no_grad():
            return model(z)[:, 1].double()

    phi = torch.zeros(x.shape[0], n, dtype=torch.float64)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for s in itertools.combinations(others, size):
                phi[:, i] += weight * (value(tuple(sorted(s + (i,)))) - value(s))
    return phi


@pytest.mark.parametrize("method", list(FEATURE_METHODS))
@pytest.mark.parametrize(
    "baseline", [2.5, 0.7, -0.5, torch.tensor([2.5, 3.0, 2.5])], ids=["2.5", "0.7", "-0.5", "means"]
)
def test_a_fractional_baseline_for_integer_inputs_is_refused_not_truncated(
    categories, method, baseline
):
    """2.5 was cast to the ids' int64 as 2 (0.7 and -0.5 as 0): the maps of another baseline."""
    model, x = categories
    with pytest.raises(SaliencelabError) as err:
        sl.explain(model, x, methods=method, target=1, baseline=baseline, **FEATURE_METHODS[method])
    message = _one_sentence(err)
    assert message.startswith(f"{method}: the baseline ")
    assert "not whole numbers" in message and "torch.int64" in message
    assert "give an integer baseline" in message and '"missing" or padding category' in message
    if isinstance(baseline, torch.Tensor):
        assert "(e.g. 2.5)" in message


@pytest.mark.parametrize("baseline", [-1, 256, torch.tensor([0, 300, 0])], ids=["-1", "256", "t"])
def test_a_baseline_outside_the_integer_dtype_is_refused_not_wrapped(categories, baseline):
    """uint8 ids: -1 was cast to 255 and 256 to 0 silently."""
    model, x = categories
    with pytest.raises(SaliencelabError) as err:
        sl.explain(
            model, x.to(torch.uint8), methods="feature_ablation", target=1, baseline=baseline
        )
    message = _one_sentence(err)
    assert "outside the 0 to 255 that torch.uint8 inputs hold" in message


@pytest.mark.parametrize(
    "baseline",
    [
        2,
        2.0,
        torch.tensor([2, 0, 3]),
        torch.tensor([2, 0, 3], dtype=torch.int32),
        torch.tensor([2.0, 0.0, 3.0]),
        torch.tensor(2.0),
    ],
    ids=["int", "float", "int-tensor", "int32-tensor", "float-tensor", "0-d"],
)
def test_whole_number_baselines_for_integer_inputs_are_exact(categories, baseline):
    """Whole numbers as ints, floats or tensors of either kind give the drops and the Shapley
    values computed by hand with that baseline; LIME gives the same map for each spelling."""
    model, x = categories
    ids = torch.as_tensor(baseline).long().expand(3)
    ex = sl.explain(
        model, x, methods=["feature_ablation", "kernelshap"], target=1, baseline=baseline
    )
    torch.testing.assert_close(ex["feature_ablation"].maps, _ablation_by_hand(model, x, ids))
    torch.testing.assert_close(
        ex["kernelshap"].maps, _shapley_by_hand(model, x, ids).float(), atol=1e-5, rtol=1e-5
    )
    lime = sl.explain(model, x, methods="lime", target=1, baseline=baseline, **SURROGATES["lime"])
    as_ints = sl.explain(model, x, methods="lime", target=1, baseline=ids, **SURROGATES["lime"])
    torch.testing.assert_close(lime["lime"].maps, as_ints["lime"].maps)


class Hashed(nn.Module):
    """Ids of any size, hashed to 7 buckets: x mod 7 is what the model sees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x % 7).float()
        return torch.stack([h.sum(1), (h * torch.arange(1.0, x.shape[1] + 1)).sum(1)], 1)


def test_a_large_integer_baseline_tensor_keeps_every_digit():
    """An int64 baseline went through float32 (2^40 + 1 became 2^40: another bucket)."""
    x = torch.tensor([[3, 5, 6]])
    big = 2**40 + 1  # ≡ 3 mod 7; 2**40 ≡ 2 mod 7
    a = sl.explain(Hashed(), x, methods="feature_ablation", target=1, baseline=torch.tensor(big))
    torch.testing.assert_close(
        a["feature_ablation"].maps, _ablation_by_hand(Hashed(), x, torch.tensor([big] * 3))
    )


class PixelLevels(nn.Module):
    """uint8 images read as levels by a linear head (any integer dtype)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.head = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.float().flatten(1) / 255)


@pytest.mark.parametrize("baseline", [127.5, "mean"])
@pytest.mark.parametrize("method", ["occlusion", "feature_ablation"])
def test_occlusion_and_ablation_of_integer_images_refuse_fractional_baselines(method, baseline):
    """Occlusion cast its baseline to the images' uint8 too (127.5 → 127, the mean truncated)."""
    x = torch.randint(
        0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x[:, :, 0, 0] = torch.tensor([0, 1, 0])  # so that every channel's mean is a fraction
    options = {"window": 4, "stride": 4} if method == "occlusion" else {"n_segments": 4}
    with pytest.raises(SaliencelabError) as err:
        sl.explain(PixelLevels().eval(), x, methods=method, target=0, baseline=baseline, **options)
    assert "not whole numbers" in _one_sentence(err)
    # a whole number is exact: occlusion of one 8 × 8 window at level 128 by hand
    a = sl.explain(
        PixelLevels().eval(), x, methods="occlusion", target=0, baseline=128, window=8, stride=8
    )["occlusion"]
    with torch.no_grad():
        drop = PixelLevels()(x)[:, 0] - PixelLevels()(torch.full_like(x, 128))[:, 0]
    torch.testing.assert_close(a.maps, drop[:, None, None].expand(2, 8, 8))


def test_rise_refuses_integer_inputs_in_one_sentence():
    """RISE multiplies the inputs by soft masks: integer ids came out as floats, and an
    embedding model raised torch's RuntimeError about index dtypes."""
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(SaliencelabError) as err:
        sl.explain(PixelLevels().eval(), x, methods="rise", target=0, n_masks=8)
    assert "soft masks" in _one_sentence(err)


# -- 2. feature ablation's maps on signals and volumes: the drop, not C times it ----------------


def _linear_drops(
    w: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, baseline: float
) -> torch.Tensor:
    """(B, *mask) drop of each position's group for f(x) = w · x.flatten() (one output row w):
    Σ over channels and the group's positions of w (x − baseline), at every position."""
    contrib = (w.view(x.shape[1:]) * (x - baseline)).sum(1)  # (B, *spatial), summed over C
    per_group = torch.zeros(x.shape[0], int(mask.max()) + 1).index_add_(
        1, mask.flatten(), contrib.flatten(1)
    )
    return per_group[:, mask]


@pytest.mark.parametrize(
    ("shape", "mask"),
    [
        ((2, 3, 16), torch.arange(16) // 4),  # signals (B, C, L), mask (L,)
        ((2, 3, 2, 4, 4), torch.arange(32).view(2, 4, 4) // 8),  # volumes (B, C, D, H, W)
        ((2, 3, 4, 4), torch.arange(16).view(4, 4) // 4),  # images: as before
    ],
    ids=["signal", "volume", "image"],
)
@pytest.mark.parametrize("method", list(FEATURE_METHODS))
def test_maps_with_a_mask_shared_by_the_channels_are_the_features_drop(shape, mask, method):
    """With C = 3 channels, feature ablation's maps on signals and volumes were 3 × the drop
    (the sum over channels of the repeated drop); they equal it, as the attributions and the
    exact Shapley values of KernelSHAP (a linear model's are its drops) and LIME do."""
    torch.manual_seed(3)
    x = torch.randn(*shape)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 2)).eval()
    w = model[1].weight[1].detach()
    expected = _linear_drops(w, x, mask, 0.5)
    options = FEATURE_METHODS[method]
    a = sl.explain(model, x, methods=method, target=1, feature_mask=mask, baseline=0.5, **options)
    a = a[method]
    torch.testing.assert_close(a.maps, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        a.attributions, expected[:, None].expand(x.shape), atol=1e-4, rtol=1e-4
    )


def test_maps_with_a_per_element_mask_on_signals_sum_the_channels():
    """A mask (B, C, L) per element: each channel's own drop, summed over the channels."""
    torch.manual_seed(4)
    x = torch.randn(2, 2, 6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    mask = torch.arange(12).view(1, 2, 6) // 3  # 4 groups: 2 per channel
    a = sl.explain(model, x, methods="feature_ablation", target=0, feature_mask=mask)
    a = a["feature_ablation"]
    contrib = model[1].weight[0].detach().view(2, 6) * x  # (B, C, L)
    groups = contrib.view(2, 2, 2, 3).sum(-1)  # (B, C, 2) each channel's two groups
    per_element = groups.repeat_interleave(3, dim=2)
    torch.testing.assert_close(a.attributions, per_element)
    torch.testing.assert_close(a.maps, per_element.sum(1))


# -- 3. feature-mask options that shape nothing are refused --------------------------------------


@pytest.fixture
def tabular() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(6, 2)).eval(), torch.randn(3, 6)


@pytest.mark.parametrize(
    "options",
    [
        {"feature_mask": "grid"},
        {"feature_mask": "slic"},
        {"feature_mask": "grid", "n_segments": 3},
        {"n_segments": 2},
    ],
    ids=["grid", "slic", "grid+n_segments", "n_segments"],
)
@pytest.mark.parametrize("method", list(FEATURE_METHODS))
def test_image_mask_options_on_tabular_inputs_are_refused(tabular, method, options):
    """They were accepted and ignored: one feature per column whatever they said."""
    model, x = tabular
    with pytest.raises(SaliencelabError) as err:
        sl.explain(model, x, methods=method, target=1, **options, **FEATURE_METHODS[method])
    message = _one_sentence(err)
    assert message.startswith(f"{method}: ")
    assert "tabular inputs (B, F) have one feature per column by default" in message
    assert "pass a feature_mask tensor of shape (6,) holding each column's group id" in message


@pytest.mark.parametrize("method", list(FEATURE_METHODS))
def test_tabular_columns_and_column_groups_still_work(tabular, method):
    """The default (a feature per column) and a mask of column groups give a linear model's
    exact drops, W[t, i] x_i summed over the group."""
    model, x = tabular
    w = model[0].weight[1].detach()
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    by_group = torch.zeros(3, 3).index_add_(1, groups, w * x)[:, groups]
    tol = {"atol": 1e-4, "rtol": 1e-4}
    options = FEATURE_METHODS[method]
    columns = sl.explain(model, x, methods=method, target=1, **options)[method]
    torch.testing.assert_close(columns.maps, w * x, **tol)
    grouped = sl.explain(model, x, methods=method, target=1, feature_mask=groups, **options)
    torch.testing.assert_close(grouped[method].maps, by_group, **tol)


@pytest.mark.parametrize("method", list(FEATURE_METHODS))
def test_n_segments_with_a_mask_tensor_is_refused(tiny_cnn, images, method):
    """n_segments sizes the grid or superpixels only; with a tensor it was ignored."""
    mask = torch.arange(144).view(12, 12) // 36  # 4 bands of 3 rows
    with pytest.raises(SaliencelabError) as err:
        sl.explain(tiny_cnn, images, methods=method, feature_mask=mask, n_segments=9)
    message = _one_sentence(err)
    assert f"{method}: n_segments=9 sizes the 'grid' or 'slic' feature mask" in message
    assert "leave n_segments out" in message


@pytest.mark.parametrize("spec", [None, "grid", "slic"])
@pytest.mark.parametrize(
    ("shape", "shapes"),
    [((2, 3, 16), "(16,), (2, 16) or (2, 3, 16)"), ((2, 3, 2, 4, 4), "(2, 4, 4), (2, 2, 4, 4)")],
    ids=["signal", "volume"],
)
def test_grid_and_slic_on_signals_and_volumes_say_which_mask_to_give(spec, shape, shapes):
    """A grid or superpixels need images; the sentence names the mask shapes that fit."""
    x = torch.randn(*shape)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 2)).eval()
    with pytest.raises(SaliencelabError) as err:
        sl.explain(model, x, methods="feature_ablation", feature_mask=spec)
    message = _one_sentence(err)
    assert f"A {spec or 'grid'!r} feature mask needs images (B, C, H, W)" in message
    assert f"pass a feature_mask tensor of feature ids, shape {shapes}" in message


def test_incremental_forwards_are_as_the_cost_string_says():
    """The registered cost said F forwards; the incremental check runs up to 3 rows both ways."""
    model = sl.load_model("shapes_cnn")
    x = sl.data.shapes.make(4, seed=0).images
    options = {"feature_ablation": {}, "occlusion": {"window": 16, "stride": 8}}
    ex = sl.explain(model, x, options)
    plain = sl.explain(model, x, {k: {**o, "incremental": False} for k, o in options.items()})
    for name in options:
        assert ex[name].extras["incremental"] is not None  # it ran incrementally
        extra = (ex[name].forwards - plain[name].forwards) * 4
        assert extra == 6, name
        assert "up to 6 more per call" in sl.core.registry.get_method(name).cost
