"""Models that are not the bundled ones, through `sl.explain`, `sl.evaluate` and `sl.activations`:
odd outputs ((B,) scores, dicts without a logits key, segmentation maps), forwards that change
the batch or carry no gradient, layers run twice, weights made under `torch.inference_mode()`,
parametrized (spectral-normed) layers, and a train-mode model with the user's own hooks. Each
either works (checked against autograd by hand) or stops with one sentence, and the model is
left exactly as it was."""

from __future__ import annotations

import collections
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import TwiceConv
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.utils.checkpoint import checkpoint

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError


class Net(nn.Module):
    """conv → (BatchNorm) → ReLU → conv → ReLU → (Dropout) → mean → linear; F.relu, so no module
    activations (the methods under test do not need them)."""

    def __init__(self, classes: int = 5, bn: bool = False, drop: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5) if drop else nn.Identity()
        self.fc = nn.Linear(6, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.bn(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x).mean((2, 3))))


def _inputs(b: int = 3, h: int = 10, w: int = 14) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(b, 3, h, w)


def _state(model: nn.Module) -> dict:
    """Everything a call must leave as it was: flags, parameter objects and values, hooks."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "ids": [id(p) for p in model.parameters()],
        "values": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [
            (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks))
            for m in model.modules()
        ],
    }


def _assert_same_state(model: nn.Module, before: dict) -> None:
    after = _state(model)
    for key in ("training", "requires_grad", "ids", "hooks"):
        assert after[key] == before[key], key
    for k, v in before["values"].items():
        assert torch.equal(after["values"][k], v), k


def _saliency_by_hand(model: nn.Module, x: torch.Tensor, scores=lambda out: out) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    out = scores(model(x))
    t = out.argmax(1)
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), x)
    return g.abs().sum(1)


# -- outputs ---------------------------------------------------------------------------------------


class OneScore(Net):
    """One score per input, shape (B,) (a binary classifier's logit)."""

    def __init__(self) -> None:
        super().__init__(classes=1)

    def forward(self, x):
        return super().forward(x)[:, 0]


def test_a_model_returning_one_score_per_input_b_reads_as_b_by_1():
    """(B,) scores are (B, 1), as a black box's are: saliency equals autograd's gradient of the
    score, integrated gradients are complete, and the metrics that read a softmax say to use
    score='logit'. (An IndexError from `argmax(dim=1)` before.)"""
    torch.manual_seed(0)
    model = OneScore().eval()
    x = _inputs()
    ex = sl.explain(model, x, methods={"saliency": {}, "integrated_gradients": {"n_steps": 32}})
    torch.testing.assert_close(
        ex["saliency"].maps, _saliency_by_hand(model, x, lambda out: out[:, None])
    )
    assert ex.logits.shape == (3, 1) and ex["saliency"].target.tolist() == [0, 0, 0]
    gap = ex["integrated_gradients"].maps.sum((1, 2)) - (model(x) - model(torch.zeros_like(x)))
    assert gap.abs().max() < 1e-3
    with pytest.raises(SaliencelabError, match="one score \\(class 0\\)"):
        sl.explain(model, x, target=1)
    with pytest.raises(SaliencelabError, match="score='logit'"):
        sl.evaluate(model, x, ex, metrics="deletion")
    rep = sl.evaluate(model, x, ex, metrics={"deletion": {"steps": 3}}, score="logit")
    assert torch.isfinite(rep["saliency"]["deletion"].values).all()


class Named(Net):
    def forward(self, x):
        f = self.features(x)
        return {"features": f, "pred": self.fc(f.mean((2, 3)))}


def test_a_dict_output_without_a_logits_key_is_refused_not_guessed():
    """Several entries and none named logits / scores / output / out: one sentence naming the
    keys (its first entry, here the feature maps, was explained as if they were logits)."""
    model = Named().eval()
    before = _state(model)
    for methods in ("saliency", "occlusion"):
        with pytest.raises(SaliencelabError, match="keys 'features', 'pred'"):
            sl.explain(model, _inputs(), methods=methods)
    _assert_same_state(model, before)


class Segmenter(Net):
    """(B, 4, H, W) class maps."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(self.features(x))


def test_an_output_that_is_not_batch_by_classes_needs_a_function_target():
    """A segmentation output has no class to explain: the predicted class (argmax over its
    channels: a map per sample) or a class index is one sentence pointing to a function target,
    which works and equals autograd's gradient of that function."""
    torch.manual_seed(0)
    model = Segmenter().eval()
    x = _inputs()
    for target in (None, 1):
        with pytest.raises(SaliencelabError, match="not \\(batch, classes\\)"):
            sl.explain(model, x, target=target)
    with pytest.raises(SaliencelabError, match="not \\(batch, classes\\)"):
        sl.evaluate(model, x, {"mine": torch.rand(3, 10, 14)}, metrics="deletion", target=1)

    def score(out):
        return out[:, 1].mean((1, 2))

    ex = sl.explain(model, x, methods=["saliency", "occlusion"], target=score, window=4, stride=4)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score(model(xr)).sum(), xr)
    torch.testing.assert_close(ex["saliency"].maps, g.abs().sum(1))


class Doubler(Net):
    def forward(self, x):
        return super().forward(torch.cat([x, x]))


class FirstOnly(Net):
    def forward(self, x):
        return super().forward(x[:1])


@pytest.mark.parametrize("cls", [Doubler, FirstOnly])
def test_a_forward_that_changes_the_batch_is_refused(cls):
    """Scores for another number of rows than inputs would give each input another row's
    scores: one sentence (a doubled batch was explained silently, with 2B maps; a shrunk one
    raised an IndexError)."""
    model = cls().eval()
    x = _inputs()
    methods = {"saliency": {}, "occlusion": {"window": 4}, "integrated_gradients": {"n_steps": 4}}
    for name, options in methods.items():
        with pytest.raises(SaliencelabError, match="one row of scores per input"):
            sl.explain(model, x, methods={name: options})
    with pytest.raises(SaliencelabError, match="one row of scores per input"):
        sl.evaluate(model, x, {"mine": torch.rand(3, 10, 14)}, metrics="deletion", target=0)


# -- gradients and layers --------------------------------------------------------------------------


class Detached(Net):
    def forward(self, x):
        return super().forward(x).detach()


class Aux(Net):
    """A layer whose output feeds an auxiliary output only."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        f = self.features(x)
        return {"logits": self.fc(f.mean((2, 3))), "aux": self.aux(f)}


def test_a_score_without_gradient_is_one_sentence():
    """A detached output (or integer, or computed under no_grad) has no gradient: gradient
    methods say so and point to perturbation methods, which work; a layer that does not lead
    to the score is named (both were autograd's RuntimeError)."""
    model = Detached().eval()
    x = _inputs()
    methods = {
        "saliency": {},
        "integrated_gradients": {"n_steps": 4},
        "gradcam": {"layer": "conv2"},
    }
    for name, options in methods.items():
        with pytest.raises(SaliencelabError, match="no gradient to the"):
            sl.explain(model, x, methods={name: options})
    assert sl.explain(model, x, methods="occlusion", window=4, stride=4)["occlusion"].maps.any()
    aux = Aux().eval()
    for methods in ("gradcam", ["saliency", "gradcam"]):
        with pytest.raises(SaliencelabError, match="no gradient to the layer aux"):
            sl.explain(aux, x, methods=methods, layer="aux")


class Checkpointed(Net):
    """The features run through `torch.utils.checkpoint` (reentrant or not)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant

    def forward(self, x):
        f = checkpoint(self.features, x, use_reentrant=self.reentrant)
        return self.fc(f.mean((2, 3)))


def test_a_checkpointed_forward_works_and_a_reentrant_one_is_one_sentence():
    """A non-reentrant checkpoint gives the maps of the same model without it; a reentrant one
    (which autograd.grad cannot pass) stops gradient methods with one sentence naming the fix
    (was autograd's RuntimeError; Grad-CAM's said only "no gradient"), occlusion works, and
    the model is left as it was."""
    x = _inputs()
    plain = Checkpointed(reentrant=False).eval()
    reference = _saliency_by_hand(plain, x)
    torch.testing.assert_close(sl.explain(plain, x, methods="saliency")["saliency"].maps, reference)
    model = Checkpointed(reentrant=True).eval()
    model.load_state_dict(plain.state_dict())
    before = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "None of the inputs have requires_grad=True"
        for name in ("saliency", "integrated_gradients", "smoothgrad", "input_x_gradient"):
            with pytest.raises(SaliencelabError, match="use_reentrant=False"):
                sl.explain(model, x, methods=name)
            _assert_same_state(model, before)
        with pytest.raises(
            SaliencelabError,
            match="layer conv2 .*or a reentrant torch.utils.checkpoint",
        ):
            sl.explain(model, x, methods={"gradcam": {"layer": "conv2"}})
        _assert_same_state(model, before)
        occlusion = sl.explain(model, x, methods="occlusion", window=4, stride=4)["occlusion"]
    torch.testing.assert_close(
        occlusion.maps,
        sl.explain(plain, x, methods="occlusion", window=4, stride=4)["occlusion"].maps,
    )


class Recomputed(Net):
    """A non-reentrant checkpoint around a block that runs other operators when called again
    (as a forward changed by hooks between the forward and the backward's recomputation)."""

    calls = 0

    def block(self, x):
        self.calls += 1
        h = self.conv1(x)
        return h * torch.sigmoid(h) if self.calls % 2 else F.relu(h)

    def forward(self, x):
        f = F.relu(self.conv2(checkpoint(self.block, x, use_reentrant=False)))
        return self.fc(f.mean((2, 3)))


def test_a_checkpoint_recomputing_another_forward_is_one_sentence():
    """torch's CheckpointError (the recomputation saved other tensors) is one sentence."""
    model = Recomputed().eval()
    before = _state(model)
    with pytest.raises(SaliencelabError, match="recomputation in the backward did not repeat"):
        sl.explain(model, _inputs(), methods="saliency")
    _assert_same_state(model, before)


def test_a_layer_run_twice_is_refused_and_the_automatic_layer_passes_it_over():
    """A module called twice in one forward has no single output: a CAM of it is one sentence
    (its last call was read, silently; a second call feeding nothing the score reads raised
    autograd's error), and `layer=None` picks the last spatial layer that runs once."""
    model = TwiceConv().eval()
    x = _inputs()
    for method in ("gradcam", "scorecam", "eigencam"):
        with pytest.raises(SaliencelabError, match="runs more than once"):
            sl.explain(model, x, methods=method, layer="shared")
    ex = sl.explain(model, x, methods="gradcam")
    assert ex["gradcam"].layer == "stem"
    # methods that do not read the layer are fine with it
    ex = sl.explain(model, x, methods=["saliency", "lrp"])
    torch.testing.assert_close(ex["saliency"].maps, _saliency_by_hand(model, x))


def test_a_model_made_under_inference_mode_is_one_sentence_and_left_as_it_was():
    """Weights made under torch.inference_mode() are inference tensors: gradient methods and
    weight randomisation say so, forward-only methods work, and every parameter requires grad
    again afterwards (restoring the flag raised outside inference mode, and left it off)."""
    with torch.inference_mode():
        model = Net().eval()
    x = _inputs()
    before = _state(model)
    with pytest.raises(SaliencelabError, match="inference_mode"):
        sl.explain(model, x, methods=["saliency", "gradcam"], layer="conv2")
    _assert_same_state(model, before)
    maps = {"mine": torch.rand(3, 10, 14)}
    with pytest.raises(SaliencelabError, match="inference_mode"):
        sl.evaluate(model, x, maps, metrics="max_sensitivity", explainer="saliency")
    _assert_same_state(model, before)
    assert all(p.requires_grad for p in model.parameters())
    sl.explain(model, x, methods="occlusion", window=4, stride=4)
    sl.evaluate(model, x, maps, metrics={"deletion": {"steps": 3}}, references=False)
    _assert_same_state(model, before)


def test_lrp_of_spectral_normed_layers_leaves_their_weights_and_equals_the_plain_model():
    """LRP's modified weights go into a parametrized layer as they are: the maps equal those of
    the same network with plain layers holding the normalised weights, and the
    parametrization's original weights are untouched (they were divided by their norm, and the
    maps were 75 % off)."""
    torch.manual_seed(0)
    model = Net()
    for name in ("conv1", "conv2", "fc"):
        setattr(model, name, spectral_norm(getattr(model, name)))
    for _ in range(3):  # power iterations in train mode
        model(_inputs())
    model.eval()
    plain = Net().eval()
    with torch.no_grad():
        for name in ("conv1", "conv2", "fc"):
            getattr(plain, name).weight.copy_(getattr(model, name).weight)
            getattr(plain, name).bias.copy_(getattr(model, name).bias)
    x = _inputs()
    before = _state(model)
    for composite in ("epsilon_plus", "epsilon_gamma_box"):
        ours = sl.explain(model, x, methods="lrp", composite=composite)["lrp"].maps
        ref = sl.explain(plain, x, methods="lrp", composite=composite)["lrp"].maps
        torch.testing.assert_close(ours, ref)
        _assert_same_state(model, before)


# -- the model's own state -------------------------------------------------------------------------


def test_a_train_mode_model_with_frozen_parameters_and_own_hooks_is_left_as_it_was():
    """Train mode with BatchNorm and Dropout, some parameters already frozen, and the user's
    forward, forward-pre and full backward hooks: after explaining and evaluating (also when a
    call raises) every flag, parameter, buffer and hook is as it was, the maps are the eval-mode
    model's, and the user's hooks stay registered and run during the calls."""
    torch.manual_seed(0)
    model = Net(bn=True, drop=True).train()
    model(torch.rand(4, 3, 10, 14))  # running statistics
    model.conv1.weight.requires_grad_(False)
    calls = collections.Counter()
    model.conv2.register_forward_hook(lambda m, i, o: calls.update(["forward"]))
    model.conv1.register_forward_pre_hook(lambda m, i: calls.update(["pre"]))
    model.fc.register_full_backward_hook(lambda m, gi, go: calls.update(["backward"]))
    x = _inputs(h=12, w=20)
    masks = torch.zeros(3, 12, 20, dtype=torch.bool)
    masks[:, 2:8, 3:12] = True
    before = _state(model)

    methods = {
        "saliency": {},
        "integrated_gradients": {"n_steps": 4},
        "gradcam": {"layer": "conv2"},
        "occlusion": {"window": 4, "stride": 4},
        "lrp": {},
    }
    ex = sl.explain(model, x, methods=methods)
    _assert_same_state(model, before)
    model.eval()
    reference = _saliency_by_hand(model, x)
    model.train()
    torch.testing.assert_close(ex["saliency"].maps, reference)
    metrics = {
        "deletion": {"steps": 3},
        "completeness": {},
        "pointing_game": {},
        "max_sensitivity": {"n_samples": 2},
        "model_randomisation": {"layers": 2},
    }
    rep = sl.evaluate(model, x, ex, metrics=metrics, masks=masks, references=False)
    assert torch.isfinite(rep["gradcam"]["model_randomisation"].values).all()
    _assert_same_state(model, before)
    assert calls["forward"] and calls["pre"] and calls["backward"]
    with pytest.raises(SaliencelabError, match="out of range"):
        sl.explain(model, x, methods=methods, target=7)
    _assert_same_state(model, before)


def test_inputs_inside_a_graph_are_explained_and_not_kept_with_it():
    """Inputs computed by a graph (requires_grad, non-leaf): the maps equal autograd's gradient,
    the caller's graph gets no gradient, and the explanation's inputs are detached (they kept
    the caller's graph alive)."""
    torch.manual_seed(0)
    model = Net().eval()
    z = torch.rand(2, 3, 10, 14, requires_grad=True)
    x = z * 2.0
    ex = sl.explain(model, x, methods=["saliency", "gradcam"], layer="conv2")
    torch.testing.assert_close(ex["saliency"].maps, _saliency_by_hand(model, x.detach()))
    assert z.grad is None and not ex.inputs.requires_grad
    torch.testing.assert_close(ex.inputs, x.detach())


class NaNForBright(Net):
    """NaN scores for inputs whose mean is above 0.6 (here samples 1 and 3)."""

    def forward(self, x):
        out = super().forward(x)
        bright = x.mean(dim=(1, 2, 3)) > 0.6
        return torch.where(bright[:, None], torch.full_like(out, float("nan")), out)


@pytest.mark.parametrize("method", ["saliency", "occlusion"])
def test_nan_scores_name_the_samples_they_came_from(method):
    """The sentence said "for these inputs" without saying which; on a dataset that leaves the
    user bisecting the batch."""
    x = _inputs(4) * 0.5
    x[[1, 3]] += 0.5
    with pytest.raises(
        SaliencelabError, match=r"NaN or infinite scores \(for the rows of samples 1, 3\)"
    ):
        sl.explain(NaNForBright().eval(), x, methods=method, target=0)


class _ShiftsItsInput(nn.Module):
    """A first layer that changes its input in place (`x -= 0.5`), as some hand-written
    normalisations do."""

    def forward(self, x):
        x -= 0.5
        return x


@pytest.mark.parametrize(
    "methods",
    ["rise", "feature_ablation", "lime", "kernelshap", {"occlusion": {"window": 4, "stride": 2}}],
)
def test_a_model_that_changes_its_input_in_place_leaves_the_callers_tensor_alone(methods):
    """Every probe (layout, BatchNorm folding, activations in place, incremental planning) and
    every pass runs the model on copies of the caller's rows, never on views of them."""
    torch.manual_seed(0)
    net = nn.Sequential(
        _ShiftsItsInput(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip
    x = torch.rand(4, 3, 8, 8)
    kept = x.clone()
    sl.explain(net, x, methods, target=0)
    assert torch.equal(x, kept)
    sl.evaluate(net, x, {"m": torch.rand(4, 8, 8)}, metrics=["deletion", "completeness"],
                target=0, references=False)  # fmt: skip
    assert torch.equal(x, kept)


def test_a_gradient_method_on_a_model_that_changes_its_input_in_place_is_one_sentence():
    net = nn.Sequential(_ShiftsItsInput(), nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.rand(2, 3, 2, 2)
    kept = x.clone()
    with pytest.raises(SaliencelabError, match="changes its input in place.*x = x - mean"):
        sl.explain(net, x, "saliency", target=0)
    assert torch.equal(x, kept)
