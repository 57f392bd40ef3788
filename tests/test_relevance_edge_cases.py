"""Relevance methods on odd models: float16 DeepLIFT, modules registered twice, checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import saliencelab as sl

# -- DeepLIFT in float16: |x - x'| = 0 takes the gradient, not 0 / 0 -------------------------------


def _relu_mlp() -> nn.Module:
    """Linear → ReLU → Linear; hidden units 0-3 read no input (Δz = 0 for every pair)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    with torch.no_grad():
        model[0].weight[:4] = 0
        model[0].bias[:2] = 0.5  # z = z' = 0.5 on units 0, 1 (f' = 1), -0.5 on 2, 3 (f' = 0)
        model[0].bias[2:4] = -0.5
    return model


def _deeplift_by_hand(model: nn.Module, x, base, target: int) -> torch.Tensor:
    """(x - x') ⊙ W1ᵀ (r ⊙ W2[target]), r = Δrelu / Δz, or relu'(z) where Δz = 0 (float64)."""
    w1, b1 = model[0].weight.double(), model[0].bias.double()
    w2 = model[2].weight.double()
    z, z_ref = x.double() @ w1.T + b1, base.double() @ w1.T + b1
    dz = z - z_ref
    slope = (z.relu() - z_ref.relu()) / torch.where(dz == 0, 1.0, dz)
    r = torch.where(dz == 0, (z > 0).double(), slope)
    return (x.double() - base.double()) * ((r * w2[target]) @ w1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_deeplift_equals_its_rescale_rule_by_hand_in_float16_and_float32(dtype):
    model = _relu_mlp()
    torch.manual_seed(5)
    x = torch.rand(3, 10) + 0.25
    want = _deeplift_by_hand(model, x, torch.zeros_like(x), target=1)
    out = sl.explain(model.to(dtype), x.to(dtype), methods="deeplift", target=1)["deeplift"]
    got = out.attributions.double()
    assert torch.isfinite(got).all()
    tol = 1e-2 if dtype == torch.float16 else 1e-5
    assert (got - want).abs().max() <= tol * want.abs().max()
    assert out.extras["delta"].abs().max() <= tol * want.abs().sum(1).max()


def _pool_cnn() -> nn.Module:
    """Max pooling on the input, then conv → ReLU → average → linear."""
    torch.manual_seed(6)
    return nn.Sequential(
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


@pytest.mark.parametrize("method", ["deeplift", "deeplift_shap"])
def test_deeplift_on_a_float16_model_is_finite_and_close_to_float32(method):
    """Whole pooling windows where x = x' (Δx = 0): float16 maps as float32's, no NaN."""
    model = _pool_cnn()
    torch.manual_seed(7)
    x = torch.rand(2, 3, 8, 8)
    refs = torch.rand(3, 3, 8, 8)
    x[..., :4, :4] = refs[..., :4, :4] = 0.0
    options = {"baselines": 0.0} if method == "deeplift" else {"baselines": refs}
    want = sl.explain(model, x, methods=method, target=0, **options)[method]
    # float32 keeps summation-to-delta exact
    assert want.extras["delta"].abs().max() < 1e-5
    half = copy.deepcopy(model).half()
    options16 = {k: v.half() if torch.is_tensor(v) else v for k, v in options.items()}
    got = sl.explain(half, x.half(), methods=method, target=0, **options16)[method]
    a16, a32 = got.attributions.float(), want.attributions
    assert torch.isfinite(a16).all()
    assert (a16 - a32).abs().max() <= 1e-2 * a32.abs().max()
    assert torch.isfinite(got.extras["delta"]).all()


# -- LRP on a model whose conv and BatchNorm are registered twice ---------------------------------


def _blocks(x: torch.Tensor, *blocks: nn.Module, ckpt: bool) -> torch.Tensor:
    """The blocks in turn, each under a non-reentrant checkpoint when `ckpt`."""
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
    return x


class _Twice(nn.Module):
    """conv1 and bn registered as attributes and again in block1 (the forward uses block1)."""

    def __init__(self, ckpt: bool = False) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.block1 = nn.Sequential(self.conv1, self.bn, nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_blocks(x, self.block1, self.block2, ckpt=self.ckpt).mean(dim=(2, 3)))


class _Once(nn.Module):
    """`_Twice`'s modules, each registered once; no checkpoint."""

    def __init__(self, twin: nn.Module) -> None:
        super().__init__()
        self.block1, self.block2, self.fc = twin.block1, twin.block2, twin.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block2(self.block1(x)).mean(dim=(2, 3)))


def _with_bn_statistics(model: nn.Module) -> nn.Module:
    torch.manual_seed(8)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("ckpt", [False, True])
@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1"])
def test_lrp_merges_a_batchnorm_registered_twice_once(ckpt, composite, images):
    torch.manual_seed(9)
    model = _with_bn_statistics(_Twice(ckpt))
    once = _Once(copy.deepcopy(model))
    weight = model.conv1.weight.detach().clone()
    got = sl.explain(model, images, methods="lrp", target=1, composite=composite)["lrp"]
    want = sl.explain(once, images, methods="lrp", target=1, composite=composite)["lrp"]
    assert torch.isfinite(want.attributions).all() and want.attributions.abs().max() > 0
    torch.testing.assert_close(got.attributions, want.attributions, rtol=1e-5, atol=1e-7)
    # restored: the same BatchNorm in both places, the original weights
    assert model.bn is model.block1[1] and isinstance(model.bn, nn.BatchNorm2d)
    assert torch.equal(model.conv1.weight, weight)


# -- LRP through torch.utils.checkpoint(use_reentrant=False) --------------------------------------


class _BlocksCkpt(nn.Module):
    """conv → ReLU → BatchNorm (after the ReLU: not merged) → max pool, checkpointed or not."""

    def __init__(self, ckpt: bool) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.block1 = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(6), nn.MaxPool2d(2)
        )
        self.block2 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(_blocks(x, self.block1, self.block2, ckpt=self.ckpt)).flatten(1))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"canonize": False},
        {"composite": "epsilon"},
        {"composite": "epsilon_gamma_box"},
        {"composite": "epsilon_alpha2_beta1", "canonize": False},
    ],
)
def test_lrp_through_a_non_reentrant_checkpoint_equals_lrp_without_it(options, images):
    """The BatchNorm's LRP-ε takes its vjp through the forward's graph, whose saved tensors the
    checkpoint recomputes in that nested backward: the same map as without the checkpoint."""
    torch.manual_seed(10)
    model = _with_bn_statistics(_BlocksCkpt(ckpt=True))
    plain = copy.deepcopy(model)
    plain.ckpt = False
    got = sl.explain(model, images, methods="lrp", target=2, **options)["lrp"]
    want = sl.explain(plain, images, methods="lrp", target=2, **options)["lrp"]
    assert torch.isfinite(want.attributions).all() and want.attributions.abs().max() > 0
    torch.testing.assert_close(got.attributions, want.attributions, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.extras["delta"], want.extras["delta"])
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
