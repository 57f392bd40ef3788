"""`sl.evaluate` and its results as a first-time user meets them (defects a user review found,
2026-11-23): a map under a reference's name, wrong maps blamed on right masks, tabular inputs
with the default references, masks as a list, unknown metric names in a report, `merge`'s
arguments, `boxes_to_masks` on malformed boxes and top-k's value range with concept influence."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.metrics.base import MetricResult


@pytest.fixture
def shapes_batch():
    data = sl.data.shapes.make(4, seed=0)
    model = sl.load_model("shapes_cnn")
    x = model.preprocess(data)
    ex = sl.explain(model, x, methods=["gradcam", "saliency"])
    return model, x, ex, data


def test_a_map_named_like_a_reference_is_refused_not_scored_as_it(shapes_batch):
    """Was: the user's map replaced the Sobel reference and was flagged `reference: True`."""
    model, x, ex, _ = shapes_batch
    mine = {"sobel": ex["gradcam"].maps}
    with pytest.raises(sl.SaliencelabError, match=r"'sobel' has the name of a reference map"):
        sl.evaluate(model, x, mine, metrics="sparseness")
    # leaving that reference out is the way the message gives
    rep = sl.evaluate(model, x, mine, metrics="sparseness", references=["random"])
    assert [r["reference"] for r in rep.table()] == [False, True]
    direct = sl.evaluate(
        model, x, {"g": ex["gradcam"].maps}, metrics="sparseness", references=False
    )
    assert rep["sobel"]["sparseness"].mean == direct["g"]["sparseness"].mean


def test_the_reference_map_from_sl_explain_keeps_its_name(shapes_batch):
    model, x, _, _ = shapes_batch
    ex = sl.explain(model, x, methods=["gradcam", "sobel"])
    rep = sl.evaluate(model, x, ex, metrics="sparseness")
    sobel = sl.explain(model, x, methods=["sobel"])["sobel"].maps
    expected = sl.evaluate(model, x, {"s": sobel}, metrics="sparseness", references=False)
    assert rep["sobel"]["sparseness"].mean == pytest.approx(expected["s"]["sparseness"].mean)
    assert {r["method"] for r in rep.table() if r["reference"]} == {
        "random",
        "center_gaussian",
        "sobel",
    }


@pytest.mark.parametrize(
    "maps, words",
    [
        (torch.rand(4, 32, 32), "are (32, 32) but the inputs are (64, 64)"),
        (torch.rand(3, 64, 64), "for 3 samples but the inputs have 4"),
        (torch.rand(4, 3, 64, 64), "for inputs of shape"),
    ],
)
def test_wrong_maps_are_named_before_the_masks_are_checked(shapes_batch, maps, words):
    """Was: "The masks have shape (4, 64, 64) but the maps (4, 32, 32)", blaming right masks."""
    model, x, _, data = shapes_batch
    with pytest.raises(sl.SaliencelabError, match=r"^a: ") as err:
        sl.evaluate(model, x, {"a": maps}, metrics="pointing_game", masks=data.masks)
    assert words in str(err.value) and "masks" not in str(err.value)


def test_masks_as_a_list_of_tensors_are_stacked(shapes_batch):
    model, x, ex, data = shapes_batch
    kw = dict(metrics="pointing_game", references=False)
    as_list = sl.evaluate(model, x, ex, masks=list(data.masks), **kw)
    as_tensor = sl.evaluate(model, x, ex, masks=data.masks, **kw)
    for method in ("gradcam", "saliency"):
        a, b = as_list[method]["pointing_game"].values, as_tensor[method]["pointing_game"].values
        assert torch.equal(a, b)
    with pytest.raises(sl.SaliencelabError, match="different shapes"):
        sl.evaluate(model, x, ex, masks=[data.masks[0], data.masks[1, :8]], **kw)
    arrays = [m.numpy() for m in data.masks]  # torch warned "extremely slow" on such a list
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_arrays = sl.evaluate(model, x, ex, masks=arrays, **kw)
    assert torch.equal(as_arrays["gradcam"]["pointing_game"].values, b)
    with pytest.raises(sl.SaliencelabError, match="different shapes"):
        sl.evaluate(model, x, ex, masks=[arrays[0], arrays[1][:8]], **kw)
    with pytest.raises(sl.SaliencelabError, match="must be a .B, H, W. tensor"):
        sl.evaluate(model, x, ex, masks={"a": 1}, **kw)


def test_tabular_inputs_get_no_reference_maps_by_default():
    """The README: complexity metrics take (B, F) feature maps; the image references do not
    apply, so the default skips them and naming one says references=False."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x = torch.rand(4, 5)
    ex = sl.explain(lin, x, methods="saliency")
    rep = sl.evaluate(lin, x, ex, metrics="sparseness")
    assert rep.methods == ["saliency"] and rep.references == ()
    gini = sl.metrics.get("sparseness")()(ex["saliency"].maps)
    assert torch.allclose(rep["saliency"]["sparseness"].values, gini.values)
    with pytest.raises(sl.SaliencelabError, match="references=False"):
        sl.evaluate(lin, x, ex, metrics="sparseness", references=["sobel"])
    for name in ("random", "center_gaussian", "sobel"):  # as methods: what to use instead
        with pytest.raises(sl.SaliencelabError, match=r"got inputs of shape \(4, 5\); .*saliency"):
            sl.explain(lin, x, methods=name)


def test_unknown_metric_and_curve_names_are_one_sentence(shapes_batch):
    model, x, ex, data = shapes_batch
    rep = sl.evaluate(
        model, x, ex, metrics={"deletion": {"steps": 4}, "pointing_game": {}}, masks=data.masks
    )
    with pytest.raises(sl.SaliencelabError, match="no metric 'delet'.*Did you mean: deletion"):
        rep["gradcam"]["delet"]
    with pytest.raises(sl.SaliencelabError, match="no curve-based metric 'pointing_game'"):
        rep.curves["gradcam"]["pointing_game"]
    with pytest.raises(sl.SaliencelabError, match="no method 'gradcm'.*Did you mean: gradcam"):
        rep.curves["gradcm"]
    assert rep.curves["gradcam"]["deletion"].shape == (4, 5)  # steps + 1 points
    assert "delet" not in rep["gradcam"] and rep["gradcam"].get("delet") is None


def test_merge_takes_a_list_several_results_or_a_generator():
    a = sl.metrics.get("sparseness")()(torch.rand(3, 8, 8))
    b = sl.metrics.get("sparseness")()(torch.rand(2, 8, 8))
    ref = MetricResult.merge([a, b])
    assert torch.equal(ref.values, torch.cat([a.values, b.values]))
    for merged in (MetricResult.merge(a, b), MetricResult.merge(r for r in (a, b))):
        assert torch.equal(merged.values, ref.values) and merged.metric == "sparseness"
    assert torch.equal(MetricResult.merge(a).values, a.values)
    with pytest.raises(sl.SaliencelabError, match="got a int among them"):
        MetricResult.merge([a, 3])
    with pytest.raises(sl.SaliencelabError, match="not int"):
        MetricResult.merge(3)
    with pytest.raises(sl.SaliencelabError, match="Nothing to merge"):
        MetricResult.merge([])


def test_boxes_to_masks_refuses_boxes_that_are_not_four_numbers():
    with pytest.raises(sl.SaliencelabError, match="A box has 3 numbers"):
        sl.metrics.boxes_to_masks([[1, 2, 3]], (8, 8))
    with pytest.raises(sl.SaliencelabError, match="Boxes must be"):
        sl.metrics.boxes_to_masks(["a"], (8, 8))
    masks = sl.metrics.boxes_to_masks([[[1, 2, 3, 4]], []], (8, 8))  # no box: an empty mask
    assert masks[0].sum() == 4 and not masks[1].any()


def test_top_k_with_concept_influence_declares_an_unbounded_range():
    """value = share of the top k in the mask ÷ the mask's share of the image: 10.24 here
    (k = 50 pixels all inside a 100-pixel mask on 32 × 32 maps: 1 ÷ (100 / 1024))."""
    maps = torch.zeros(1, 32, 32)
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, :10, :10] = True
    maps[0, :5, :10] = 1 + torch.arange(50.0).view(5, 10)  # the 50 highest, inside the mask
    plain = sl.metrics.get("top_k_intersection")(k=50)(maps, masks=masks)
    ratio = sl.metrics.get("top_k_intersection")(k=50, concept_influence=True)(maps, masks=masks)
    assert plain.values.item() == 1.0 and plain.value_range == (0.0, 1.0)
    assert ratio.values.item() == pytest.approx(1024 / 100)
    lo, hi = ratio.value_range
    assert lo == 0.0 and hi == float("inf") and lo <= ratio.values.item() <= hi


def test_empty_masks_are_named_in_a_warning(shapes_batch):
    """Localisation metrics are NaN on an empty mask and n drops: a warning names those samples
    (the CLI names the images itself, without this warning)."""
    import warnings

    from saliencelab.metrics import EmptyMaskWarning

    model, x, ex, data = shapes_batch
    masks = data.masks.clone()
    masks[[1, 3]] = False
    with pytest.warns(EmptyMaskWarning, match=r"2 of 4 masks are empty \(samples 1, 3\)"):
        rep = sl.evaluate(model, x, ex, metrics="pointing_game", masks=masks, references=False)
    assert rep["gradcam"]["pointing_game"].n == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full masks, or no localisation metric: no warning
        sl.evaluate(model, x, ex, metrics="pointing_game", masks=data.masks, references=False)
        sl.evaluate(model, x, ex, metrics="sparseness", masks=masks, references=False)
    # one warning per call, however many metrics and maps score the masks
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sl.evaluate(model, x, ex, metrics=["pointing_game", "relevance_mass"], masks=masks)
    assert [type(w.message) for w in seen] == [EmptyMaskWarning]
    # a metric object used alone says it too, pointing at the caller's line
    maps = ex["gradcam"].maps
    for metric in (sl.metrics.get("pointing_game")(), sl.metrics.get("relevance_rank")()):
        with pytest.warns(EmptyMaskWarning, match=r"2 of 4 masks are empty") as got:
            values = metric.update(maps, masks=masks)
        assert got[0].filename == __file__
        assert values[[1, 3]].isnan().all() and values[[0, 2]].isfinite().all()
