"""`sl.explain` on what callers really pass: inside no_grad / inference_mode, tabular batches,
and inputs, targets and options it must refuse in one sentence (model state left as it was)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError

CONTEXTS = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
METHODS = {  # one of each family, small options
    "saliency": {},
    "guided_backprop": {},
    "integrated_gradients": {"n_steps": 4},
    "gradcam": {},
    "lrp": {},
    "deeplift": {},
    "occlusion": {"window": 6, "stride": 6},
}


def _state(model: nn.Module) -> tuple:
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    return model.training, [p.requires_grad for p in model.parameters()], hooks


# -- called inside torch.no_grad() / torch.inference_mode() ----------------------------------------


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_family_works_when_called_inside_the_context(tiny_cnn, images, context):
    ref = sl.explain(tiny_cnn, images, methods=METHODS)
    with CONTEXTS[context]():
        x = images.clone()  # an inference tensor under inference_mode
        ex = sl.explain(tiny_cnn, x, methods=METHODS)
        modes = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    assert modes == (False, context == "inference_mode")  # the caller's modes are kept
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    for name in METHODS:
        torch.testing.assert_close(ex[name].maps, ref[name].maps, msg=name)
        assert not ex[name].maps.is_inference()


@pytest.mark.parametrize("context", CONTEXTS)
def test_a_metric_works_when_called_inside_the_context(tiny_cnn, images, context):
    ex = sl.explain(tiny_cnn, images, methods="saliency")
    kw = dict(metrics="max_sensitivity", references=False, n_samples=2)  # re-explains: gradients
    ref = sl.evaluate(tiny_cnn, images, ex, **kw)
    with CONTEXTS[context]():
        got = sl.evaluate(tiny_cnn, images, ex, **kw)
    a, b = ref["saliency"]["max_sensitivity"], got["saliency"]["max_sensitivity"]
    torch.testing.assert_close(b.values, a.values)


# -- tabular (B, F) inputs: one value per feature -----------------------------------------------


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


TABULAR = ["saliency", "input_x_gradient", "integrated_gradients", "guided_backprop", "lrp"]


@pytest.mark.parametrize("method", [*TABULAR, "smoothgrad"])
def test_tabular_maps_keep_one_value_per_feature(mlp, method):
    x = torch.rand(4, 8)
    a = sl.explain(mlp, x, methods=method)[method]
    assert a.maps.shape == (4, 8) and a.attributions.shape == (4, 8)
    torch.testing.assert_close(a.maps, a.attributions)
    assert a.reduction == "none (one value per feature)"


def test_tabular_saliency_is_the_absolute_gradient_per_feature(mlp):
    x = torch.rand(4, 8)
    a = sl.explain(mlp, x, methods="saliency", target=1)["saliency"]
    xx = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mlp(xx)[:, 1].sum(), xx)
    torch.testing.assert_close(a.maps, grad.abs())


def test_tabular_perturbation_methods_keep_their_own_reduction(mlp):
    a = sl.explain(mlp, torch.rand(4, 8), methods="feature_ablation")["feature_ablation"]
    assert a.maps.shape == (4, 8)
    assert a.reduction != "none (one value per feature)"


def test_image_maps_still_sum_over_channels(tiny_cnn, images):
    a = sl.explain(tiny_cnn, images, methods="input_x_gradient")["input_x_gradient"]
    torch.testing.assert_close(a.maps, a.attributions.sum(1))
    assert a.reduction == "signed sum over channels"


# -- inputs converted or refused ----------------------------------------------------------------


def test_float64_inputs_are_cast_to_the_models_dtype(tiny_cnn, images):
    ref = sl.explain(tiny_cnn, images, methods="saliency")["saliency"].maps
    a = sl.explain(tiny_cnn, images.double(), methods="saliency")["saliency"]
    assert a.maps.dtype == torch.float32
    torch.testing.assert_close(a.maps, ref)


BAD = {
    "3-D image": (dict(x="single"), "x.unsqueeze(0)"),
    "1 channel": (dict(x="gray"), "to have 3 channels"),
    "1 channel, gradcam": (dict(x="gray", methods="gradcam"), "to have 3 channels"),
    "uint8": (dict(x="uint8"), "preprocess images first"),
    "2-D tensor target": (dict(target=torch.tensor([[1], [2], [3], [4]])), "0-D or (B,)"),
    "bool target": (dict(target=True), "not bool"),
    "float in target list": (dict(target=[1, 2.5, 0, 0]), "not float"),
    "memory_budget string": (dict(memory_budget="1GB"), "memory_budget"),
    "chunk_size zero": (dict(chunk_size=0), "chunk_size"),
    "methods None": (dict(methods=None), "named by a string"),
    "method options not a dict": (dict(methods={"saliency": 3}), "must be a dict"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_get_one_sentence_and_the_model_is_left_as_it_was(tiny_cnn, images, case):
    kw, words = BAD[case]
    xs = {
        "single": images[0],
        "gray": images[:, :1],
        "uint8": (images * 40 + 128).clamp(0, 255).to(torch.uint8),
    }
    kw = {"methods": "saliency", **kw}
    x = xs.get(kw.pop("x", None), images)
    tiny_cnn.train()  # the call puts it in eval mode: it must come back in train mode
    before = _state(tiny_cnn)
    with pytest.raises(SaliencelabError) as info:
        sl.explain(tiny_cnn, x, **kw)
    assert words in str(info.value)
    assert "\n" not in str(info.value)
    assert _state(tiny_cnn) == before


def test_a_3d_input_is_refused_up_front_when_the_model_knows_its_input_size(tiny_cnn, images):
    model = sl.Model(module=tiny_cnn, input_size=(12, 12))
    with pytest.raises(SaliencelabError, match="batch axis"):
        sl.explain(model, images[0], methods="saliency")


def test_errors_not_caused_by_the_inputs_keep_their_traceback(tiny_cnn, images):
    def broken(logits):
        raise RuntimeError("a bug in the target function")

    with pytest.raises(RuntimeError, match="a bug in the target function"):
        sl.explain(tiny_cnn, images, methods="saliency", target=broken)


class _FailsAfter(torch.nn.Module):
    """Runs the wrapped network, then raises the user's error: the inputs are fine."""

    def __init__(self, net: torch.nn.Module, error: Exception) -> None:
        super().__init__()
        self.net, self.error = net, error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.net(x)
        raise self.error


class _UserError(RuntimeError):
    pass


@pytest.mark.parametrize("error", [RuntimeError("a bug in the model"), _UserError("its own")])
@pytest.mark.parametrize("method", ["saliency", "gradcam", "occlusion"])
def test_the_models_own_errors_propagate_as_they_are(tiny_cnn, images, error, method):
    """A model that fails on every call past its first layer (or with its own exception type)
    is not reported as a bad-input error: the user's exception comes back, the same object."""
    model = _FailsAfter(tiny_cnn, error)
    options = {"layer": "net.features.2"} if method == "gradcam" else {}
    with pytest.raises(type(error)) as raised:
        sl.explain(model, images, methods={method: options})
    assert raised.value is error


@pytest.mark.parametrize("context", CONTEXTS)
def test_gradient_entry_points_beyond_explain_work_inside_the_context(tiny_cnn, images, context):
    ex = sl.explain(tiny_cnn, images, methods="saliency")
    kw = dict(metrics="model_randomisation", references=False)  # randomises weights in place
    ref = sl.evaluate(tiny_cnn, images, ex, **kw)["saliency"]["model_randomisation"].values
    act = sl.activations(tiny_cnn, images, top=2, by="contribution").values
    vis = sl.visualize(tiny_cnn, 0, steps=2, size=16)
    with CONTEXTS[context]():
        got = sl.evaluate(tiny_cnn, images, ex, **kw)["saliency"]["model_randomisation"].values
        act2 = sl.activations(tiny_cnn, images, top=2, by="contribution").values
        vis2 = sl.visualize(tiny_cnn, 0, steps=2, size=16)
        modes = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    assert modes == (False, context == "inference_mode")
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(act2, act)
    torch.testing.assert_close(vis2.images, vis.images)
    assert not any(p.is_inference() for p in tiny_cnn.parameters())


class _Bag(torch.nn.Module):
    """Token ids (B, T) → mean embedding → linear: a model whose inputs are integers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


def test_integer_token_ids_work_with_perturbation_methods_and_refuse_gradients():
    """Feature ablation on token ids gives real-valued score drops (they were cast to the ids'
    int64 and truncated to 0), equal to the drops by hand; gradient methods say in one sentence
    that integer inputs have no gradients."""
    torch.manual_seed(0)
    model, ids = _Bag().eval(), torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    maps = sl.explain(model, ids, methods="feature_ablation", target=0)["feature_ablation"].maps
    assert maps.dtype == torch.float32
    with torch.no_grad():
        clean = model(ids)[:, 0]
        for j in range(4):
            ablated = ids.clone()
            ablated[:, j] = 0  # the baseline 0 as a token id
            torch.testing.assert_close(maps[:, j], clean - model(ablated)[:, 0])
    with pytest.raises(sl.SaliencelabError, match="saliency needs gradients") as err:
        sl.explain(model, ids, methods="saliency")
    assert "\n" not in str(err.value)


def test_a_class_name_of_two_classes_is_refused_not_resolved_to_the_first():
    """ImageNet names two classes "crane" (134 the bird, 517 the machine) and two "maillot":
    the name is ambiguous, so it is one sentence asking for the index (was: silently 134)."""
    from saliencelab.core.targets import _class_index
    from saliencelab.data.labels import imagenet_labels

    labels = imagenet_labels()
    assert [i for i, n in enumerate(labels) if n == "crane"] == [134, 517]
    with pytest.raises(SaliencelabError, match=r"'crane' names 2 classes \(134, 517\)"):
        _class_index("crane", labels, len(labels))
    with pytest.raises(SaliencelabError, match=r"'Maillot' names 2 classes \(638, 639\)"):
        _class_index("Maillot", labels, len(labels))
    assert _class_index("tabby", labels, len(labels)) == labels.index("tabby")
    assert _class_index("Tabby", labels, len(labels)) == labels.index("tabby")


def test_an_empty_batch_is_one_sentence(tiny_cnn, images):
    before = _state(tiny_cnn)
    with pytest.raises(SaliencelabError, match="The batch is empty"):
        sl.explain(tiny_cnn, images[:0], methods="gradcam")
    assert _state(tiny_cnn) == before


def test_smoothgrad_of_magnitudes_does_not_call_its_reduction_signed(tiny_cnn, images):
    """SmoothGrad of saliency (|grad|) is unsigned: its `reduction` must not say "signed"."""
    ex = sl.explain(
        tiny_cnn,
        images[:2],
        methods={"smoothgrad": {"n_samples": 2}, "input_x_gradient": {}},
        target=0,
    )
    sg = ex["smoothgrad"]
    assert not sg.signed and bool((sg.maps >= 0).all())
    assert sg.reduction == "sum over channels"
    assert ex["input_x_gradient"].reduction == "signed sum over channels"


def test_a_gallery_of_plain_tensors_names_save_overlay(tmp_path):
    img = sl.sample_image("chelsea")
    with pytest.raises(SaliencelabError, match=r"'mine' is a Tensor; .*sl\.save_overlay"):
        sl.save_gallery(img, {"mine": torch.rand(1, 224, 224)}, tmp_path / "g.png")


def test_explanations_print_as_a_summary_with_counted_passes(tiny_cnn, images):
    """`print(ex)` was every tensor and label; now one line each, "1 pass" in the singular."""
    from saliencelab.core.result import cost_text

    ex = sl.explain(tiny_cnn, images[:2], methods=["saliency", "gradcam"], target=0)
    text = repr(ex)
    assert text.startswith("Explanation(2 methods: saliency, gradcam; inputs (2, 3, 12, 12)")
    assert "1 pass per sample" in text and "\n" not in text and len(text) < 300
    assert repr(ex["gradcam"]).startswith("Attribution(gradcam: maps (2, 12, 12), unsigned")
    assert cost_text(1, 0) == "1 pass" and cost_text(50, 1) == "50 passes + 1 forward"
    assert cost_text(0, 2.5) == "2.5 forwards" and cost_text(0, 0) == "no pass"


def test_a_nan_map_is_refused_not_drawn_as_the_bare_photo(tmp_path):
    img = sl.sample_image("chelsea")
    bad = torch.rand(1, 224, 224)
    bad[0, 3, 4] = float("nan")
    with pytest.raises(SaliencelabError, match="NaN or infinite values"):
        sl.save_overlay(img, bad, tmp_path / "x.png")
    assert sl.save_overlay(img, torch.nan_to_num(bad), tmp_path / "y.png").exists()


def test_an_unknown_class_of_a_small_model_lists_its_classes():
    model = sl.load_model("shapes_cnn")
    x = sl.data.shapes.make(1, seed=0).images
    with pytest.raises(SaliencelabError, match=r"named .Egyptian cat.\. Its classes are: "):
        sl.explain(model, x, methods="saliency", target="Egyptian cat")
    with pytest.raises(SaliencelabError, match=r"Did you mean: square"):
        sl.explain(model, x, methods="saliency", target="squares")


def test_a_model_of_one_score_shows_the_score_not_a_probability_of_one():
    """A regression model's (B, 1) output was shown as "predicted class 0" with probability 1.0
    (a softmax over one value) in repr, table and reports; its score is what was explained."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 1)).eval()
    x = torch.randn(3, 4)
    ex = sl.explain(net, x, methods="saliency")
    score = net(x)[:, 0].detach()
    assert ex.one_score and ex.probabilities is None
    torch.testing.assert_close(ex.target_values, score)
    rows = ex.table()
    assert [r["probability"] for r in rows] == [None] * 3
    assert [r["predicted"] for r in rows] == [None] * 3
    assert [r["target"] for r in rows] == ["score"] * 3
    assert [r["target_value"] for r in rows] == pytest.approx(score.tolist())
    assert f"explained score: {float(score[0]):.3g}" in repr(ex)
    named = sl.explain(sl.Model(net, labels=["price"]), x, methods="saliency")
    assert named.target_text(1) == f"price: {float(score[1]):.3g}"
    assert named.table()[0]["target"] == "price"
    two = sl.explain(torch.nn.Sequential(torch.nn.Linear(4, 2)).eval(), x, methods="saliency")
    assert not two.one_score and two.probabilities.shape == (3, 2)  # classes: as before


class _Segmenter(torch.nn.Module):
    """A (B, K, H, W) output: a segmentation map, no classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_a_score_of_a_segmentation_output_is_shown_as_the_score():
    """The README's segmentation target (`target=lambda out: out[:, 1].mean(...)`) crashed
    repr (ValueError), table(), target_text and the gallery (IndexError), and probabilities
    was a softmax over the image's width."""
    net, x = _Segmenter().eval(), torch.rand(2, 3, 8, 8)
    score = lambda out: out[:, 1].mean(dim=(1, 2))  # noqa: E731
    ex = sl.explain(net, x, methods="saliency", target=score)
    want = score(net(x)).detach()
    assert ex.probabilities is None
    torch.testing.assert_close(ex.target_values, want)
    assert ex.target_text(1) == f"custom score: {float(want[1]):.3g}"
    assert f"explained custom score: {float(want[0]):.3g}" in repr(ex)
    assert [r["target_value"] for r in ex.table()] == pytest.approx(want.tolist())
    from saliencelab.viz.gallery import gallery

    assert gallery(x[0], ex).size[0] > 0


def test_a_function_of_one_score_shows_the_value_it_explained():
    """With one output and target=lambda o: 10 * o[:, 0], the shown value was the raw score
    (1.1), not the 11.0 explained; a named function shows its name."""
    torch.manual_seed(0)
    net, x = torch.nn.Sequential(torch.nn.Linear(4, 1)).eval(), torch.randn(2, 4)

    def price(out: torch.Tensor) -> torch.Tensor:
        return 10 * out[:, 0]

    ex = sl.explain(net, x, methods="saliency", target=price)
    want = price(net(x)).detach()
    torch.testing.assert_close(ex.target_values, want)
    assert ex.target_text(0) == f"price: {float(want[0]):.3g}"


def test_membership_and_get_on_an_explanation_do_not_raise():
    """`"nope" in ex` and `ex.get("nope")` raised SaliencelabError (Mapping only catches
    KeyError); ex["nope"] keeps its one-sentence refusal with the names it has."""
    ex = sl.explain(torch.nn.Sequential(torch.nn.Linear(4, 2)).eval(), torch.randn(2, 4))
    assert "saliency" in ex and "nope" not in ex
    assert ex.get("nope") is None and ex.get("saliency") is ex["saliency"]
    with pytest.raises(sl.SaliencelabError, match="has no method 'nope'"):
        ex["nope"]


def test_copies_compare_without_error_and_to_moves_everything():
    """deepcopy(a) == a raised RuntimeError (the dataclass == compared tensors); Attribution.to
    left extras such as `delta` behind, and an Explanation had no .to at all."""
    import copy

    net, x = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval(), torch.randn(2, 4)
    ex = sl.explain(net, x, methods="integrated_gradients", n_steps=4)
    a = ex["integrated_gradients"]
    assert a == a and copy.deepcopy(a) != a and copy.deepcopy(ex) != ex
    ex.to("meta")
    assert {ex.inputs.device.type, ex.logits.device.type, a.maps.device.type} == {"meta"}
    assert a.delta.device.type == "meta"
