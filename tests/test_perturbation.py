"""Perturbation methods: occlusion, RISE, feature ablation, feature masks, black-box models.

References: Captum's Occlusion and FeatureAblation on the same inputs and settings, slow
per-window / per-feature / per-mask loops, and the exact answer on a linear model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation, Occlusion
from skimage.transform import resize
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.methods.perturbation.features import (
    apply_features,
    check_feature_mask,
    default_feature_mask,
    n_features,
    perturbation_baseline,
)
from saliencelab.methods.perturbation.incremental import _spread
from saliencelab.methods.perturbation.rise import RiseMasks
from saliencelab.models.blackbox import blackbox
from saliencelab.models.efficientnet_lite import Conv2dSame, MBConvBlock

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def odd_images() -> torch.Tensor:
    """Sizes that no window / stride below divides evenly."""
    torch.manual_seed(2)
    return torch.randn(3, 3, 13, 17)


def _target_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, target[:, None])[:, 0]


# -- occlusion ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "stride", "baseline"),
    [
        (4, 2, 0.0),
        (5, 3, 0.5),  # the last windows are clipped at the border
        ((3, 6), (2, 4), "mean"),
        ((13, 17), 1, 0.0),  # one window: the whole image
        ((1, 2), (1, 2), "blur"),
        (6, 6, "per-sample tensor"),
    ],
)
def test_occlusion_equals_captum(tiny_cnn, odd_images, window, stride, baseline):
    x = odd_images
    if baseline == "per-sample tensor":
        baseline = torch.randn_like(x)
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    base = perturbation_baseline(x, baseline, "test").expand_as(x)
    ex = sl.explain(
        tiny_cnn, x, methods="occlusion", window=window, stride=stride, baseline=baseline
    )
    ours = ex["occlusion"]
    theirs = Occlusion(tiny_cnn).attribute(
        x,
        sliding_window_shapes=(3, wh, ww),
        strides=(3, sh, sw),
        baselines=base,
        target=ours.target,
        perturbations_per_eval=4,
    )
    torch.testing.assert_close(ours.attributions, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.maps, theirs[:, 0], atol=1e-5, rtol=0)
    assert (theirs.abs() > 1e-4).any()


def test_occlusion_equals_a_slow_loop_over_windows(tiny_cnn, odd_images):
    x, (wh, ww), (sh, sw) = odd_images, (5, 4), (3, 3)
    ours = sl.explain(tiny_cnn, x, methods="occlusion", window=(wh, ww), stride=(sh, sw))
    target = ours["occlusion"].target
    clean = _target_scores(tiny_cnn, x, target)
    total, count = torch.zeros(3, 13, 17), torch.zeros(13, 17)
    tops = range(0, 13 - wh + sh, sh)
    lefts = range(0, 17 - ww + sw, sw)
    for top in tops:
        for left in lefts:
            y = x.clone()
            y[:, :, top : top + wh, left : left + ww] = 0.0
            drop = clean - _target_scores(tiny_cnn, y, target)
            total[:, top : top + wh, left : left + ww] += drop[:, None, None]
            count[top : top + wh, left : left + ww] += 1
    assert ours["occlusion"].extras["windows"] == (len(tops), len(lefts))
    torch.testing.assert_close(ours["occlusion"].maps, total / count, atol=1e-5, rtol=0)


def test_occlusion_of_a_linear_model_is_weight_times_difference():
    """S = Σ w ⊙ x + c: occluding one pixel (all channels) drops Σ_channels w ⊙ (x − b)."""
    torch.manual_seed(3)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 7, 4)).double().eval()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    b = 0.25
    ex = sl.explain(linear, x, methods="occlusion", target=2, window=1, stride=1, baseline=b)
    w = linear[1].weight[2].detach().view(3, 6, 7)
    expected = (w * (x - b)).sum(dim=1)
    torch.testing.assert_close(ex["occlusion"].maps, expected, atol=1e-12, rtol=0)


class TinyEfficientNet(nn.Module):
    """EfficientNet-Lite building blocks (TF "same" padding, strided depthwise convs, skips)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.blocks = nn.Sequential(
            MBConvBlock(8, 8, 3, 1, 1),
            MBConvBlock(8, 12, 3, 2, 4),
            MBConvBlock(12, 12, 5, 1, 4),
            MBConvBlock(12, 16, 3, 2, 4),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act(self.bn(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture
def tiny_efficientnet() -> nn.Module:
    torch.manual_seed(8)
    model = TinyEfficientNet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("baseline", [0.0, "blur"])
def test_incremental_occlusion_equals_full_forwards_and_captum(tiny_efficientnet, baseline):
    torch.manual_seed(9)
    x = torch.randn(2, 3, 64, 64)
    opts = dict(methods="occlusion", window=12, stride=8, baseline=baseline)  # last one clipped
    inc = sl.explain(tiny_efficientnet, x, **opts)["occlusion"]
    full = sl.explain(tiny_efficientnet, x, incremental=False, **opts)["occlusion"]
    assert inc.extras["incremental"] is not None  # the incremental path really ran
    assert full.extras["incremental"] is None
    torch.testing.assert_close(inc.maps, full.maps, atol=1e-5, rtol=0)
    base = perturbation_baseline(x, baseline, "test").expand_as(x)
    theirs = Occlusion(tiny_efficientnet).attribute(
        x,
        sliding_window_shapes=(3, 12, 12),
        strides=(3, 8, 8),
        baselines=base,
        target=inc.target,
        perturbations_per_eval=16,
    )
    torch.testing.assert_close(inc.attributions, theirs, atol=1e-5, rtol=0)


def test_incremental_passes_run_with_batchnorm_folded(tiny_efficientnet, monkeypatch):
    """The pasting hook would keep the engine from folding BatchNorm (core/fused.py), so the
    incremental passes fold it themselves: no perturbed row goes through a BatchNorm."""
    normalised: list[int] = []
    batch_norm = torch.nn.functional.batch_norm

    def counting(x, *args, **kwargs):
        normalised.append(x.shape[0])
        return batch_norm(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "batch_norm", counting)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ex = sl.explain(tiny_efficientnet, x, methods="occlusion", window=8, stride=8)["occlusion"]
    assert ex.extras["incremental"] is not None
    rows = x.shape[0] * ex.extras["windows"][0] * ex.extras["windows"][1]
    unfolded = sum(n for n in normalised if n > 1)  # the clean and probe forwards: 1-2 rows
    assert normalised and unfolded < rows  # folded: each of the 128 rows would count ×(BNs)


def test_incremental_feature_ablation_equals_full_forwards_and_captum(tiny_efficientnet):
    torch.manual_seed(11)
    x = torch.randn(2, 3, 64, 64)
    grid16 = default_feature_mask(x[:1], "grid", 16)[0]
    shuffled = torch.randperm(16)[grid16]  # ids in no spatial order
    shuffled[20:23, 30:50] = 16  # a thin feature cut out of others
    mask = torch.stack([default_feature_mask(x[:1], "grid", 64)[0], shuffled])
    opts = dict(methods="feature_ablation", feature_mask=mask)
    inc = sl.explain(tiny_efficientnet, x, **opts)["feature_ablation"]
    full = sl.explain(tiny_efficientnet, x, incremental=False, **opts)["feature_ablation"]
    assert inc.extras["incremental"] is not None
    torch.testing.assert_close(inc.attributions, full.attributions, atol=1e-5, rtol=0)
    for b in range(2):  # Captum takes one mask per call
        theirs = FeatureAblation(tiny_efficientnet).attribute(
            x[b : b + 1], target=inc.target[b : b + 1], feature_mask=mask[b][None, None]
        )
        torch.testing.assert_close(inc.attributions[b : b + 1], theirs, atol=1e-5, rtol=0)


def _levels_of(model: nn.Module, x: torch.Tensor, boxes: torch.Tensor):
    from saliencelab.core.context import Context
    from saliencelab.core.engine import Engine
    from saliencelab.core.targets import Target
    from saliencelab.methods.perturbation.incremental import plan_local_prefix

    wrapped = sl.Model(model)
    ctx = Context(wrapped, Engine(wrapped), x, Target(torch.zeros(len(x), dtype=torch.long)))
    return plan_local_prefix(ctx, boxes)


def test_incremental_levels_recompute_exactly_the_changed_cells(tiny_efficientnet):
    """Through several levels of crops: every cell of every level's map that a window changes
    lies in the level's predicted changed range, and the pasted map of the last level equals
    the layers run on the whole occluded image."""
    torch.manual_seed(14)
    x = torch.randn(2, 3, 64, 64)
    tops, lefts = torch.meshgrid(torch.arange(0, 57, 8), torch.arange(0, 57, 8), indexing="ij")
    boxes = torch.stack([tops, lefts, tops + 8, lefts + 8], -1).view(-1, 4)
    prefix = _levels_of(tiny_efficientnet, x, boxes)
    assert prefix is not None and len(prefix.levels) >= 2  # crops of crops really ran
    rows = torch.tensor([0, 9, 27, 36, 63])  # corners, edges and inside (an 8 × 8 grid)
    samples = torch.tensor([0, 1, 0, 1, 1])
    occluded = x[samples].clone()
    for i, (top, left, bottom, right) in enumerate(boxes[rows].tolist()):
        occluded[i, :, top:bottom, left:right] = 0.0

    def crops_of(top, left):
        size = prefix.levels[0].crop_in
        ys = top[:, None, None] + torch.arange(size[0])[None, :, None]
        xs = left[:, None, None] + torch.arange(size[1])[None, None, :]
        return occluded[torch.arange(len(rows))[:, None, None], :, ys, xs].permute(0, 3, 1, 2)

    with torch.inference_mode():
        acts = prefix.activations(samples, boxes[rows], crops_of)
        clean, dirty = x[samples], occluded
        ranges = (boxes[rows, 0], boxes[rows, 2] - 1, boxes[rows, 1], boxes[rows, 3] - 1)
        for level in prefix.levels:
            for m in level.modules:
                clean, dirty = m(clean), m(dirty)
            r0, r1, c0, c1 = ranges = _spread(ranges, level.steps, level.grid)
            changed = (clean != dirty).any(dim=1)  # (n, h, w)
            ys = torch.arange(level.grid[0])[None, :, None]
            xs = torch.arange(level.grid[1])[None, None, :]
            inside = (ys >= r0[:, None, None]) & (ys <= r1[:, None, None])
            inside = inside & (xs >= c0[:, None, None]) & (xs <= c1[:, None, None])
            assert changed.any() and not (changed & ~inside).any()
    torch.testing.assert_close(acts, dirty, atol=1e-5, rtol=0)


def test_incremental_check_on_real_rows_catches_a_wrong_plan(tiny_efficientnet, monkeypatch):
    """With the crops' margins forced to 0 (each crop starts at the first changed cell, whose
    receptive field reaches before it) the crops are wrong: the check on real rows must see it
    and fall back to full forwards."""
    import importlib

    occlusion_module = importlib.import_module("saliencelab.methods.perturbation.occlusion")
    plan = occlusion_module.plan_local_prefix

    def wrong(ctx, boxes):
        prefix = plan(ctx, boxes)
        for level in prefix.levels:
            level.margin = (0, 0)
        return prefix

    monkeypatch.setattr(occlusion_module, "plan_local_prefix", wrong)
    torch.manual_seed(12)
    x = torch.randn(1, 3, 64, 64)
    ours = sl.explain(tiny_efficientnet, x, methods="occlusion", window=8, stride=8)["occlusion"]
    assert ours.extras["incremental"] is None
    monkeypatch.undo()
    full = sl.explain(
        tiny_efficientnet, x, methods="occlusion", window=8, stride=8, incremental=False
    )
    torch.testing.assert_close(ours.maps, full["occlusion"].maps, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("layer", "incremental"), [("blocks.3", True), ("blocks.0", False)])
def test_incremental_with_channel_targets(tiny_efficientnet, layer, incremental):
    """A channel after the split layer is scored incrementally; one before it reads the dummy
    input's activations, which the check on real rows catches (full forwards instead)."""
    torch.manual_seed(13)
    x = torch.randn(1, 3, 64, 64)
    opts = dict(methods="occlusion", window=8, stride=8, target=sl.channel(layer, 1))
    ours = sl.explain(tiny_efficientnet, x, **opts)["occlusion"]
    full = sl.explain(tiny_efficientnet, x, incremental=False, **opts)["occlusion"]
    assert (ours.extras["incremental"] is not None) == incremental
    torch.testing.assert_close(ours.maps, full.maps, atol=1e-6, rtol=0)
    assert full.maps.abs().max() > 1e-5


class _InPlaceBetween(nn.Module):
    """An in-place op between two layers: invisible to the call chain, caught by the check."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.mul_(2.0)
        return self.fc(self.b(h).mean(dim=(2, 3)))


class _GlobalInPrefix(nn.Module):
    """A global op early on: every cell depends on the whole input, nothing to save."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.norm = nn.InstanceNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.norm(self.a(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("model_cls", [_InPlaceBetween, _GlobalInPrefix])
def test_incremental_falls_back_where_it_would_be_wrong(model_cls):
    torch.manual_seed(10)
    model = model_cls().eval()
    x = torch.randn(2, 3, 64, 64)
    ours = sl.explain(model, x, methods="occlusion", window=8, stride=8)["occlusion"]
    assert ours.extras["incremental"] is None
    theirs = Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), target=ours.target
    )
    torch.testing.assert_close(ours.attributions, theirs, atol=1e-5, rtol=0)


# -- feature ablation --------------------------------------------------------------------------


def _slow_feature_ablation(model, x, mask, target, baseline=0.0):
    """One forward per (sample, feature id present), mask (B, H, W) with any integer ids."""
    out = torch.zeros_like(x)
    clean = _target_scores(model, x, target)
    for b in range(x.shape[0]):
        for f in mask[b].unique():
            region = (mask[b] == f).expand_as(x[b])
            y = x[b].clone()
            y[region] = baseline
            drop = clean[b] - _target_scores(model, y[None], target[b : b + 1])[0]
            out[b][region] = drop
    return out


def test_feature_ablation_equals_slow_loop_and_captum(tiny_cnn, odd_images):
    x = odd_images
    mask = torch.randint(0, 7, (13, 17))
    ex = sl.explain(tiny_cnn, x, methods="feature_ablation", feature_mask=mask, baseline=-0.3)
    ours = ex["feature_ablation"]
    slow = _slow_feature_ablation(tiny_cnn, x, mask.expand(3, 13, 17), ours.target, -0.3)
    torch.testing.assert_close(ours.attributions, slow, atol=1e-5, rtol=0)
    theirs = FeatureAblation(tiny_cnn).attribute(
        x, baselines=-0.3, target=ours.target, feature_mask=mask[None, None]
    )
    torch.testing.assert_close(ours.attributions, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.maps, theirs[:, 0], atol=1e-5, rtol=0)
    assert ours.forwards == 7


def test_feature_ablation_per_sample_masks_with_gaps_in_ids(tiny_cnn, images):
    """Each sample its own mask, ids not contiguous (3, 10, 42): one forward per feature present."""
    masks = torch.stack(
        [
            torch.full((12, 12), 3),
            torch.randint(0, 2, (12, 12)) * 7 + 3,
            torch.arange(144).view(12, 12) % 3 * 21,
            torch.randint(0, 5, (12, 12)),
        ]
    )
    ex = sl.explain(tiny_cnn, images, methods="feature_ablation", feature_mask=masks)
    ours = ex["feature_ablation"]
    slow = _slow_feature_ablation(tiny_cnn, images, masks, ours.target)
    torch.testing.assert_close(ours.attributions, slow, atol=1e-5, rtol=0)
    expected_rows = sum(len(m.unique()) for m in masks)
    assert ours.forwards == expected_rows / 4


def test_feature_ablation_default_grid_and_slic(tiny_cnn):
    torch.manual_seed(4)
    x = 0.05 * torch.rand(2, 3, 24, 24)
    x[:, 0, :, 12:] += 1.0  # two flat halves of different colour: superpixels follow the edge
    ex = sl.explain(tiny_cnn, x, methods="feature_ablation", n_segments=16)
    grid = default_feature_mask(x, "grid", 16)
    assert n_features(grid).tolist() == [16, 16]
    slow = _slow_feature_ablation(tiny_cnn, x, grid, ex["feature_ablation"].target)
    torch.testing.assert_close(ex["feature_ablation"].attributions, slow, atol=1e-5, rtol=0)
    ex = sl.explain(tiny_cnn, x, methods="feature_ablation", feature_mask="slic", n_segments=8)
    slic = ex["feature_ablation"].extras["feature_mask"]
    assert slic.shape == (2, 24, 24)
    for m in slic:  # contiguous ids, and no superpixel straddles the edge between the halves
        assert torch.equal(m.unique(), torch.arange(int(m.max()) + 1))
        assert not set(m[:, :12].unique().tolist()) & set(m[:, 12:].unique().tolist())


def test_feature_ablation_on_tabular_inputs():
    torch.manual_seed(5)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 6)
    ex = sl.explain(mlp, x, methods="feature_ablation", target=1)
    clean = mlp(x)[:, 1]
    expected = torch.stack(
        [clean - mlp(x.index_fill(1, torch.tensor([f]), 0.0))[:, 1] for f in range(6)], 1
    ).detach()
    torch.testing.assert_close(ex["feature_ablation"].attributions, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(ex["feature_ablation"].maps, expected, atol=1e-6, rtol=0)
    # Two groups of columns, shared by all rows.
    ex = sl.explain(mlp, x, methods="feature_ablation", target=1, feature_mask=[0, 0, 0, 1, 1, 1])
    a = ex["feature_ablation"].attributions
    assert torch.equal(a[:, 0], a[:, 2]) and torch.equal(a[:, 3], a[:, 5])


# -- RISE --------------------------------------------------------------------------------------


def test_rise_equals_the_formula_on_the_same_masks(tiny_cnn, images):
    n, p = 40, 0.4
    ex = sl.explain(tiny_cnn, images, methods="rise", n_masks=n, cell=3, p_keep=p, seed=7)
    target = ex["rise"].target
    masks = RiseMasks(n, (12, 12), 3, p, seed=7).masks(torch.arange(n))
    expected = torch.zeros(4, 12, 12)
    for i in range(n):
        expected += _target_scores(tiny_cnn, images * masks[i], target)[:, None, None] * masks[i]
    expected /= n * p
    torch.testing.assert_close(ex["rise"].maps, expected, atol=1e-5, rtol=1e-5)
    assert ex["rise"].forwards == n


def test_rise_masks_follow_the_paper_construction():
    """Binary s×s grid, bilinear upsampling to (s+1)·⌈H/s⌉, crop at a shift in [0, ⌈H/s⌉)."""
    gen = RiseMasks(300, (13, 20), 4, 0.3, seed=1)
    masks = gen.masks(torch.arange(300))
    assert gen.up_size == (5 * 4, 5 * 5)
    assert set(gen.grids.unique().tolist()) == {0.0, 1.0}
    assert (gen.shifts[:, 0] < 4).all() and (gen.shifts[:, 1] < 5).all()
    assert len(gen.shifts[:, 1].unique()) == 5
    assert abs(gen.grids.mean().item() - 0.3) < 0.03
    for i in (0, 17, 299):  # skimage's bilinear resize, edges clamped, cropped at the shift
        up = resize(gen.grids[i].numpy(), gen.up_size, order=1, mode="edge", anti_aliasing=False)
        dy, dx = gen.shifts[i].tolist()
        ref = torch.from_numpy(up[dy : dy + 13, dx : dx + 20]).float()
        torch.testing.assert_close(masks[i], ref, atol=1e-6, rtol=0)


def test_rise_is_deterministic_and_independent_of_chunk_size(tiny_cnn, images):
    def run(seed, chunk_size):
        return sl.explain(
            tiny_cnn, images, methods="rise", n_masks=30, cell=4, seed=seed, chunk_size=chunk_size
        )["rise"].maps

    a = run(0, 5)
    torch.testing.assert_close(run(0, 5), a, atol=0, rtol=0)
    torch.testing.assert_close(run(0, 64), a, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(run(0, 7), a, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(run(1, 5), a)


# -- feature masks -----------------------------------------------------------------------------


def test_check_feature_mask_shapes_and_relabelling():
    x = torch.randn(2, 3, 4, 5)
    hw = torch.tensor([[5, 5, 9, 9, 2]] * 4)
    out = check_feature_mask(hw, x)
    assert out.shape == (2, 4, 5) and out.dtype == torch.long
    assert out[0, 0].tolist() == [1, 1, 2, 2, 0]  # ids in order, made contiguous
    assert check_feature_mask(hw[None].expand(2, 4, 5), x).shape == (2, 4, 5)
    assert check_feature_mask(hw[None, None], x).shape == (2, 4, 5)
    full = torch.arange(60).view(1, 3, 4, 5)
    assert check_feature_mask(full, x).shape == (2, 3, 4, 5)
    per_sample = torch.stack([hw, hw * 0 + 7])
    assert n_features(check_feature_mask(per_sample, x)).tolist() == [3, 1]
    assert check_feature_mask(np.array([4, 4, 1]), torch.randn(5, 3)).shape == (5, 3)


def test_apply_features_equals_a_loop():
    torch.manual_seed(6)
    x = torch.randn(2, 3, 5, 6)
    mask = check_feature_mask(torch.randint(0, 4, (2, 5, 6)), x)
    keep = torch.rand(5, 4) > 0.5
    samples = torch.tensor([0, 1, 1, 0, 1])
    base = torch.randn(2, 3, 5, 6)
    out = apply_features(x, base, mask, keep, samples)
    for n, s in enumerate(samples.tolist()):
        kept = keep[n][mask[s]]
        torch.testing.assert_close(out[n], torch.where(kept, x[s], base[s]), atol=0, rtol=0)


# -- black-box models --------------------------------------------------------------------------


def test_blackbox_function_gives_the_modules_maps(tiny_cnn, images):
    as_numpy = blackbox(lambda a: tiny_cnn(torch.from_numpy(a)).detach().numpy(), numpy=True)
    as_torch = blackbox(lambda t: [tiny_cnn(t)])  # a list of outputs, as ONNX Runtime returns
    kwargs = dict(methods=["occlusion", "feature_ablation", "rise"], window=4, stride=4, n_masks=8)
    ref = sl.explain(tiny_cnn, images, **kwargs)
    for model in (as_numpy, as_torch):
        ex = sl.explain(model, images, **kwargs)
        for name in ref:
            torch.testing.assert_close(ex[name].maps, ref[name].maps, atol=1e-6, rtol=0)


def test_blackbox_with_one_score_per_input(tiny_cnn, images):
    model = blackbox(lambda t: tiny_cnn(t)[:, 2])
    ex = sl.explain(model, images, methods="occlusion", window=6, stride=6)
    ref = sl.explain(tiny_cnn, images, methods="occlusion", window=6, stride=6, target=2)
    torch.testing.assert_close(ex["occlusion"].maps, ref["occlusion"].maps, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("method", "needs"),
    [
        ("saliency", "gradients"),
        ("gradcam", "the model's layers and gradients"),
        ("integrated_gradients", "gradients"),
    ],
)
def test_gradient_methods_on_a_blackbox_are_one_sentence(tiny_cnn, images, method, needs):
    model = blackbox(lambda t: tiny_cnn(t))
    with pytest.raises(SaliencelabError, match=f"^{method} needs {needs}; this model is a bl"):
        sl.explain(model, images, methods=method)


def test_reference_maps_and_evaluate_run_on_a_blackbox(tiny_cnn, images):
    """The reference maps need nothing of the model, and sl.evaluate scores them by default:
    on a black box both were refused as "needs gradients"."""
    model = blackbox(lambda t: tiny_cnn(t))
    refs = ["random", "center_gaussian", "sobel"]
    ex = sl.explain(model, images, methods=refs)
    plain = sl.explain(tiny_cnn, images, methods=refs)
    for name in refs:
        torch.testing.assert_close(ex[name].maps, plain[name].maps)
    occ = sl.explain(model, images, methods="occlusion", window=6, stride=6, target=2)
    rep = sl.evaluate(model, images, occ, metrics=["deletion"], target=2)
    ref = sl.evaluate(tiny_cnn, images, occ, metrics=["deletion"], target=2)
    assert set(rep.results) == {"occlusion", *refs}
    for name in rep.results:
        torch.testing.assert_close(rep[name]["deletion"].values, ref[name]["deletion"].values)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda t: torch.zeros(t.shape[0], 2, 2), r"returned shape \(4, 2, 2\) for a batch of 4"),
        (lambda t: torch.zeros(3, 5), r"returned shape \(3, 5\) for a batch of 4"),
        (lambda t: "cat", "returned str, not scores"),
        (lambda t: torch.full((t.shape[0], 3), float("nan")), "NaN or infinite scores"),
    ],
)
def test_bad_blackbox_outputs_are_one_sentence(images, fn, message):
    with pytest.raises(SaliencelabError, match=message):
        sl.explain(blackbox(fn), images, methods="occlusion", window=6, stride=6)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("occlusion", {"window": 13}, r"window 13×13 is larger than the input 12×12"),
        ("occlusion", {"window": (2, 3), "stride": 4}, "leaves pixels no window covers"),
        ("occlusion", {"window": 0}, "window must be a positive int"),
        (
            "occlusion",
            {"window": 4, "stride": 4, "baseline": "blurr"},
            "unknown baseline 'blurr'. Did you mean: blur",
        ),
        (
            "occlusion",
            {"window": 4, "stride": 4, "baseline": torch.zeros(3, 5, 5)},
            "does not broadcast",
        ),
        (
            "feature_ablation",
            {"feature_mask": torch.zeros(5, 12, dtype=torch.long)},
            r"shape \(5, 12\)",
        ),
        ("feature_ablation", {"feature_mask": torch.zeros(12, 12)}, "integer feature ids"),
        ("feature_ablation", {"feature_mask": "quickshift"}, "must be one of 'grid', 'slic'"),
        ("rise", {"p_keep": 1.5}, r"p_keep must be a probability in \(0, 1\]"),
        ("rise", {"n_masks": 0}, "n_masks must be a positive int"),
    ],
)
def test_bad_options_are_one_sentence(tiny_cnn, images, method, options, message):
    with pytest.raises(SaliencelabError, match=message):
        sl.explain(tiny_cnn, images, methods=method, **options)


def test_image_methods_on_tabular_inputs_are_one_sentence():
    mlp = nn.Sequential(nn.Linear(6, 3))
    for method in ("occlusion", "rise"):
        with pytest.raises(SaliencelabError, match="works on image batches"):
            sl.explain(mlp, torch.randn(2, 6), methods=method)


# -- documented defaults -----------------------------------------------------------------------


def test_occlusion_defaults_equal_captum_with_a_16px_window_and_stride_8(tiny_cnn):
    torch.manual_seed(8)
    x = torch.randn(2, 3, 24, 24)
    ex = sl.explain(tiny_cnn, x, methods="occlusion")
    ours = ex["occlusion"]
    theirs = Occlusion(tiny_cnn).attribute(
        x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=0.0, target=ours.target
    )
    torch.testing.assert_close(ours.attributions, theirs, atol=1e-5, rtol=0)
    assert ours.extras["windows"] == (2, 2) and ours.forwards == 4


def test_rise_defaults_are_4000_masks_of_a_7x7_grid_kept_with_probability_half(tiny_cnn, images):
    x = images[:1]
    ex = sl.explain(tiny_cnn, x, methods="rise")
    target = ex["rise"].target
    masks = RiseMasks(4000, (12, 12), 7, 0.5, seed=0).masks(torch.arange(4000))
    scores = _target_scores(tiny_cnn, x * masks[:, None], target.expand(4000))
    expected = (scores[:, None, None] * masks).sum(0, keepdim=True) / (4000 * 0.5)
    torch.testing.assert_close(ex["rise"].maps, expected, atol=1e-5, rtol=1e-4)
    assert ex["rise"].forwards == 4000
    # a mean score per pixel, all offset by the mean score: drawn min-max (the paper's figures),
    # not centred on zero, where the offset painted every pixel one colour
    assert ex["rise"].signed is False


def test_default_grid_cells_are_near_equal_and_numbered_row_major():
    x = torch.zeros(1, 3, 12, 12)
    i = torch.arange(12)
    by_hand = (i[:, None] // 3) * 4 + i[None, :] // 3  # 4 × 4 cells of 3 × 3 pixels
    assert torch.equal(default_feature_mask(x, "grid", 16)[0], by_hand)
    # 13 × 17 in 2 × 3 cells: rows 7 + 6, columns 6 + 6 + 5
    rows = torch.tensor([0] * 7 + [1] * 6)
    cols = torch.tensor([0] * 6 + [1] * 6 + [2] * 5)
    odd = default_feature_mask(torch.zeros(1, 3, 13, 17), "grid", 6)[0]
    assert torch.equal(odd, rows[:, None] * 3 + cols[None, :])


@pytest.mark.parametrize(
    ("method", "options", "words"),
    [
        ("lime", {"seed": "a"}, "seed must be an integer"),
        ("lime", {"seed": 1.7}, "seed must be an integer"),
        # the all-ones coalition alone: every coefficient was 0, silently
        ("lime", {"n_samples": 1}, "n_samples must be an integer of at least 2"),
        ("rise", {"seed": None}, "seed must be an integer"),
        ("rise", {"seed": 2**70}, "seed must be an integer"),
        ("kernelshap", {"seed": "a"}, "seed must be an integer"),
        ("kernelshap", {"paired": "no"}, "paired must be True or False"),
        ("occlusion", {"incremental": "no"}, "incremental must be True or False"),
        ("feature_ablation", {"incremental": "no"}, "incremental must be True or False"),
        ("occlusion", {"baseline": float("nan")}, "baseline must be a finite number"),
        ("feature_ablation", {"baseline": "blur", "blur_sigma": True}, "blur_sigma must be"),
        ("occlusion", {"baseline": "blur", "blur_sigma": float("inf")}, "blur_sigma must be"),
    ],
)
def test_bad_flags_seeds_and_baselines_are_one_sentence(tiny_cnn, images, method, options, words):
    opts = {"n_samples": 40, "n_segments": 4, "n_masks": 4, "window": 8, "stride": 8}
    spec = next(s for s in sl.methods() if s.name == method)
    opts = {k: v for k, v in opts.items() if k in spec.options}
    with pytest.raises(SaliencelabError, match=words):
        sl.explain(tiny_cnn, images, methods={method: {**opts, **options}})


def test_a_blur_sigma_far_beyond_the_image_runs(tiny_cnn, images):
    """A huge blur_sigma (the blurred image tends to its edges' mean) is computed with an
    image-sized kernel; a ±3σ one asked for petabytes."""
    a = sl.explain(
        tiny_cnn, images, methods="occlusion", window=8, stride=8, baseline="blur", blur_sigma=1e9
    )["occlusion"]
    assert torch.isfinite(a.maps).all()
