"""Explanation methods with features that each work alone, combined: noisy methods in batches,
perturbation methods of a channel or neuron target, black boxes with attention methods.

Each combination gives the map a direct computation gives, or one sentence saying what is not
supported and what to do.
"""

from __future__ import annotations

import pytest
import torch

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_maps_of_a_batch_are_those_of_each_sample_alone(tiny_cnn, images, kind):
    """The noise was drawn for row b of the batch: the same image got other noise, and another
    map, alone or at another position (a dataset explained in batches of 4 or 1 differed)."""
    opts = {kind: {"n_samples": 3, "base": "input_x_gradient"}}  # (varies with the noise)
    batch = sl.explain(tiny_cnn, images, methods=opts, target=[0, 1, 2, 3])[kind].maps
    for i in range(len(images)):
        alone = sl.explain(tiny_cnn, images[i : i + 1], methods=opts, target=[i])[kind].maps
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-5, atol=1e-6)
    flipped = sl.explain(tiny_cnn, images.flip(0), methods=opts, target=[3, 2, 1, 0])[kind].maps
    torch.testing.assert_close(flipped.flip(0), batch, rtol=1e-5, atol=1e-6)
    opts[kind]["seed"] = 1
    other = sl.explain(tiny_cnn, images, methods=opts, target=[0, 1, 2, 3])[kind].maps
    assert not torch.allclose(other, batch)  # the seed still matters


def test_smoothgrad_noise_does_not_depend_on_how_many_draws_are_made_at_once(
    tiny_cnn, images, monkeypatch
):
    """The draws are grouped by a cap on the batch's noisy values, so a bigger batch draws fewer
    at once; one randn call for a group gave other numbers than for one draw at a time when the
    sample's size is not a multiple of 16 (here 3 × 12 × 12 = 432 is, so 3 × 11 × 13 is used):
    the same image got another map in a batch of 4 than alone (0.7 % off at 225 × 225)."""
    from saliencelab.methods.gradient import smoothgrad as smoothgrad_module

    x = torch.rand(4, 3, 11, 13, generator=torch.Generator().manual_seed(0))
    opts = {"smoothgrad": {"n_samples": 5, "base": "input_x_gradient"}}
    alone = sl.explain(tiny_cnn, x[:1], methods=opts, target=[0])["smoothgrad"].maps
    monkeypatch.setattr(smoothgrad_module, "MAX_NOISY_VALUES", 2 * x.numel())  # groups of 2
    grouped = sl.explain(tiny_cnn, x, methods=opts, target=[0, 1, 2, 3])["smoothgrad"].maps
    torch.testing.assert_close(grouped[0], alone[0], rtol=1e-5, atol=1e-7)


def _occlusion_by_hand(model, x, layer, read, window):
    """Occlusion with non-overlapping windows (stride = window), zero baseline, scored by
    `read(activation of layer)`: the drop of each window spread over its pixels."""
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():

            def score(inputs):
                seen.clear()
                model(inputs)
                return read(seen[0])

            clean = score(x)
            maps = torch.zeros(x.shape[0], *x.shape[-2:])
            for top in range(0, x.shape[-2], window):
                for left in range(0, x.shape[-1], window):
                    hole = x.clone()
                    hole[..., top : top + window, left : left + window] = 0
                    drop = clean - score(hole)
                    maps[:, top : top + window, left : left + window] = drop[:, None, None]
    finally:
        handle.remove()
    return maps


@pytest.mark.parametrize("kind", ["channel", "neuron"])
def test_occlusion_of_a_channel_or_neuron_target_at_a_convolution_before_batchnorm(kind):
    """Incremental occlusion (on by default) folds BatchNorm into the convolution before it for
    its passes: a channel of that convolution was read after the BatchNorm (a silently wrong
    map, 5x too large, even when the incremental check then fell back to full forwards), and a
    neuron failed with 'outside the 1x1 map' (the layer ran on a crop)."""
    model = sl.load_model("shapes_cnn")  # features.8: a convolution, features.9 its BatchNorm
    x = sl.data.shapes.make(2, seed=1).images
    conv = model.module.features[8]
    if kind == "channel":
        target, read = sl.channel("features.8", 1), lambda a: a[:, 1].mean((1, 2))
    else:
        target, read = sl.neuron("features.8", 1, 5, 6), lambda a: a[:, 1, 5, 6]
    want = _occlusion_by_hand(model.module, x, conv, read, 8)
    for incremental in (True, False):
        opts = {"window": 8, "stride": 8, "incremental": incremental}
        ex = sl.explain(model, x, methods={"occlusion": opts}, target=target)
        torch.testing.assert_close(ex["occlusion"].maps, want, rtol=1e-4, atol=1e-5)
    grid = torch.arange(64).view(8, 8).repeat_interleave(8, 0).repeat_interleave(8, 1)
    fa = sl.explain(model, x, methods={"feature_ablation": {"feature_mask": grid}}, target=target)
    torch.testing.assert_close(fa["feature_ablation"].maps, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["attention_rollout", "grad_rollout"])
def test_a_black_box_refuses_the_rollouts_for_their_attention_layers(method):
    """attention_rollout needs no gradient, but a black box refused it as 'needs gradients'."""
    box = sl.blackbox(lambda t: t.flatten(1)[:, :4])
    with pytest.raises(SaliencelabError, match=f"^{method} reads the attention matrices of the"):
        sl.explain(box, torch.rand(2, 3, 8, 8), methods=method)
