"""A metric object over a dataset loop: batches of other image sizes, results that do not share
memory with the metric, and a failed call that leaves a train-mode model's statistics alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.metrics import CurvesDroppedWarning, MetricResult


def _batch(model, size: int, seed: int):
    torch.manual_seed(seed)
    x = torch.randn(2, 3, size, size)
    a = sl.explain(model, x, "saliency")["saliency"]
    return a.maps, x, a.target


@pytest.mark.parametrize(
    "name, options",
    [("aopc_morf", {"patch_size": 2, "regions": 100}), ("deletion", {"steps": 7})],
)
def test_batches_of_other_image_sizes_keep_their_values_and_drop_the_curves(
    tiny_cnn, name, options
):
    """aopc: the curves have min(regions, patches) + 1 points, so 12² and 10² images give
    curves of other lengths (compute() raised torch's RuntimeError); deletion: the same length
    on other x axes (round(k·H·W/steps) / (H·W)), which compute() drew against the first
    batch's. The values are each batch's own; the curves are left out with a warning."""
    batches = [_batch(tiny_cnn, 12, 0), _batch(tiny_cnn, 10, 1)]
    alone = [
        sl.metrics.get(name)(**options)(m, x=x, model=tiny_cnn, target=t) for m, x, t in batches
    ]
    metric = sl.metrics.get(name)(**options)
    for m, x, t in batches:
        metric.update(m, x=x, model=tiny_cnn, target=t)
    with pytest.warns(CurvesDroppedWarning, match="of one size"):
        together = metric.compute()
    torch.testing.assert_close(together.values, torch.cat([r.values for r in alone]))
    assert together.curves is None and together.curve_x is None
    with pytest.warns(CurvesDroppedWarning):
        merged = MetricResult.merge(alone)
    torch.testing.assert_close(merged.values, together.values)
    assert merged.curves is None
    assert all("scores" not in r for r in (together.extras, merged.extras))


def test_results_do_not_share_memory_with_the_metric(tiny_cnn):
    """Editing what update() returned, or a result's curve_x, in place (e.g. to percent) must
    not change the next compute()."""
    maps, x, target = _batch(tiny_cnn, 12, 0)
    metric = sl.metrics.get("deletion")(steps=5)
    values = metric.update(maps, x=x, model=tiny_cnn, target=target)
    first = metric.compute()
    kept_values, kept_x = first.values.clone(), first.curve_x.clone()
    values *= 100
    first.curve_x *= 100
    first.values *= 100
    again = metric.compute()
    assert torch.equal(again.values, kept_values)
    assert torch.equal(again.curve_x, kept_x)


class _Fails(nn.Module):
    """Conv, BatchNorm (train mode), then a Linear for 8×8 maps only: other sizes fail inside."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


@pytest.mark.parametrize("call", ["update", "evaluate"])
def test_a_failed_call_leaves_a_train_mode_models_batchnorm_statistics(call):
    """The diagnostic forward that checks whether the inputs were at fault ran the model in
    train mode, outside the engine's session, and moved BatchNorm's running statistics."""
    model = _Fails().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, maps = torch.randn(2, 3, 10, 10), torch.rand(2, 10, 10)
    with pytest.raises(RuntimeError):
        if call == "update":
            sl.metrics.get("deletion")(steps=4).update(maps, x=x, model=model)
        else:
            sl.evaluate(model, x, {"mine": maps}, metrics={"deletion": {"steps": 4}})
    assert model.training and model.body[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
