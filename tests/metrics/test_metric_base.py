"""The metric contract (update / compute / reset), sl.evaluate, EvalReport and the shared stats."""

from __future__ import annotations

import csv
import inspect
import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

import saliencelab as sl
from saliencelab.metrics import Metric, MetricResult, Scores, register_metric
from saliencelab.metrics.base import _METRICS, all_finite
from saliencelab.metrics.stats import (
    bootstrap_ci,
    pearson,
    pixel_order,
    ranks,
    spearman,
    trapezoid,
)


class MeanScore(Metric):
    """Test metric: the target's probability at x scaled by the map's mean (needs the model)."""

    name = "_test_mean_score"
    direction = "higher"
    value_range = (0.0, 1.0)
    needs = ("model",)

    def __init__(self, steps: int = 3) -> None:
        super().__init__(steps=steps)

    def score(self, batch):
        b = batch.batch
        k = self.steps
        p = batch.scores(
            b * k,
            lambda r: batch.x[r // k] * (r % k + 1)[:, None, None, None] / k,
            lambda r: r // k,
        )
        curves = p.view(b, k)
        return Scores(curves.mean(1), curves, torch.linspace(0, 1, k))


class MapMax(Metric):
    name = "_test_map_max"
    direction = "lower"
    value_range = (-math.inf, math.inf)

    def score(self, batch):
        return Scores(batch.maps.flatten(1).amax(1))


@pytest.fixture(autouse=True)
def test_metrics():
    for cls in (MeanScore, MapMax):
        register_metric(cls)
    yield
    for cls in (MeanScore, MapMax):
        _METRICS.pop(cls.name, None)


def test_ranks_and_correlations_match_scipy():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=g).double()  # many ties
    b = torch.randn(3, 40, generator=g).double()
    for i in range(3):
        assert np.allclose(ranks(a[i]).numpy(), scipy.stats.rankdata(a[i].numpy()))
        assert math.isclose(
            float(spearman(a[i], b[i])), scipy.stats.spearmanr(a[i], b[i]).statistic, rel_tol=1e-9
        )
        assert math.isclose(
            float(pearson(a[i], b[i])), scipy.stats.pearsonr(a[i], b[i]).statistic, rel_tol=1e-9
        )
    assert torch.isnan(pearson(torch.ones(5), torch.randn(5)))


def test_pixel_order_breaks_ties_by_position():
    maps = torch.tensor([[[1.0, 3.0], [3.0, 0.0]]])
    assert pixel_order(maps).tolist() == [[1, 2, 0, 3]]
    assert pixel_order(maps, descending=False).tolist() == [[3, 0, 1, 2]]


def test_trapezoid_and_bootstrap():
    assert math.isclose(float(trapezoid(torch.tensor([0.0, 1.0]))), 0.5)
    assert math.isclose(float(trapezoid(torch.tensor([1.0, 1.0, 1.0]))), 1.0)
    v = torch.randn(200, generator=torch.Generator().manual_seed(3)) + 2
    lo, hi = bootstrap_ci(v)
    assert lo < float(v.mean()) < hi
    se = float(v.std()) / math.sqrt(200)  # the normal interval is close for n = 200
    assert abs((hi - lo) - 2 * 1.96 * se) < 0.2 * (hi - lo)
    assert all(math.isnan(c) for c in bootstrap_ci(torch.tensor([1.0])))


def test_update_compute_reset_accumulate(tiny_cnn, images):
    maps = images.sum(1)
    m = MeanScore(steps=4)
    first = m.update(maps[:2], x=images[:2], model=tiny_cnn)
    m.update(maps[2:], x=images[2:], model=tiny_cnn)
    r = m.compute()
    whole = MeanScore(steps=4)(maps, x=images, model=tiny_cnn)
    assert torch.allclose(r.values, whole.values)
    assert torch.equal(r.values[:2], first)
    assert r.curves.shape == (4, 4) and r.forwards == 4.0
    assert r.params == {"steps": 4} and r.direction == "higher"
    merged = MetricResult.merge(
        [
            MeanScore(steps=4)(maps[:1], x=images[:1], model=tiny_cnn),
            MeanScore(steps=4)(maps[1:], x=images[1:], model=tiny_cnn),
        ]
    )
    assert torch.allclose(merged.values, whole.values)
    m.reset()
    with pytest.raises(sl.SaliencelabError, match="before any update"):
        m.compute()


def test_nan_values_are_skipped_in_the_summary():
    r = MetricResult("x", torch.tensor([1.0, math.nan, 3.0]), "higher", (0, 4))
    assert r.n == 2 and r.mean == 2.0


def test_clear_errors(tiny_cnn, images):
    maps = images.sum(1)
    with pytest.raises(sl.SaliencelabError, match="needs model"):
        MeanScore()(maps, x=images)
    with pytest.raises(sl.SaliencelabError, match="4 samples but the inputs have 2"):
        MeanScore()(maps, x=images[:2], model=tiny_cnn)
    with pytest.raises(sl.SaliencelabError, match="input resolution"):
        MeanScore()(maps[:, :6, :6], x=images, model=tiny_cnn)
    with pytest.raises(sl.SaliencelabError, match="NaN"):
        MapMax()(torch.full((1, 3, 3), math.nan))
    with pytest.raises(sl.SaliencelabError, match="No metric named '_test_mean_scor'"):
        sl.metrics.get("_test_mean_scor")


def test_evaluate_report(tiny_cnn, images, tmp_path):
    ex = sl.explain(tiny_cnn, images, methods=["saliency", "gradcam"])
    rep = sl.evaluate(tiny_cnn, images, ex, metrics=["_test_mean_score", "_test_map_max"], steps=2)
    assert rep.methods == ["saliency", "gradcam", "random", "center_gaussian", "sobel"]
    assert rep.references == ("random", "center_gaussian", "sobel")
    r = rep["gradcam"]["_test_map_max"]
    assert torch.allclose(r.values, ex["gradcam"].maps.flatten(1).amax(1))
    assert rep["saliency"]["_test_mean_score"].params == {"steps": 2}
    assert rep.curves["saliency"]["_test_mean_score"].shape == (4, 2)
    assert "_test_map_max" not in rep.curves["saliency"]
    rows = rep.table()
    assert len(rows) == 10 and {"method", "metric", "mean", "ci_low", "ci_high"} <= set(rows[0])
    assert "center_gaussian (ref)" in str(rep)
    with open(rep.to_csv(tmp_path / "m.csv")) as f:
        assert len(list(csv.DictReader(f))) == 10
    data = json.loads(rep.to_json(tmp_path / "m.json").read_text())
    assert len(data["results"]["gradcam"]["_test_map_max"]["values"]) == 4
    # The map maximum of the constant-free Gaussian reference is 1 at the centre pixel or close.
    assert rep.best("_test_map_max", include_references=True) in rep.methods


def test_evaluate_dict_of_maps_and_options(tiny_cnn, images):
    maps = {"mine": images.abs().sum(1)}
    rep = sl.evaluate(
        tiny_cnn, images, maps, metrics={"_test_mean_score": {"steps": 3}}, references=False
    )
    assert rep.methods == ["mine"] and rep.references == ()
    probs = tiny_cnn(images).softmax(-1)
    pred = probs.argmax(-1)
    scale = torch.tensor([1 / 3, 2 / 3, 1.0])
    want = torch.stack(
        [tiny_cnn(images * s).softmax(-1).gather(1, pred[:, None])[:, 0] for s in scale], 1
    ).mean(1)
    assert torch.allclose(rep["mine"]["_test_mean_score"].values, want, atol=1e-6)
    with pytest.raises(sl.SaliencelabError, match="no option 'step'"):
        sl.evaluate(tiny_cnn, images, maps, metrics={"_test_mean_score": {"step": 3}})
    with pytest.raises(sl.SaliencelabError, match="No requested metric takes the option"):
        sl.evaluate(tiny_cnn, images, maps, metrics=["_test_map_max"], steps=3)


def test_reference_maps(tiny_cnn, images):
    ex = sl.explain(tiny_cnn, images, methods=["random", "center_gaussian", "sobel"])
    g = ex["center_gaussian"].maps[0]
    assert g.shape == (12, 12) and torch.allclose(g, g.flip(0)) and torch.allclose(g, g.flip(1))
    assert torch.equal(
        ex["random"].maps, sl.explain(tiny_cnn, images, methods="random")["random"].maps
    )
    # Sobel of a vertical step edge: nonzero only next to the edge.
    step = torch.zeros(1, 3, 6, 6)
    step[..., 3:] = 1.0
    s = sl.explain(tiny_cnn, step, methods="sobel")["sobel"].maps[0]
    assert (s[:, 2:4] > 0).all() and (s[:, :2] == 0).all() and (s[:, 4:] == 0).all()
    assert torch.allclose(s[:, 2], torch.full((6,), 4.0))


def test_evaluate_recomputes_registered_methods(tiny_cnn, images):
    """Metrics that re-explain get an explainer for every registered method, with its options."""
    ex = sl.explain(tiny_cnn, images[:2], methods={"smoothgrad": {"n_samples": 3}})
    rep = sl.evaluate(
        tiny_cnn, images[:2], ex, metrics={"max_sensitivity": {"n_samples": 2}}, references=False
    )
    r = rep["smoothgrad"]["max_sensitivity"]
    assert r.n == 2 and r.passes == 2 * 3  # 2 noisy copies, each explained with 3 noise samples
    with pytest.raises(sl.SaliencelabError, match="not a registered method"):
        sl.evaluate(
            tiny_cnn, images[:2], {"mine": ex["smoothgrad"].maps}, metrics="max_sensitivity"
        )


def test_evaluate_takes_the_explainer_of_maps_it_cannot_recompute(tiny_cnn, images):
    """explainer=: one for every map, or a dict by map name; the same values as the map's own
    registered method."""
    x = images[:2]
    ex = sl.explain(tiny_cnn, x, methods={"smoothgrad": {"n_samples": 3}})
    metrics = {"max_sensitivity": {"n_samples": 2}}
    own = sl.evaluate(tiny_cnn, x, ex, metrics, references=False)["smoothgrad"]
    maps = {"mine": ex["smoothgrad"].maps}
    smooth = sl.metrics.Explainer("smoothgrad", {"n_samples": 3})
    for explainer in (smooth, {"mine": smooth}):
        r = sl.evaluate(tiny_cnn, x, maps, metrics, references=False, explainer=explainer)
        torch.testing.assert_close(
            r["mine"]["max_sensitivity"].values, own["max_sensitivity"].values
        )
        assert r["mine"]["max_sensitivity"].passes == 2 * 3
    by_name = sl.evaluate(tiny_cnn, x, maps, metrics, references=False, explainer="saliency")
    assert by_name["mine"]["max_sensitivity"].passes == 2
    with pytest.raises(sl.SaliencelabError, match="names 'other', which the explanation"):
        sl.evaluate(tiny_cnn, x, maps, metrics, explainer={"other": "saliency"})
    with pytest.raises(sl.SaliencelabError, match="not function .for 'mine'"):
        sl.evaluate(tiny_cnn, x, maps, metrics, explainer=lambda m, x, t: x)
    with pytest.raises(sl.SaliencelabError, match="Unknown method 'salency'"):
        sl.evaluate(tiny_cnn, x, maps, metrics, explainer="salency")
    with pytest.raises(sl.SaliencelabError, match="explainer=\\{'mine': 'saliency'\\}"):
        sl.evaluate(tiny_cnn, x, maps, metrics)


def test_an_undefined_interval_prints_as_n_a(tiny_cnn, images):
    rep = sl.evaluate(tiny_cnn, images[:1], {"mine": images[:1].sum(1)}, "_test_map_max")
    assert "n/a" in str(rep) and "nan" not in str(rep)
    assert "[" in str(sl.evaluate(tiny_cnn, images, {"mine": images.sum(1)}, "_test_map_max"))


def _forwards(net):
    """A list that records the rows of every forward of `net`, and the hook's handle."""
    rows: list[int] = []
    return rows, net.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))


@pytest.mark.parametrize(
    "metrics,kw,words",
    [
        ({"deletion": {"steps": 0}}, {}, "steps must be a positive integer for deletion"),
        ({"insertion": {"blur_sigma": 0}}, {}, "blur_sigma"),
        ({"aopc_morf": {"perturbation": "blur"}}, {}, "perturbation"),
        ({"faithfulness_correlation": {"unit": "channel"}}, {}, "unit"),
        ({"road": {"percentages": (50,)}}, {}, "percentages"),
        ({"infidelity": {"std": -1.0}}, {}, "std"),
        ({"monotonicity_correlation": {"eps": 0}}, {}, "eps"),
        ({"sensitivity_n": {"n_samples": 0}}, {}, "n_samples"),
        ({"model_randomisation": {"layers": 0}}, {}, "layers"),
        ({"model_randomisation": {"similarity_options": {"windw": 7}}}, {}, "similarity_options"),
        ({"random_logit": {"num_classes": 1}}, {}, "num_classes"),
        ({"deletion": {}, "model_randomisation": {"layers": 99}}, {}, "more stages than"),
        ({"model_randomisation": {"layers": ["fc", "nope"]}}, {}, "nope"),
        ({"deletion": {}, "pointing_game": {}}, {}, "needs masks"),
        ("deletion,pointing_game", {"masks": torch.ones(4, 6, 12)}, "masks have shape"),
        ("deletion", {"references": ["sobel", "edges"]}, "No reference map 'edges'"),
    ],
)
def test_evaluate_checks_the_request_before_any_model_work(tiny_cnn, images, metrics, kw, words):
    """Bad option values, a missing mask or a bad reference name fail before sl.evaluate runs
    the model or explains anything (the metric objects check their options when built)."""
    ex = sl.explain(tiny_cnn, images, methods="saliency", target=0)
    rows, handle = _forwards(tiny_cnn)
    try:
        with pytest.raises(sl.SaliencelabError, match=words) as err:
            sl.evaluate(tiny_cnn, images, ex, metrics=metrics, **kw)
    finally:
        handle.remove()
    assert rows == [] and "\n" not in str(err.value)


def test_report_is_a_mapping(tiny_cnn, images):
    """`in` and `.get` answer (Mapping's own catch KeyError, and the report's [] raises one
    sentence instead); `best` of a metric not scored says so."""
    rep = sl.evaluate(tiny_cnn, images, {"mine": images.abs().sum(1)}, metrics="_test_map_max")
    assert "mine" in rep and "gradcam" not in rep
    assert rep.get("gradcam") is None and rep.get("gradcam", {}) == {}
    assert rep.get("mine") is rep["mine"] and dict(rep)["mine"] is rep["mine"]
    with pytest.raises(sl.SaliencelabError, match="no method 'gradcam'"):
        rep["gradcam"]
    with pytest.raises(sl.SaliencelabError, match="no metric 'deletion'; it scored _test_map_max"):
        rep.best("deletion")


@pytest.mark.parametrize("labels", [None, ["a", "b", "c", "d", "e"]])
@pytest.mark.parametrize("bad", [99, -5])
def test_a_target_out_of_range_is_one_sentence(tiny_cnn, images, labels, bad):
    """A per-sample tensor of classes (no forward spent resolving it) is checked against the
    model's labels when it has them, else where the scores are read."""
    model = sl.Model(tiny_cnn, labels=labels)
    target = torch.tensor([0, 1, 2, bad])
    with pytest.raises(sl.SaliencelabError, match=f"target class {bad} is out of range") as err:
        sl.evaluate(model, images, {"m": images.abs().sum(1)}, metrics="deletion", target=target)
    assert "\n" not in str(err.value)
    with pytest.raises(sl.SaliencelabError, match="out of range"):
        sl.metrics.get("completeness")()(images.sum(1), x=images, model=model, target=target)


@pytest.mark.parametrize("target", [None, torch.tensor([3, 1, 4, 1])])
def test_the_target_classes_are_read_once_per_batch(monkeypatch, tiny_cnn, images, target):
    """make_batch's check of the classes, the metric's check for class-less maps and random
    logit's range check share one read of the target's (min, max)."""
    import saliencelab.metrics.base as base

    reads = []

    def counted(t):
        reads.append(t.clone())
        return sl.core.targets.class_bounds(t)

    monkeypatch.setattr(base, "class_bounds", counted)
    metric = sl.metrics.get("random_logit")(similarity="spearman")
    metric(images.abs().sum(1), x=images, model=tiny_cnn, target=target, explainer="saliency")
    assert len(reads) == 1
    expected = target if target is not None else tiny_cnn.eval()(images).argmax(1)
    assert torch.equal(reads[0], expected)
    batch = base.make_batch(images.sum(1), x=images, model=tiny_cnn, target=target)
    lo, hi = batch.target_bounds()
    assert (lo, hi) == (int(expected.min()), int(expected.max()))
    channel = torch.full((4,), -1)  # an Attribution's target of a channel: no class
    batch = base.make_batch(images.sum(1), x=images, model=tiny_cnn, target=channel)
    assert batch.target_bounds() == (-1, -1)
    with pytest.raises(sl.SaliencelabError, match="class"):
        sl.metrics.get("deletion")()(images.sum(1), x=images, model=tiny_cnn, target=channel)


def test_one_map_without_batch_axis_says_so(tiny_cnn, images):
    with pytest.raises(sl.SaliencelabError, match=r"one map without a batch axis.*unsqueeze"):
        sl.metrics.get("deletion")()(images[0, 0], x=images, model=tiny_cnn)


def test_evaluate_needs_registered_methods_before_any_model_work(tiny_cnn, images):
    rows, handle = _forwards(tiny_cnn)
    try:
        with pytest.raises(sl.SaliencelabError, match="'mine' is not a registered method"):
            sl.evaluate(tiny_cnn, images, {"mine": images.sum(1)}, metrics="max_sensitivity")
    finally:
        handle.remove()
    assert rows == []


def test_references_take_a_name_or_comma_separated_names(tiny_cnn, images):
    maps = {"mine": images.abs().sum(1)}
    rep = sl.evaluate(tiny_cnn, images, maps, metrics="_test_map_max", references="sobel")
    assert rep.references == ("sobel",) and rep.methods == ["mine", "sobel"]
    rep = sl.evaluate(tiny_cnn, images, maps, metrics="_test_map_max", references="sobel, random")
    assert rep.references == ("sobel", "random")
    rep = sl.evaluate(tiny_cnn, images, maps, metrics="_test_map_max", references=["random"])
    assert rep.references == ("random",)
    with pytest.raises(sl.SaliencelabError, match="No reference map 'yes'"):
        sl.evaluate(tiny_cnn, images, maps, metrics="_test_map_max", references="yes")
    with pytest.raises(sl.SaliencelabError, match="references must be True, False"):
        sl.evaluate(tiny_cnn, images, maps, metrics="_test_map_max", references=1)


def test_a_function_as_explainer_is_refused_in_one_sentence(tiny_cnn, images):
    """The documented explainer is a registered method's name or an sl.metrics.Explainer; a
    plain function gets one sentence saying so (it was an AttributeError), before any pass."""
    maps = images.abs().sum(1)

    def mine(model, x, target=None):
        return x.abs().sum(1)

    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    rows, handle = _forwards(tiny_cnn)
    try:
        for name, options in [("model_randomisation", {}), ("max_sensitivity", {"n_samples": 2})]:
            with pytest.raises(sl.SaliencelabError, match="method name") as err:
                sl.metrics.get(name)(**options)(maps, x=images, model=tiny_cnn, explainer=mine)
            msg = str(err.value)
            assert "sl.metrics.Explainer" in msg and "\n" not in msg and msg.endswith(".")
    finally:
        handle.remove()
    assert rows == []
    assert all(torch.equal(before[k], v) for k, v in tiny_cnn.state_dict().items())
    with pytest.raises(sl.SaliencelabError, match="Unknown method 'saliencey'"):
        sl.metrics.Explainer("saliencey")
    r = sl.metrics.get("max_sensitivity")(n_samples=2)(
        maps, x=images, model=tiny_cnn, explainer=sl.metrics.Explainer("saliency")
    )
    assert r.n == 4


def test_a_metric_called_without_inputs_says_so(tiny_cnn, images):
    maps = images.sum(1)
    for name in ("deletion", "model_randomisation", "max_sensitivity", "completeness"):
        with pytest.raises(sl.SaliencelabError, match=r"needs the inputs: pass x=\.\.\.") as err:
            sl.metrics.get(name)()(maps, model=tiny_cnn, explainer="saliency")
        assert "(4, 0)" not in str(err.value)
    with pytest.raises(sl.SaliencelabError, match="needs model"):  # no model, no inputs
        sl.metrics.get("deletion")()(maps)


def test_all_finite_matches_isfinite():
    """The maps' check (one aminmax) agrees with isfinite().all() for every dtype and position of
    a NaN or an infinity."""
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for n in (1, 7, 8, 33, 4099):
            t = torch.randn(n).to(dtype)
            assert all_finite(t)
            for bad in (math.nan, math.inf, -math.inf):
                for pos in {0, n // 2, n - 1}:
                    u = t.clone()
                    u[pos] = bad
                    assert not all_finite(u), (dtype, n, bad, pos)
    assert all_finite(torch.empty(0, 4)) and all_finite(torch.arange(5))
    assert not all_finite(torch.tensor([1 + 1j, complex(math.nan, 0)]))
    # a non-contiguous view
    t = torch.randn(4, 6, 5).transpose(1, 2)
    t[2, 3, 1] = math.nan
    assert not all_finite(t)
    with pytest.raises(sl.SaliencelabError, match="NaN or infinite"):
        MapMax()(t)


def test_float64_inputs_are_cast_to_the_models_dtype(tiny_cnn, images):
    """float64 inputs to a float32 model: the metrics run them in the model's dtype (they raised
    'expected scalar type Double but found Float' from the model's first layer)."""
    ex = sl.explain(tiny_cnn, images, methods="saliency")
    maps = ex["saliency"].maps
    kw = dict(metrics=["deletion", "max_sensitivity", "completeness"], references=False)
    ref = sl.evaluate(tiny_cnn, images, ex, **kw)["saliency"]
    got = sl.evaluate(tiny_cnn, images.double(), ex, **kw)["saliency"]
    for name in kw["metrics"]:
        torch.testing.assert_close(got[name].values, ref[name].values)
    deletion = sl.metrics.get("deletion")(steps=4)
    one = deletion(maps, x=images.double(), model=tiny_cnn).values
    torch.testing.assert_close(one, deletion(maps, x=images, model=tiny_cnn).values)


@pytest.mark.parametrize(
    "name,options",
    [
        ("max_sensitivity", {"n_samples": 3}),
        ("avg_sensitivity", {"n_samples": 3}),
        ("local_lipschitz", {"n_samples": 3}),
        ("random_logit", {"similarity": "spearman"}),
    ],
)
def test_seeded_draws_do_not_depend_on_the_batching(tiny_cnn, name, options):
    """A dataset scored in batches (of other sizes and positions) gives each image the value of
    one call: noise is shared by the samples, random classes are seeded by the image itself."""
    torch.manual_seed(0)
    x = torch.randn(7, 3, 12, 12)
    maps = sl.explain(tiny_cnn, x, methods="saliency")["saliency"].maps
    metric = sl.metrics.get(name)(**options)
    one = metric(maps, x=x, model=tiny_cnn, explainer="saliency").values
    metric.reset()
    for part in ([4, 0, 6], [1], [2, 5, 3]):
        rows = torch.tensor(part)
        metric.update(maps[rows], x=x[rows], model=tiny_cnn, explainer="saliency")
    batched = metric.compute().values
    order = torch.tensor([4, 0, 6, 1, 2, 5, 3])
    torch.testing.assert_close(batched, one[order])


def test_the_random_reference_map_is_the_images_own_in_any_batch(tiny_cnn):
    torch.manual_seed(0)
    x = torch.randn(5, 3, 12, 12)
    whole = sl.explain(tiny_cnn, x, methods="random")["random"].maps
    alone = torch.cat(
        [sl.explain(tiny_cnn, x[i : i + 1], methods="random")["random"].maps for i in (3, 1)]
    )
    torch.testing.assert_close(alone, whole[[3, 1]])
    assert not torch.equal(whole[0], whole[1])  # images get their own maps


def test_merge_refuses_results_of_other_metrics_or_settings(tiny_cnn, images):
    maps = sl.explain(tiny_cnn, images, methods="saliency")["saliency"].maps
    run = dict(x=images, model=tiny_cnn)
    deletion = sl.metrics.get("deletion")(steps=4)(maps, **run)
    insertion = sl.metrics.get("insertion")(steps=4)(maps, **run)
    other_base = sl.metrics.get("deletion")(steps=4, baseline=0.5)(maps, **run)
    other_steps = sl.metrics.get("deletion")(steps=5)(maps, **run)
    for bad, words in [
        (insertion, "different metrics"),
        (other_base, "baseline"),
        (other_steps, "steps"),
    ]:
        with pytest.raises(sl.SaliencelabError, match=words):
            MetricResult.merge([deletion, bad])
    twice = MetricResult.merge([deletion, deletion])
    assert twice.values.shape == (2 * images.shape[0],)


def test_logit_scores_widen_the_value_range_and_json_stays_strict(tiny_cnn, images, tmp_path):
    """Areas and drops of a probability lie in (0, 1) / (-1, 1); of a logit anywhere. The
    report's JSON has no NaN literal (a single sample's CI is NaN): strict parsers read it."""
    assert sl.metrics.get("deletion")().value_range == (0.0, 1.0)
    for name in ("deletion", "insertion", "aopc_morf", "aopc_lerf"):
        assert sl.metrics.get(name)(score="logit").value_range == (-math.inf, math.inf)
    ex = sl.explain(tiny_cnn, images[:1], methods="saliency")
    rep = sl.evaluate(tiny_cnn, images[:1], ex, metrics={"deletion": {"score": "logit"}})
    path = rep.to_json(tmp_path / "r.json")
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    row = data["results"]["saliency"]["deletion"]
    assert row["value_range"] == [None, None] and row["ci_low"] is None


def test_every_metric_scoring_logits_stays_inside_its_declared_range(tiny_cnn, images):
    """With score="logit" (output="logit") the values are areas, drops or gaps of logits; a
    range declared for probabilities must widen (ROAD kept (0, 1) and (-1, 1) while scoring
    -3.4 and -6.5). Checked on logits scaled up so that they leave any probability range."""
    from test_bad_input import FAST

    from saliencelab.metrics.base import metric_classes

    loud = torch.nn.Sequential(tiny_cnn, torch.nn.Flatten(), _Scale(40.0))
    x = images[:2]
    maps = sl.explain(loud, x, methods="saliency")["saliency"].maps
    checked = []
    for name, cls in metric_classes().items():
        options = set(inspect.signature(cls.__init__).parameters)
        key = "score" if "score" in options else "output" if "output" in options else None
        if key is None:
            continue
        metric = cls(**{**FAST.get(name, {}), key: "logit"})
        values = metric(maps, x=x, model=loud, target=[0, 1]).values
        lo, hi = metric.value_range
        finite = values[torch.isfinite(values)]
        assert bool(((finite >= lo) & (finite <= hi)).all()), (name, values, (lo, hi))
        checked.append(name)
    assert {"deletion", "road", "road_morf", "completeness"} <= set(checked)


class _Scale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.factor


def test_float32_ranks_average_ties_in_every_row_like_scipy():
    """float32 rows are ranked through int64 sort keys: ties must be averaged in every row of
    a batch, not only the first (scipy's rankdata along the last axis is the reference)."""
    g = torch.Generator().manual_seed(5)
    a = torch.randint(0, 4, (3, 2, 9), generator=g).float()  # many ties in each row
    want = scipy.stats.rankdata(a.numpy(), axis=-1)
    np.testing.assert_array_equal(ranks(a).numpy(), want)
    b = torch.randn(3, 2, 9, generator=g)
    rho = spearman(a, b).numpy()
    for i in range(3):
        for j in range(2):
            ref = scipy.stats.spearmanr(a[i, j].numpy(), b[i, j].numpy()).statistic
            assert math.isclose(float(rho[i, j]), ref, rel_tol=1e-6)


def test_result_interval_is_the_95_percent_percentile_bootstrap_of_the_finite_values():
    """MetricResult.ci (and row()) is the 95% percentile bootstrap of the mean: its ends agree
    with scipy's percentile bootstrap up to resampling noise, NaN values are left out."""
    v = torch.randn(300, generator=torch.Generator().manual_seed(7), dtype=torch.double) + 1
    r = MetricResult("x", torch.cat([v, torch.tensor([math.nan, math.inf])]), "higher", (0, 1))
    ref = scipy.stats.bootstrap(
        (v.numpy(),),
        np.mean,
        confidence_level=0.95,
        method="percentile",
        n_resamples=10000,
        random_state=0,
    ).confidence_interval
    se = float(v.std()) / math.sqrt(v.numel())
    lo, hi = r.ci
    assert abs(lo - ref.low) < 0.2 * se and abs(hi - ref.high) < 0.2 * se
    # a 90% interval would be 1.645 / 1.96 = 0.84 of the width
    assert (hi - lo) / (ref.high - ref.low) == pytest.approx(1.0, abs=0.07)
    row = r.row()
    assert (row["ci_low"], row["ci_high"]) == (lo, hi) and lo < row["mean"] < hi
    assert row["n"] == 300 and row["mean"] == pytest.approx(float(v.mean()))


def test_merge_weights_the_cost_per_sample_by_the_samples_of_each_part():
    """Merged passes / forwards are per sample over all parts (a part of 1 sample costing 3 and
    one of 3 samples costing 1 per sample: 6 / 4 = 1.5), seconds add up, values concatenate."""
    a = MetricResult(
        "x", torch.tensor([1.0]), "higher", (0, 1), passes=3.0, forwards=5.0, seconds=0.25
    )
    b = MetricResult(
        "x", torch.tensor([2.0, 3.0, 4.0]), "higher", (0, 1), passes=1.0, forwards=1.0, seconds=0.5
    )
    m = MetricResult.merge([a, b])
    assert m.values.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert m.passes == pytest.approx(1.5) and m.forwards == pytest.approx(2.0)
    assert m.seconds == pytest.approx(0.75) and m.mean == pytest.approx(2.5)


def test_scores_and_input_scores_take_each_samples_own_target(tiny_cnn, images):
    """Every row is scored for the target of its own sample: hand-computed softmax / logits of
    the model, with a different class per sample."""
    from saliencelab.metrics.base import make_batch

    target = torch.tensor([0, 1, 2, 3])
    rows = torch.arange(4)
    with torch.no_grad():
        logits = tiny_cnn(images)
        want = torch.stack(
            [tiny_cnn(images * s).softmax(-1)[rows, target] for s in (0.5, 1.0)], 1
        ).mean(1)
    r = MeanScore(steps=2)(images.sum(1), x=images, model=tiny_cnn, target=target)
    torch.testing.assert_close(r.values, want)
    batch = make_batch(images.sum(1), x=images, model=tiny_cnn, target=target)
    torch.testing.assert_close(batch.input_scores("logit"), logits[rows, target])
    torch.testing.assert_close(batch.input_scores(), logits.softmax(-1)[rows, target])
    torch.testing.assert_close(batch.input_scores("logits"), logits)


def _report_of(means: dict[str, list[float]], direction: str) -> sl.metrics.EvalReport:
    from saliencelab.metrics.evaluate import EvalReport

    return EvalReport(
        {
            m: {"d": MetricResult("d", torch.tensor(v, dtype=torch.double), direction, (0, 1))}
            for m, v in means.items()
        },
        references=("random",),
    )


def test_best_follows_the_direction_and_leaves_references_out_unless_asked():
    means = {"a": [0.2, 0.4], "b": [0.6, 0.8], "random": [0.9, 1.0], "c": [math.nan] * 2}
    higher, lower = _report_of(means, "higher"), _report_of(means, "lower")
    assert higher.best("d") == "b" and lower.best("d") == "a"
    assert higher.best("d", include_references=True) == "random"
    assert lower.best("d", include_references=True) == "a"
    with pytest.raises(sl.SaliencelabError, match="no better direction"):
        _report_of(means, "none").best("d")


def test_csv_and_json_rows_hold_each_methods_own_numbers(tmp_path):
    """The CSV and JSON carry the table's numbers under the right column names: mean, the
    interval's low and high ends (low ≤ mean ≤ high), n and the reference flag."""
    rep = _report_of({"a": [0.1, 0.2, 0.6], "random": [0.5, 0.9, 0.7, 0.3]}, "higher")
    with open(rep.to_csv(tmp_path / "r.csv")) as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    data = json.loads(rep.to_json(tmp_path / "r.json").read_text())["results"]
    for method, values, ref in (
        ("a", [0.1, 0.2, 0.6], "False"),
        ("random", [0.5, 0.9, 0.7, 0.3], "True"),
    ):
        lo, hi = rep[method]["d"].ci
        row = rows[method]
        assert float(row["mean"]) == pytest.approx(np.mean(values))
        assert float(row["ci_low"]) == pytest.approx(lo) and float(row["ci_high"]) == pytest.approx(
            hi
        )
        assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])
        assert row["n"] == str(len(values)) and row["reference"] == ref
        js = data[method]["d"]
        assert js["values"] == pytest.approx(values) and js["mean"] == pytest.approx(
            np.mean(values)
        )
        assert (js["ci_low"], js["ci_high"]) == pytest.approx((lo, hi))


def test_reference_maps_match_their_formulas_on_a_non_square_image(tiny_cnn):
    """Sobel: scipy.ndimage's Sobel magnitude of the channel mean with replicated borders
    (mode "nearest"); centred Gaussian: exp(-d²/2σ²) around ((H-1)/2, (W-1)/2), σ = 0.25 ×
    the shorter side; random: U(0, 1), another map for another seed."""
    import scipy.ndimage

    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 7, 10, generator=g, dtype=torch.float64).float()
    ex = sl.explain(tiny_cnn, x, methods=["sobel", "center_gaussian", "random"])
    gray = x.double().mean(1).numpy()
    for i in range(2):
        gy = scipy.ndimage.sobel(gray[i], axis=0, mode="nearest")
        gx = scipy.ndimage.sobel(gray[i], axis=1, mode="nearest")
        np.testing.assert_allclose(ex["sobel"].maps[i].numpy(), np.hypot(gx, gy), atol=1e-5)
    ys, xs = np.mgrid[0:7, 0:10]
    s = 0.25 * 7
    want = np.exp(-((ys - 3.0) ** 2 + (xs - 4.5) ** 2) / (2 * s * s))
    for i in range(2):
        np.testing.assert_allclose(ex["center_gaussian"].maps[i].numpy(), want, rtol=1e-5)
    r = ex["random"].maps
    assert r.shape == (2, 7, 10) and bool(((r >= 0) & (r < 1)).all())
    other = sl.explain(tiny_cnn, x, methods={"random": {"seed": 1}})["random"].maps
    assert not torch.equal(r, other)


def test_each_attribution_is_scored_for_its_own_target_and_given_maps_win(tiny_cnn, images):
    """Without target=, every Attribution is scored for the target it was explained for
    (hand-computed probabilities); a given map is scored as given, next to the references (a
    map under a reference's name is refused: tests/metrics/test_evaluate_requests.py)."""
    ex = {
        "saliency": sl.explain(tiny_cnn, images, methods="saliency", target=0)["saliency"],
        "gradcam": sl.explain(tiny_cnn, images, methods="gradcam", target=3)["gradcam"],
        "mine": images.abs().sum(1),
    }
    with pytest.warns(UserWarning, match="explain different classes.*classes of 'saliency'"):
        rep = sl.evaluate(
            tiny_cnn, images, ex, metrics=["_test_mean_score", "_test_map_max"], steps=2
        )
    assert "random" in rep.references and "random" in rep
    assert rep.params["targets"]["random"] == rep.params["targets"]["mine"] == [0] * len(images)
    with torch.no_grad():
        probs = [tiny_cnn(images * s).softmax(-1) for s in (0.5, 1.0)]
    for name, cls in (("saliency", 0), ("gradcam", 3)):
        want = (probs[0][:, cls] + probs[1][:, cls]) / 2
        torch.testing.assert_close(rep[name]["_test_mean_score"].values, want)
    torch.testing.assert_close(
        rep["mine"]["_test_map_max"].values, images.abs().sum(1).flatten(1).amax(1)
    )


def test_an_int_target_without_a_model_is_every_samples_class():
    """A class given as an int is recorded for every sample when no model predicts one."""
    maps = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 5, 5, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    r = sl.metrics.get("pointing_game")()(maps, masks=masks, target=2)
    assert r.extras["target"].tolist() == [2, 2, 2]
