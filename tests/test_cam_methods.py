"""The CAM family against their formulas computed by hand, slow reference loops, and Captum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError

GRADIENT_CAMS = ["gradcam", "gradcam_plus_plus", "xgradcam", "hirescam", "layercam"]


class PoolCNN(nn.Module):
    """conv → ReLU → maxpool → conv → ReLU → GAP → linear: layers at 12×12 (8 ch) and 6×6 (6 ch)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 6, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def pool_cnn() -> nn.Module:
    torch.manual_seed(2)
    return PoolCNN().eval()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(4, 3, 12, 12)


TARGETS = torch.tensor([0, 3, 1, 2])


# -- references ----------------------------------------------------------------------------------


def assert_same(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(expected.detach().abs().max())
    assert scale > 0, "a reference that is all zeros tests nothing"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def act_and_grad(model, x, layer, target):
    """Activations of `layer` and the gradient of the target logits with respect to them."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        out = model(x)
    finally:
        handle.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), a)
    return a.detach(), g.detach()


def activations(model, x, layer):
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["a"]


def up(cam, size=(12, 12)):
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def by_hand(name, a, g):
    """Each variant's map at the layer, written out from its paper."""
    if name == "gradcam":
        cam = (g.mean(dim=(2, 3))[:, :, None, None] * a).sum(1)
    elif name == "gradcam_plus_plus":
        den = 2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3
        alpha = torch.nan_to_num(g**2 / den, nan=0.0, posinf=0.0, neginf=0.0)
        w = (alpha * g.relu()).sum(dim=(2, 3))
        cam = (w[:, :, None, None] * a).sum(1)
    elif name == "xgradcam":
        share = torch.nan_to_num(a / a.sum(dim=(2, 3), keepdim=True), nan=0.0)
        w = (share * g).sum(dim=(2, 3))
        cam = (w[:, :, None, None] * a).sum(1)
    elif name == "hirescam":
        cam = (g * a).sum(1)
    elif name == "layercam":
        cam = (g.relu() * a).sum(1)
    return cam.relu()


# -- gradient CAMs ------------------------------------------------------------------------------


@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_equals_its_formula_upsampled(pool_cnn, x, relu):
    ex = sl.explain(pool_cnn, x, methods="gradcam", target=TARGETS, layer="features.4", relu=relu)
    a, g = act_and_grad(pool_cnn, x, pool_cnn.features[4], TARGETS)
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)
    cam = cam.relu() if relu else cam
    assert_same(ex["gradcam"].maps, up(cam))
    assert ex["gradcam"].attributions.shape == (4, 1, 12, 12)
    assert ex["gradcam"].layer == "features.4"
    if not relu:
        assert (ex["gradcam"].maps < 0).any()


@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_each_gradient_cam_equals_its_formula(pool_cnn, x, method):
    # At the first ReLU the gradient varies in space (maxpool and a conv follow), so the variants
    # really differ from Grad-CAM there.
    ex = sl.explain(pool_cnn, x, methods=[method, "gradcam"], target=TARGETS, layer="features.1")
    a, g = act_and_grad(pool_cnn, x, pool_cnn.features[1], TARGETS)
    assert_same(ex[method].maps, by_hand(method, a, g))
    if method != "gradcam":
        assert not torch.allclose(ex[method].maps, ex["gradcam"].maps)


class ExpHeadNet(nn.Module):
    """A tiny net whose layer `body` (2 channels, 3×3) feeds a piecewise-linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(
            nn.Conv2d(2, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)
        )

    def forward(self, x):
        return self.head(self.body(x))


def test_gradcam_plus_plus_alpha_from_the_derivatives_of_exp_score():
    """α = ∂²Y/∂A² / (2 ∂²Y/∂A² + Σ_ab A_ab ∂³Y/∂A³) with Y = exp(S_c), by autograd (Eq. 19)."""
    torch.manual_seed(4)
    model = ExpHeadNet().double().eval()
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    ex = sl.explain(model, x, methods="gradcam_plus_plus", layer="body")
    targets, scores = ex["gradcam_plus_plus"].target, ex.logits
    a = activations(model, x, model.body)
    for b in range(2):
        c = int(targets[b])
        shape = a[b].shape

        def y(flat, c=c, shape=shape):
            return torch.exp(model.head(flat.view(1, *shape))[0, c])

        flat = a[b].flatten()
        d1 = torch.func.jacrev(y)(flat)
        d2 = torch.func.jacrev(torch.func.jacrev(y))(flat).diagonal()
        d3 = torch.einsum(
            "iii->i", torch.func.jacrev(torch.func.jacrev(torch.func.jacrev(y)))(flat)
        )
        d1, d2, d3 = (d.view(shape) for d in (d1, d2, d3))
        den = 2 * d2 + a[b].sum(dim=(1, 2), keepdim=True) * d3
        alpha = torch.where(den != 0, d2 / torch.where(den != 0, den, 1), 0)
        w = (alpha * d1.relu()).sum(dim=(1, 2))
        paper = (w[:, None, None] * a[b]).sum(0).relu()
        # Ours drops the per-sample factor exp(S_c) of the paper's weights.
        ours = ex["gradcam_plus_plus"].maps[b] * torch.exp(scores[b, c])
        assert_same(ours, paper, rtol=1e-9)


def test_hirescam_equals_gradcam_on_a_gap_linear_head(pool_cnn, x):
    ex = sl.explain(pool_cnn, x, methods=["hirescam", "gradcam"], layer="features.4")
    assert_same(ex["hirescam"].maps, ex["gradcam"].maps)


# -- CAM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("relu", [True, False])
def test_cam_is_gradcam_times_hw_and_the_fc_formula(pool_cnn, x, relu):
    ex = sl.explain(
        pool_cnn, x, methods=["cam", "gradcam"], target=TARGETS, layer="features.4", relu=relu
    )
    assert_same(ex["cam"].maps, ex["gradcam"].maps * 36)  # layer 6×6: h·w = 36
    a = activations(pool_cnn, x, pool_cnn.features[4])
    cam = torch.einsum("bk,bkhw->bhw", pool_cnn.fc.weight[TARGETS].detach(), a)
    assert_same(ex["cam"].maps, up(cam.relu() if relu else cam))
    by_name = sl.explain(pool_cnn, x, methods="cam", target=TARGETS, layer="features.4", fc="fc")
    assert_same(by_name["cam"].maps, ex["cam"].maps if relu else up(cam.relu()))


def test_cam_fails_clearly_without_a_matching_linear_head(pool_cnn, x):
    fully_conv = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    with pytest.raises(SaliencelabError, match="no nn.Linear layer"):
        sl.explain(fully_conv, x, methods="cam", layer="1")
    with pytest.raises(SaliencelabError, match="features.1 has 8 channels and fc takes 6"):
        sl.explain(pool_cnn, x, methods="cam", layer="features.1")
    with pytest.raises(SaliencelabError, match="not an nn.Linear"):
        sl.explain(pool_cnn, x, methods="cam", layer="features.4", fc="features.3")
    with pytest.raises(SaliencelabError, match="needs class targets"):
        sl.explain(pool_cnn, x, methods="cam", layer="features.4", target=lambda out: out[:, 0])


# -- Captum --------------------------------------------------------------------------------------


@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_matches_captum_layer_gradcam(pool_cnn, x, relu):
    ex = sl.explain(pool_cnn, x, methods="gradcam", target=TARGETS, layer="features.4", relu=relu)
    ref = LayerGradCam(pool_cnn, pool_cnn.features[4]).attribute(
        x, target=TARGETS, relu_attributions=relu
    )
    ref = LayerAttribution.interpolate(ref, (12, 12), interpolate_mode="bilinear")
    assert_same(ex["gradcam"].attributions, ref.detach())


@pytest.mark.filterwarnings("ignore::UserWarning:captum.*")
def test_guided_gradcam_matches_captum(pool_cnn, x):
    ex = sl.explain(pool_cnn, x, methods="guided_gradcam", target=TARGETS, layer="features.4")
    ref = GuidedGradCam(pool_cnn, pool_cnn.features[4]).attribute(
        x, target=TARGETS, interpolate_mode="bilinear"
    )
    got = ex["guided_gradcam"]
    assert got.attributions.shape == (4, 3, 12, 12)
    assert_same(got.attributions, ref.detach())
    assert_same(got.maps, ref.detach().sum(1))
    assert got.passes == 2  # the plain layer pass and the guided pass


# -- Score-CAM, Ablation-CAM, Eigen-CAM ----------------------------------------------------------


def scorecam_by_loop(model, x, layer, targets, weighting="softmax", max_channels=None):
    a = activations(model, x, layer)
    cams = []
    for b in range(x.shape[0]):
        channels = range(a.shape[1])
        if max_channels is not None:
            channels = a[b].mean(dim=(1, 2)).topk(max_channels).indices.tolist()
        scores = []
        for k in channels:
            mask = up(a[b : b + 1, k], x.shape[-2:])
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 0 else torch.zeros_like(mask)
            with torch.no_grad():
                out = model(x[b : b + 1] * mask[:, None])[0]
            scores.append(out[targets[b]] if weighting == "softmax" else out.softmax(0)[targets[b]])
        s = torch.stack(scores)
        w = s.softmax(0) if weighting == "softmax" else s
        cams.append((w[:, None, None] * a[b, list(channels)]).sum(0).relu())
    return up(torch.stack(cams), x.shape[-2:])


@pytest.mark.parametrize("weighting", ["softmax", "probability"])
def test_scorecam_equals_a_loop_over_channels(pool_cnn, x, weighting):
    ref = scorecam_by_loop(pool_cnn, x, pool_cnn.features[4], TARGETS, weighting)
    for chunk_size in (None, 2):
        ex = sl.explain(
            pool_cnn,
            x,
            methods="scorecam",
            target=TARGETS,
            layer="features.4",
            weighting=weighting,
            chunk_size=chunk_size,
        )
        assert_same(ex["scorecam"].maps, ref)
        assert ex["scorecam"].passes == 1 and ex["scorecam"].forwards == 6


def test_scorecam_max_channels_keeps_the_most_active(pool_cnn, x):
    ref = scorecam_by_loop(pool_cnn, x, pool_cnn.features[4], TARGETS, max_channels=3)
    ex = sl.explain(
        pool_cnn, x, methods="scorecam", target=TARGETS, layer="features.4", max_channels=3
    )
    assert_same(ex["scorecam"].maps, ref)
    assert ex["scorecam"].forwards == 3


def ablationcam_by_loop(model, x, layer, targets):
    a = activations(model, x, layer)
    with torch.no_grad():
        y = model(x).gather(1, targets[:, None])[:, 0]
    cams = []
    for b in range(x.shape[0]):
        w = []
        for k in range(a.shape[1]):

            def zero(m, i, o, k=k):
                o = o.clone()
                o[:, k] = 0
                return o

            handle = layer.register_forward_hook(zero)
            with torch.no_grad():
                yk = model(x[b : b + 1])[0, targets[b]]
            handle.remove()
            w.append((y[b] - yk) / y[b])
        cams.append((torch.stack(w)[:, None, None] * a[b]).sum(0).relu())
    return up(torch.stack(cams), x.shape[-2:])


def test_ablationcam_equals_a_loop_over_channels(pool_cnn, x):
    ref = ablationcam_by_loop(pool_cnn, x, pool_cnn.features[4], TARGETS)
    for chunk_size in (None, 2):
        ex = sl.explain(
            pool_cnn,
            x,
            methods="ablationcam",
            target=TARGETS,
            layer="features.4",
            chunk_size=chunk_size,
        )
        assert_same(ex["ablationcam"].maps, ref)
        assert ex["ablationcam"].passes == 1 and ex["ablationcam"].forwards == 6
    for m in pool_cnn.modules():
        assert not m._forward_hooks


@pytest.mark.parametrize("center", [False, True])
def test_eigencam_equals_an_svd(pool_cnn, x, center):
    ex = sl.explain(pool_cnn, x, methods="eigencam", layer="features.4", center=center)
    a = activations(pool_cnn, x, pool_cnn.features[4]).double().numpy()
    cams = []
    for act in a:
        m = act.reshape(act.shape[0], -1).T  # (h·w, K)
        if center:
            m = m - m.mean(axis=0)
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        proj = m @ vt[0]
        if np.cov(proj, m.mean(axis=1))[0, 1] < 0:
            proj = -proj
        cams.append(np.maximum(proj, 0).reshape(act.shape[1:]))
    ref = up(torch.tensor(np.stack(cams), dtype=torch.float32))
    assert_same(ex["eigencam"].maps, ref)
    assert ex["eigencam"].forwards == 0


# -- shared passes, fusion, targets, bad input ---------------------------------------------------


def test_gradient_cams_and_saliency_share_one_pass(pool_cnn, x):
    calls = []
    handle = pool_cnn.register_forward_hook(lambda *a: calls.append(1))
    try:
        methods = [*GRADIENT_CAMS, "saliency", "cam", "eigencam"]
        ex = sl.explain(pool_cnn, x, methods=methods, layer="features.4")
        assert len(calls) == 1  # one forward (one chunk) and one backward for all of them
        assert ex.total_passes == 1 and ex.total_forwards == 0
        assert all(ex[m].passes == 1 for m in methods)
        assert set(ex["gradcam"].shared_with) == set(methods) - {"gradcam"}
        # Different layers per method: still one pass, hooking both layers.
        calls.clear()
        per_method = {"gradcam": {"layer": "features.1"}, "layercam": {"layer": "features.4"}}
        ex = sl.explain(pool_cnn, x, methods={**per_method, "saliency": {}})
        assert len(calls) == 1 and ex.total_passes == 1
    finally:
        handle.remove()


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_fusion_over_two_layers(pool_cnn, x, fusion):
    layers = ["features.1", "features.4"]
    ex = sl.explain(pool_cnn, x, methods="gradcam", target=TARGETS, layer=layers, fusion=fusion)
    maps = []
    for i in (1, 4):
        a, g = act_and_grad(pool_cnn, x, pool_cnn.features[i], TARGETS)
        m = up(by_hand("gradcam", a, g))
        maps.append(m / m.flatten(1).amax(1)[:, None, None])
    stack = torch.stack(maps)
    assert_same(ex["gradcam"].maps, stack.mean(0) if fusion == "mean" else stack.amax(0))
    assert ex["gradcam"].layer == layers
    assert ex["gradcam"].maps.shape == (4, 12, 12)


def test_fused_ablationcam_runs_one_forward_per_channel_of_each_layer(pool_cnn, x):
    ex = sl.explain(
        pool_cnn, x, methods="ablationcam", layer=["features.1", "features.4"], chunk_size=5
    )
    assert ex["ablationcam"].forwards == 8 + 6
    assert ex["ablationcam"].passes == 1


def test_mixed_targets_in_a_batch(pool_cnn, x):
    ex = sl.explain(pool_cnn, x, methods=["layercam", "cam"], target=TARGETS, layer="features.4")
    a, g = act_and_grad(pool_cnn, x, pool_cnn.features[4], TARGETS)
    assert torch.equal(ex["layercam"].target, TARGETS)
    assert_same(ex["layercam"].maps, up(by_hand("layercam", a, g)))
    # Each sample on its own with its target gives the same map.
    for b in range(4):
        one = sl.explain(
            pool_cnn, x[b : b + 1], methods="cam", target=int(TARGETS[b]), layer="features.4"
        )
        assert_same(one["cam"].maps[0], ex["cam"].maps[b])


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "eigencam", "cam"])
def test_a_layer_without_spatial_output_is_a_clear_error(pool_cnn, x, method):
    for layer in ("fc", "pool"):
        with pytest.raises(SaliencelabError, match="not a spatial map"):
            sl.explain(pool_cnn, x, methods=method, layer=layer)


def test_bad_options_are_clear_errors(pool_cnn, x):
    with pytest.raises(SaliencelabError, match="fusion must be one of"):
        sl.explain(pool_cnn, x, methods="gradcam", layer=["features.1", "features.4"], fusion="avg")
    with pytest.raises(SaliencelabError, match="max_channels must be at least 1"):
        sl.explain(pool_cnn, x, methods="scorecam", layer="features.4", max_channels=0)
    with pytest.raises(SaliencelabError, match="weighting must be one of"):
        sl.explain(pool_cnn, x, methods="scorecam", layer="features.4", weighting="logits")


def test_default_layer_and_options_are_listed(tiny_cnn, images):
    ex = sl.explain(tiny_cnn, images, methods=["layercam", "scorecam"])
    assert ex["layercam"].layer == "features" and ex["scorecam"].layer == "features"
    specs = {m.name: m for m in sl.methods()}
    for name in [*GRADIENT_CAMS, "cam", "scorecam", "eigencam", "ablationcam", "guided_gradcam"]:
        assert specs[name].family == "cam"
        assert {"layer", "fusion"} <= set(specs[name].options)
    assert specs["scorecam"].cost.startswith("1 + K forwards")


class InPlaceAfterLayer(nn.Module):
    """conv → BatchNorm → in-place ReLU (module and functional) → pool → linear: the CAM layer's
    output is changed in place by the op after it."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU(inplace=True)
        self.functional = functional
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn(self.conv(x))
        a = F.relu_(a) if self.functional else self.act(a)
        return self.fc(a.mean((2, 3)))


@pytest.mark.parametrize("functional", [False, True])
def test_cam_layer_followed_by_an_in_place_op(functional):
    """Grad-CAM of a layer whose output the model then changes in place (F.relu_, ReLU(inplace))
    uses the layer's own output (it crashed on the leaf the capture made, or, in a pass shared
    with an input gradient, read the activations after the in-place ReLU)."""
    torch.manual_seed(0)
    model = InPlaceAfterLayer(functional).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 10, 10)
    a = model.bn(model.conv(x)).detach().requires_grad_(True)  # the layer's output, pre-ReLU
    logits = model.fc(F.relu(a).mean((2, 3)))
    target = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach()  # 10 x 10: no upsampling
    alone = sl.explain(model, x, methods="gradcam", layer="bn")["gradcam"].maps
    shared = sl.explain(model, x, methods=["saliency", "gradcam"], layer="bn")["gradcam"].maps
    torch.testing.assert_close(alone, cam)
    torch.testing.assert_close(shared, cam)


# -- documented defaults and channel selection ---------------------------------------------------


def test_eigencam_by_default_projects_the_uncentred_activations(pool_cnn, x):
    """The paper's Eigen-CAM (center=False) is the default: M v₁ of the raw (h·w, K) matrix."""
    ex = sl.explain(pool_cnn, x, methods="eigencam", layer="features.4")
    a = activations(pool_cnn, x, pool_cnn.features[4]).double().numpy()
    cams = []
    for act in a:
        m = act.reshape(act.shape[0], -1).T
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        proj = m @ vt[0]
        proj = proj if np.cov(proj, m.mean(axis=1))[0, 1] >= 0 else -proj
        cams.append(np.maximum(proj, 0).reshape(act.shape[1:]))
    assert_same(ex["eigencam"].maps, up(torch.tensor(np.stack(cams), dtype=torch.float32)))


class AuxHeadCNN(PoolCNN):
    """PoolCNN with an unused nn.Linear registered before the classifier `fc`."""

    def __init__(self) -> None:
        super().__init__()
        del self.fc
        self.aux = nn.Linear(6, 5)
        self.fc = nn.Linear(6, 5)  # registered again: now after aux in named_modules()


def test_cam_default_classifier_is_the_last_linear(x):
    torch.manual_seed(6)
    model = AuxHeadCNN().eval()
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] == ["aux", "fc"]
    ex = sl.explain(model, x, methods="cam", target=TARGETS, layer="features.4", relu=False)
    a = activations(model, x, model.features[4])
    cam = torch.einsum("bk,bkhw->bhw", model.fc.weight[TARGETS].detach(), a)
    assert_same(ex["cam"].maps, up(cam))


class ChannelsNet(nn.Module):
    """The input itself is the CAM layer (`feat`), then GAP → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_max_channels_ranks_channels_by_their_mean_not_their_peak(method):
    """Channel 0: one bright pixel (peak 10, mean 10/16); channel 1: flat 1 (mean 1). With
    max_channels=1 the kept channel is 1, so the map is a multiple of the flat channel."""
    torch.manual_seed(7)
    model = ChannelsNet().eval()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.0, 0.3]]))
        model.fc.bias.zero_()
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 1, 2] = 10.0
    x[0, 1] = 1.0
    ex = sl.explain(model, x, methods=method, target=0, layer="feat", max_channels=1)
    maps = ex[method].maps[0]
    assert ex[method].forwards == 1
    assert float(maps.max()) > 0
    torch.testing.assert_close(maps, torch.full_like(maps, float(maps.mean())))


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_a_cam_of_a_channel_target_defaults_to_the_targets_layer(tiny_cnn, images, method):
    """The forward ends at a channel target's layer, so the model's default CAM layer (or the
    last spatial one) would never run. With no layer given, the CAM is taken at the target's
    own layer, where S = mean A_k has ∂S/∂A_c = 1/hw on channel k and 0 elsewhere: Grad-CAM is
    ReLU(Σ_c α_c A_c) = ReLU(A_k) / hw, and Layer-CAM ReLU(Σ_c ReLU(∂S/∂A_c) A_c) the same."""
    k = 3
    ex = sl.explain(tiny_cnn, images, methods=method, target=sl.channel("features.2", k))
    seen = {}
    handle = tiny_cnn.features[2].register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        tiny_cnn(images)
    handle.remove()
    a = seen["a"][:, k]
    expected = a.clamp(min=0) / (a.shape[-2] * a.shape[-1])
    assert ex[method].layer == "features.2"
    torch.testing.assert_close(ex[method].maps, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("method", "options", "words"),
    [
        ("gradcam", {"relu": "yes"}, "relu must be True or False"),
        ("layercam", {"relu": None}, "relu must be True or False"),
        ("cam", {"relu": "no"}, "relu must be True or False"),
        ("scorecam", {"relu": "no"}, "relu must be True or False"),
        ("guided_gradcam", {"relu": "no"}, "relu must be True or False"),
        ("eigencam", {"center": "x"}, "center must be True or False"),
        ("ablationcam", {"max_channels": 1.5}, "max_channels must be at least 1, a whole"),
        ("scorecam", {"max_channels": "4"}, "max_channels must be at least 1, a whole"),
    ],
)
def test_bad_flags_and_channel_counts_are_one_sentence(pool_cnn, x, method, options, words):
    """A string flag is not read by its truth value ("no" would be True), and a fractional
    channel count is not truncated."""
    with pytest.raises(SaliencelabError, match=words):
        sl.explain(pool_cnn, x, methods={method: options}, target=TARGETS)


def test_relu_flag_takes_0_and_1(pool_cnn, x):
    def run(relu):
        return sl.explain(pool_cnn, x, methods={"gradcam": {"relu": relu}})["gradcam"]

    assert torch.equal(run(0).maps, run(False).maps)
    assert torch.equal(run(1).maps, run(True).maps)


@pytest.mark.parametrize(
    "method",
    ["cam", "gradcam", "gradcam_plus_plus", "xgradcam", "hirescam", "layercam", "eigencam"]
    + ["scorecam", "ablationcam"],
)
def test_a_cam_without_its_relu_is_signed(pool_cnn, x, method):
    """relu=False keeps the signed weighted sum: the map says signed (drawn centred on zero) and
    is the ReLU'd map where positive; with the ReLU it is unsigned and never negative. At a layer
    of the input's resolution (12 × 12), so that no upsampling stands between the two."""
    layer = "features.4" if method == "cam" else "features.1"  # CAM: the layer before the GAP
    opts = {"layer": layer}
    with_relu = sl.explain(pool_cnn, x, methods={method: opts}, target=TARGETS)[method]
    off = {**opts, "relu": False}
    without = sl.explain(pool_cnn, x, methods={method: off}, target=TARGETS)[method]
    assert not with_relu.signed and with_relu.maps.min() >= 0
    assert without.signed
    # Grad-CAM++, LayerCAM and Score-CAM weigh these post-ReLU activations by non-negative
    # weights, and EigenCAM's projection is mostly positive here: the others go negative
    if method in ("cam", "gradcam", "xgradcam", "hirescam", "ablationcam"):
        assert without.maps.min() < 0
    if method != "cam":
        torch.testing.assert_close(without.maps.clamp(min=0), with_relu.maps)
    both = {"relu": False, "layer": ["features.1", "features.4"]}
    if method != "cam":
        assert sl.explain(pool_cnn, x, methods={method: both})[method].signed


def test_a_layer_the_forward_never_runs_is_named_as_such(tiny_cnn, images):
    """A CAM at a layer the model has but its forward does not use: the sentence said a neuron
    or channel target had stopped the forward, though the target was a class."""
    tiny_cnn.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(SaliencelabError) as e:
        sl.explain(tiny_cnn, images, methods="gradcam", layer="unused", target=0)
    message = str(e.value)
    assert "was not run by the model's forward" in message and "target" not in message
