"""Bad input to any metric that runs the model gets one sentence (a SaliencelabError) before or
instead of a raw torch error, and a wrong value is never returned silently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saliencelab as sl
from saliencelab.metrics.base import metric_classes

FAST = {
    "aopc_lerf": {"patch_size": 4, "regions": 4},
    "aopc_morf": {"patch_size": 4, "regions": 4},
    "avg_sensitivity": {"n_samples": 2},
    "max_sensitivity": {"n_samples": 2},
    "local_lipschitz": {"n_samples": 2},
    "deletion": {"steps": 4},
    "insertion": {"steps": 4},
    "monotonicity": {"steps": 4},
    "monotonicity_correlation": {"steps": 4, "n_samples": 2},
    "faithfulness_correlation": {"subset_size": 16, "n_samples": 3},
    "infidelity": {"n_perturbations": 2},
    "non_sensitivity": {"features_in_step": 36},
    "road": {"percentages": (20, 60)},
    "road_lerf": {"percentages": (20, 60)},
    "road_morf": {"percentages": (20, 60)},
    "sensitivity_n": {"fractions": (0.1, 0.5), "n_samples": 2},
    "model_randomisation": {"layers": 2},
    "random_logit": {"similarity": "spearman"},
}
MODEL_METRICS = sorted(n for n, c in metric_classes().items() if "model" in c.needs)


def update(name, tiny_cnn, maps, x, target, **kw):
    metric = metric_classes()[name](**FAST.get(name, {}))
    explainer = "saliency" if "explainer" in metric.needs else None
    return metric.update(maps, x=x, model=tiny_cnn, target=target, explainer=explainer, **kw)


@pytest.fixture
def batch(images):
    return images[:3], images[:3].abs().sum(1), torch.tensor([0, 1, 2])


def test_every_model_metric_runs_on_the_fixture(tiny_cnn, batch):
    """The cases below fail for the reason they name, not for the settings."""
    x, maps, t = batch
    for name in MODEL_METRICS:
        values = update(name, tiny_cnn, maps, x, t, attributions=x * 0.5)
        assert values.shape == (3,), name


@pytest.mark.parametrize("name", MODEL_METRICS)
def test_an_empty_batch_is_one_sentence(tiny_cnn, batch, name):
    x, maps, t = batch
    with pytest.raises(sl.SaliencelabError, match="batch is empty"):
        update(name, tiny_cnn, maps[:0], x[:0], t[:0])
    with pytest.raises(sl.SaliencelabError, match="batch is empty"):
        update(name, tiny_cnn, maps[:0], x[:0], None)


@pytest.mark.parametrize("name", MODEL_METRICS)
def test_integer_inputs_are_one_sentence(tiny_cnn, batch, name):
    x, maps, t = batch
    pixels = (x.clamp(0, 1) * 255).to(torch.uint8)
    with pytest.raises(sl.SaliencelabError, match=r"torch.uint8.*x.float\(\) / 255"):
        update(name, tiny_cnn, maps, pixels, t)


@pytest.mark.parametrize("name", MODEL_METRICS)
@pytest.mark.parametrize("shape", ["flat", "channels"])
def test_maps_of_another_rank_than_the_images_are_one_sentence(tiny_cnn, batch, name, shape):
    x, maps, t = batch
    bad = maps.flatten(1) if shape == "flat" else x.abs()  # (B, H·W) or (B, C, H, W)
    with pytest.raises(sl.SaliencelabError, match=r"give \(B, H, W\) maps"):
        update(name, tiny_cnn, bad, x, t)


def test_a_single_image_without_batch_axis_does_not_blame_the_first_layer(tiny_cnn):
    """A (3, H, W) image ran as a one-channel (1, H, W) row in the diagnosis, whose first
    convolution then failed: the sentence blamed the first layer for the Linear's error."""
    x = torch.rand(3, 12, 12)
    with pytest.raises(sl.SaliencelabError) as info:
        sl.explain(tiny_cnn, x, "saliency")
    text = str(info.value)
    assert text.startswith("The model cannot take inputs of shape (3, 12, 12)")
    assert "x.unsqueeze(0)" in text


@pytest.mark.parametrize("name", MODEL_METRICS)
def test_float_targets_are_refused_not_truncated(tiny_cnn, batch, name):
    x, maps, _ = batch
    with pytest.raises(sl.SaliencelabError, match="integer class indices"):
        update(name, tiny_cnn, maps, x, torch.tensor([0.5, 1.0, 2.0]))


def test_inputs_the_first_layer_cannot_take_are_one_sentence(tiny_cnn, batch):
    x, maps, t = batch
    gray = x[:, :1]  # one channel for a 3-channel first convolution
    for name, target in (("deletion", t), ("deletion", None), ("max_sensitivity", t)):
        with pytest.raises(sl.SaliencelabError, match="first layer cannot take inputs"):
            update(name, tiny_cnn, maps, gray, target)
    with pytest.raises(sl.SaliencelabError, match="first layer cannot take inputs"):
        sl.evaluate(tiny_cnn, gray, {"mine": maps}, metrics="deletion", references=False)


def test_a_model_bug_is_not_blamed_on_the_inputs(batch):
    """A failure past the first layer propagates as it is."""
    x, maps, t = batch
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(7, 2)
    ).eval()
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as err:
        sl.metrics.get("deletion")(steps=2).update(maps, x=x, model=net, target=t)
    assert not isinstance(err.value, sl.SaliencelabError)


def test_boolean_and_integer_maps_score_as_their_float_values(tiny_cnn, batch):
    x, maps, t = batch
    top = maps > maps.flatten(1).median(1).values[:, None, None]
    for name in ("monotonicity", "deletion", "non_sensitivity"):
        want = update(name, tiny_cnn, top.float(), x, t)
        torch.testing.assert_close(update(name, tiny_cnn, top, x, t), want)
        torch.testing.assert_close(update(name, tiny_cnn, top.long(), x, t), want)


def test_attributions_of_another_shape_are_refused(tiny_cnn, batch):
    x, maps, t = batch
    for bad in (x[:, :1], x[:, :, :6, :6], x.sum(1)):
        with pytest.raises(sl.SaliencelabError, match="give input-space attributions"):
            update("infidelity", tiny_cnn, maps, x, t, attributions=bad)


@pytest.mark.parametrize(
    ("name", "options", "words"),
    [
        ("faithfulness_correlation", {"n_samples": 1}, "at least 2"),
        ("sensitivity_n", {"n_samples": 1}, "at least 2"),
        ("input_invariance", {"shift": "foo"}, "shift of input_invariance"),
        ("input_invariance", {"shift": float("nan")}, "shift of input_invariance"),
        ("aopc_morf", {"perturbation": "uniform", "uniform_range": (1.0, 0.0)}, "low < high"),
        ("monotonicity_correlation", {"uniform_range": (0.0,)}, "uniform_range"),
        # descending: every area's sign flipped (ROAD's MoRF and LeRF below their range 0..1)
        ("road", {"percentages": (50, 20)}, "two increasing numbers"),
        ("road_morf", {"percentages": (20, 20, 50)}, "two increasing numbers"),
        # infinite: Python's OverflowError from the blur's kernel size, or NaN noise
        ("insertion", {"blur_sigma": float("inf")}, "blur_sigma must be a finite positive"),
        ("infidelity", {"std": float("inf")}, "std must be a finite positive"),
        ("max_sensitivity", {"radius": float("inf")}, "radius must be a finite positive"),
    ],
)
def test_bad_options_are_one_sentence_when_built(name, options, words):
    with pytest.raises(sl.SaliencelabError, match=words):
        sl.metrics.get(name)(**options)


@pytest.mark.parametrize(
    ("subsets", "words"),
    [
        (torch.zeros(1, 3, dtype=torch.long), "at least 2 draws"),
        (torch.zeros(4, 3), "give integer unit indices"),
    ],
)
def test_given_subsets_are_checked(tiny_cnn, batch, subsets, words):
    x, maps, t = batch
    metric = sl.metrics.get("faithfulness_correlation")(subset_size=3, subsets=subsets)
    with pytest.raises(sl.SaliencelabError, match=words):
        metric.update(maps, x=x, model=tiny_cnn, target=t)


@pytest.mark.parametrize("name", [None, 3, ["deletion"], ("deletion",)])
def test_a_metric_not_named_by_a_string_is_one_sentence(name):
    """difflib's TypeError, or an unhashable-type one, came out of sl.metrics.get."""
    with pytest.raises(sl.SaliencelabError, match="A metric is named by a string"):
        sl.metrics.get(name)


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [
        ("entropy", "normalised", "yes"),
        ("monotonicity", "absolute", 1),
        ("completeness", "relative", None),
    ],
)
def test_yes_no_options_take_true_or_false(name, option, value):
    """normalised="yes" was taken as true (and "" or None as false) without a word."""
    with pytest.raises(sl.SaliencelabError, match=f"The option {option} of {name} is True or"):
        sl.metrics.get(name)(**{option: value})
    assert sl.metrics.get(name)(**{option: np.True_}).params[option]


def test_a_metric_called_with_its_inputs_by_position_says_how_to_call_it(tiny_cnn, batch):
    x, maps, t = batch
    metric = sl.metrics.get("deletion")(steps=2)
    with pytest.raises(sl.SaliencelabError, match=r"metric\(maps, x=x, model=model"):
        metric(maps, x, tiny_cnn)
    assert metric(maps, x=x, model=tiny_cnn, target=t).n == x.shape[0]
