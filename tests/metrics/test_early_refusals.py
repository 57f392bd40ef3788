"""Requests refused before any model work (a later refusal loses the metrics already run),
options of a metric object refused in one sentence (not Python's TypeError), soft or NaN masks
(not "nonzero = object"), a chunk size that is not a positive int, one image without a batch
axis named as such, and ties in `EvalReport.best`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import saliencelab as sl


class Counted(nn.Module):
    """A tiny CNN that counts its forwards (to tell an early refusal from a late one)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.conv(x).relu().mean((2, 3)))


@pytest.fixture
def small():
    torch.manual_seed(0)
    net = Counted().eval()
    x = torch.rand(2, 3, 8, 8)
    maps = {"saliency": sl.explain(net, x, methods="saliency")["saliency"]}
    net.calls = 0
    return net, x, maps


QUADRANT = torch.zeros(2, 8, 8, dtype=torch.bool)
QUADRANT[:, :4, :4] = True
NOT_QUADRANT = torch.zeros(2, 8, 8, dtype=torch.bool)
NOT_QUADRANT[:, 1:3, 1:3] = True


@pytest.mark.parametrize(
    "metric, options, masks, words",
    [
        ("top_k_intersection", {}, QUADRANT, r"k=1000 is more than the 64 pixels"),
        ("faithfulness_correlation", {}, None, r"subset_size 224 .* not less than the 64"),
        # every subset the whole image: no correlation (was NaN for every sample, n = 0)
        ("faithfulness_correlation", {"subset_size": 64}, None, r"give a subset_size below 64"),
        ("aopc_morf", {"patch_size": 20}, None, r"patch_size 20 of aopc_morf is larger"),
        ("random_logit", {}, None, r"smaller than the 11×11 SSIM window"),
        ("model_randomisation", {"similarity": "ssim"}, None, r"smaller than the 11×11 SSIM"),
        ("model_randomisation", {"similarity": "hog"}, None, r"too small for HOG blocks"),
        ("focus", {}, NOT_QUADRANT, r"union of whole quadrants"),
        ("deletion", {"baseline": torch.zeros(5)}, None, r"does not broadcast"),
        ("completeness", {"baseline": torch.zeros(5)}, None, r"does not broadcast"),
        ("non_sensitivity", {"baseline": torch.zeros(5)}, None, r"does not broadcast"),
        ("input_invariance", {"shift": [1.0, 2.0]}, None, r"shift has 2 values"),
        # steps that add no pixel: counted as increments that did not decrease, lifting the score
        ("monotonicity", {"steps": 65}, None, r"steps=65 of monotonicity is more than the 64"),
        ("monotonicity_correlation", {"steps": 65}, None, r"give steps of at most 64"),
    ],
)
def test_options_that_do_not_fit_the_inputs_fail_before_any_model_work(
    small, metric, options, masks, words
):
    """Was: each of these was found in the metric's `score`, after the metrics before it (here
    deletion) had run the model for every method and reference map, all of it lost."""
    net, x, maps = small
    with pytest.raises(sl.SaliencelabError, match=words):
        sl.evaluate(net, x, maps, metrics={"deletion": {}, metric: options}, masks=masks)
    assert net.calls == 0


def test_the_fitting_options_still_score(small):
    net, x, maps = small
    rep = sl.evaluate(
        net,
        x,
        maps,
        metrics={
            "top_k_intersection": {"k": 0.25},
            "faithfulness_correlation": {"subset_size": 8, "n_samples": 4},
            "aopc_morf": {"patch_size": 4},
            "random_logit": {"similarity_options": {"window": 7}},
            "focus": {},
        },
        masks=QUADRANT,
        references=False,
    )
    assert all(r["n"] == 2 for r in rep.table())


def test_a_metric_object_checks_the_same_options_when_it_scores(small):
    net, x, maps = small
    m = sl.metrics.get("top_k_intersection")()
    with pytest.raises(sl.SaliencelabError, match="k=1000 is more than the 64 pixels"):
        m.update(maps["saliency"].maps, masks=QUADRANT)
    f = sl.metrics.get("focus")()
    with pytest.raises(sl.SaliencelabError, match="union of whole quadrants"):
        f.update(maps["saliency"].maps, masks=NOT_QUADRANT)
    assert f.update(maps["saliency"].maps, masks=QUADRANT).shape == (2,)


def test_random_logit_num_classes_beyond_the_models_labels_is_refused_first():
    """Was: drawn classes beyond the model's were found out of range after other metrics ran."""
    data = sl.data.shapes.make(2, seed=0)
    model = sl.load_model("shapes_cnn")
    x = model.preprocess(data)
    ex = sl.explain(model, x, methods="saliency")
    with pytest.raises(sl.SaliencelabError, match="num_classes=9 is more than the model's 4"):
        sl.evaluate(model, x, ex, metrics={"deletion": {}, "random_logit": {"num_classes": 9}})


@pytest.mark.parametrize("target", [None, 2, [0, 2], "tensor"])
def test_random_logit_num_classes_below_a_class_explained_is_refused_first(small, target):
    """Was: 'targets must be classes in [0, 2)' after deletion had run for every map."""
    net, x, maps = small
    if target == "tensor":
        target = torch.tensor([2, 0])
    if target is None:  # the classes the explanation records
        maps = sl.explain(net, x, methods="saliency", target=[2, 1])
        net.calls = 0
    request = {"deletion": {}, "random_logit": {"num_classes": 2, "similarity": "spearman"}}
    with pytest.raises(sl.SaliencelabError, match=r"explain class 2, beyond num_classes=2"):
        sl.evaluate(net, x, maps, metrics=request, target=target)
    assert net.calls == 0


@pytest.mark.parametrize(
    "args, kwargs, words",
    [
        ((), {"stepz": 5}, r"The metric deletion has no option 'stepz'\. Did you mean: steps\?"),
        ((), {"bogus": 1}, r"no option 'bogus'\. Its options: baseline, score, steps\."),
        ((5, 0.0, "logit", 1), {}, r"takes its options by keyword \(steps, baseline, score\)"),
    ],
)
def test_a_metric_objects_unknown_option_is_one_sentence(args, kwargs, words):
    """Was: Python's TypeError ("__init__() got an unexpected keyword argument"), where
    `sl.evaluate` says the same in one sentence with the closest name."""
    with pytest.raises(sl.SaliencelabError, match=words):
        sl.metrics.get("deletion")(*args, **kwargs)
    with pytest.raises(sl.SaliencelabError, match="The metric sparseness takes no options"):
        sl.metrics.get("sparseness")(normalise=True)


def test_metric_objects_keep_their_signature_and_positional_options():
    import inspect

    cls = sl.metrics.get("deletion")
    assert list(inspect.signature(cls.__init__).parameters) == [
        "self",
        "steps",
        "baseline",
        "score",
    ]
    assert cls(7).steps == 7


@pytest.mark.parametrize(
    "masks, words",
    [
        (torch.full((2, 8, 8), 0.5), r"values other than 0 and 1 \(e\.g\. 0\.5\)"),
        (torch.full((2, 8, 8), float("nan")), r"NaN, infinite or complex"),
        # integer masks too (were read as mask != 0): label maps, 0/255 images
        (torch.full((2, 8, 8), 2), r"values other than 0 and 1 \(e\.g\. 2\).*masks == k"),
        (torch.full((2, 8, 8), 255, dtype=torch.int64), r"e\.g\. 255\)"),  # uint8 0/255 is fine
    ],
)
def test_soft_or_nan_masks_are_refused(small, masks, words):
    """Was: every nonzero value counted as object, so a soft (or NaN) mask covered the image and
    the pointing game scored 1 for any map."""
    net, x, maps = small
    with pytest.raises(sl.SaliencelabError, match=words):
        sl.evaluate(net, x, maps, metrics="pointing_game", masks=masks)
    with pytest.raises(sl.SaliencelabError, match=words):
        sl.metrics.get("pointing_game")()(maps["saliency"].maps, masks=masks)


def test_0_1_float_and_integer_masks_still_score_as_bool(small):
    net, x, maps = small
    rm = sl.metrics.get("relevance_mass")()
    m = maps["saliency"].maps
    want = rm(m, masks=QUADRANT).values
    assert torch.equal(rm(m, masks=QUADRANT.float()).values, want)
    assert torch.equal(rm(m, masks=QUADRANT.to(torch.uint8) * 255).values, want)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_a_chunk_size_that_is_not_a_positive_int_is_refused(small, chunk_size):
    """Was: accepted (the engine read 0 and -3 as one row per chunk); sl.explain refuses them."""
    net, x, maps = small
    with pytest.raises(sl.SaliencelabError, match="chunk_size must be None or a positive int"):
        sl.evaluate(net, x, maps, metrics="deletion", chunk_size=chunk_size)
    assert net.calls == 0


@pytest.mark.parametrize("maps", [torch.rand(8, 8), torch.rand(1, 8, 8)])
def test_one_image_without_a_batch_axis_is_named_as_such(small, maps):
    """Was: "The maps are for 1 samples but the inputs have 3" (the channels read as the
    batch)."""
    net, x, _ = small
    with pytest.raises(sl.SaliencelabError, match=r"\(3, 8, 8\), one image without a batch axis"):
        sl.metrics.get("deletion")()(maps, x=x[0], model=net)
    with pytest.raises(sl.SaliencelabError, match="one image without a batch axis"):
        sl.evaluate(net, x[0], {"m": maps}, metrics="deletion", references=False)


def test_best_of_tied_methods_is_the_first_in_the_reports_order(small):
    """Was: the tie went to the alphabetically last name for "higher" (`max` over (mean, name)
    pairs) and the first for "lower": three methods all scoring 1 on the pointing game gave
    "saliency" over "gradcam" listed first."""
    net, x, _ = small
    flat = torch.ones(2, 8, 8)
    maps = {"zeta": flat, "alpha": flat.clone(), "mid": flat.clone()}
    rep = sl.evaluate(
        net, x, maps, metrics=["pointing_game", "entropy"], masks=QUADRANT, references=False
    )
    assert rep.best("pointing_game") == "zeta"  # higher is better
    assert rep.best("entropy") == "zeta"  # lower is better


def test_refusals_say_what_to_give_instead(small):
    """Each sentence names the fix (were: what was wrong only)."""
    net, x, maps = small
    m = maps["saliency"].maps
    cases = [
        (lambda: sl.evaluate(net, x, {}, metrics="sparseness"), r"dict of at least one"),
        (lambda: sl.metrics.get("sparseness")()(m.numpy()), r"torch\.from_numpy\(maps\)"),
        (lambda: sl.explain(net, x, methods="saliency", target=np.array([0, 1])), "as_tensor"),
        (lambda: sl.explain(net, x, methods="saliency", target=99), "target=None for each"),
        (lambda: sl.evaluate(net, x, maps, metrics="deletion", target=99), "target=None"),
    ]
    for call, words in cases:
        with pytest.raises(sl.SaliencelabError, match=words):
            call()


def test_monotonicity_steps_that_add_no_pixel_are_refused_by_a_metric_object(small):
    """On 8×8 images, steps=200 scored monotonicity_correlation 0.94 for random maps (empty groups
    entered the correlation as tied points); steps=1 gave NaN for every sample, silently."""
    net, x, maps = small
    for name in ("monotonicity", "monotonicity_correlation"):
        net.calls = 0
        metric = sl.metrics.get(name)(steps=200)
        with pytest.raises(sl.SaliencelabError, match="more than the 64 pixels"):
            metric(maps["saliency"].maps, x=x, model=net)
        assert net.calls == 0  # refused before the forward that finds the predicted class
        with pytest.raises(sl.SaliencelabError, match="steps must be at least 2"):
            sl.metrics.get(name)(steps=1)
        r = sl.metrics.get(name)(steps=64)(maps["saliency"].maps, x=x, model=net)
        assert r.n == 2  # as many steps as pixels: each adds one
