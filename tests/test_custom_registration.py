"""Users' own methods and metrics (`sl.register`, `register_metric`): what they return and how
they are declared is checked in one sentence, and a name already taken is never replaced by
accident."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.core.registry import _REGISTRY, get_method, register
from saliencelab.metrics import Metric, register_metric
from saliencelab.metrics.base import _METRICS, Scores


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    return net.eval()


@pytest.fixture
def x():
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def scratch():
    """Names registered by a test, removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        _REGISTRY.pop(name, None)
        _METRICS.pop(name, None)


def _method(scratch, name, fn, **kw):
    scratch.append(name)
    return register(name, family="gradient", cost="1", **kw)(fn)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (
            lambda ctx: torch.rand(2, 3, 8, 8),
            "The method m returned attributions of shape (2, 3, 8, 8) for inputs of shape "
            "(4, 3, 8, 8); return one row per input, batch axis first ((B, C, H, W) or (B, h, w) "
            "for images).",
        ),
        (
            lambda ctx: torch.rand(4, 64),
            "The method m returned attributions of shape (4, 64) for inputs of shape (4, 3, 8, 8)",
        ),
        (
            lambda ctx: torch.ones(4, 8, 8, dtype=torch.long),
            "The method m returned attributions of dtype torch.int64; return floating-point "
            "values (e.g. .float()).",
        ),
        (
            lambda ctx: None,
            "The method m returned NoneType; a method returns the attributions of its batch as a "
            "tensor (B, ...), or a MethodOutput.",
        ),
        (
            lambda ctx: ctx.x.numpy(),
            "The method m returned ndarray",
        ),
        (
            lambda ctx: sl.core.context.MethodOutput(ctx.x, maps=torch.rand(4, 1, 8, 8)),
            "The method m returned maps of shape (4, 1, 8, 8) for inputs of shape (4, 3, 8, 8)",
        ),
    ],
)
def test_a_method_returning_something_else_is_one_sentence(model, x, scratch, returned, message):
    _method(scratch, "m", returned)
    with pytest.raises(SaliencelabError) as info:
        sl.explain(model, x, "m")
    assert str(info.value).startswith(message)


def test_a_method_inside_smoothgrad_is_checked_too(model, x, scratch):
    """SmoothGrad calls its base method on the noisy copies: a base giving a fixed batch is
    refused there too (it was reshaped into the wrong samples or failed in reshape)."""
    _method(scratch, "fixed", lambda ctx: torch.rand(4, 3, 8, 8))
    with pytest.raises(SaliencelabError, match=r"The method fixed returned attributions of shape"):
        sl.explain(model, x, {"smoothgrad": {"base": "fixed", "n_samples": 2}})


def test_a_good_custom_method_still_explains(model, x, scratch):
    def grad_squared(ctx, *, power: float = 2.0):
        return ctx.capture(input_grad=True).input_grad.abs() ** power

    _method(scratch, "grad_squared_test", grad_squared)
    ex = sl.explain(model, x, {"grad_squared_test": {"power": 1.0}, "saliency": {}})
    torch.testing.assert_close(ex["grad_squared_test"].maps, ex["saliency"].maps)


def test_options_without_a_default_or_by_position_are_refused_at_registration(scratch):
    def required(ctx, *, scale):
        return ctx.x * scale

    def positional(ctx, scale):
        return ctx.x * scale

    with pytest.raises(SaliencelabError) as info:
        _method(scratch, "req", required)
    assert str(info.value) == (
        "The option 'scale' of method test_options_without_a_default_or_by_position_are_refused_"
        "at_registration.<locals>.required has no default; give it one (`*, scale=...`): "
        "sl.explain passes only the options a user names."
    )

    def positional_default(ctx, scale=2.0):
        return ctx.x * scale

    with pytest.raises(SaliencelabError, match=r"takes 'scale' by position, which sl.explain"):
        _method(scratch, "pos", positional)
    with pytest.raises(SaliencelabError) as info:  # it was registered with no options
        _method(scratch, "pos", positional_default)
    assert str(info.value).endswith(
        "make it an option after a `*`: def positional_default(ctx, *, scale=2.0)."
    )
    with pytest.raises(SaliencelabError, match=r"takes no context; a method is fn\(ctx"):
        _method(scratch, "noctx", lambda: None)
    assert not {"req", "pos", "noctx"} & set(_REGISTRY)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": 42}, "register(...): the name must be a non-empty string, not int 42."),
        ({"name": ""}, "register(...): the name must be a non-empty string, not str ''."),
        ({"family": None}, "register(...): the family must be a non-empty string, not NoneType"),
        ({"cost": 1}, "register(...): the cost must be a non-empty string, not int 1."),
    ],
)
def test_register_refuses_names_that_are_not_strings(kw, message):
    args = {"name": "fine", "family": "gradient", "cost": "1", **kw}
    name = args.pop("name")
    before = dict(_REGISTRY)
    with pytest.raises(SaliencelabError) as info:
        register(name, **args)(lambda ctx: ctx.x)
    assert str(info.value).startswith(message)
    assert _REGISTRY == before
    assert len(sl.methods()) == len(before)  # listing still works (it sorted ints with strs)


def test_a_taken_name_is_refused_unless_replace(model, x, scratch):
    builtin = get_method("saliency")
    with pytest.raises(SaliencelabError) as info:
        register("saliency", family="gradient", cost="1")(lambda ctx: torch.zeros_like(ctx.x))
    assert str(info.value) == (
        "A method named 'saliency' is already registered "
        f"({builtin.fn.__module__}.{builtin.fn.__qualname__}); pick another name, or pass "
        "replace=True to replace it."
    )
    assert get_method("saliency") is builtin

    def first(ctx):
        return torch.ones_like(ctx.x)

    _method(scratch, "mine", first)

    def other(ctx):
        return torch.zeros_like(ctx.x)

    with pytest.raises(SaliencelabError, match="A method named 'mine' is already registered"):
        _method(scratch, "mine", other)
    _method(scratch, "mine", other, replace=True)
    assert get_method("mine").fn is other


def test_the_same_function_defined_again_replaces_itself(scratch):
    """A notebook cell run twice defines a new function of the same module and name."""
    for value in (1.0, 2.0):

        def cell(ctx, *, v: float = value):
            return ctx.x * v

        _method(scratch, "cell", cell)
    assert get_method("cell").options == {"v": 2.0}


def _register_metric(scratch, cls):
    scratch.append(cls.name)
    return register_metric(cls)


def test_a_metric_without_init_takes_no_options(model, x, scratch):
    class NoInit(Metric):
        name = "no_init_test"
        family = "complexity"

        def score(self, batch):
            return Scores(values=batch.maps.flatten(1).mean(1))

    _register_metric(scratch, NoInit)
    maps = {"m": x.mean(1)}
    rep = sl.evaluate(model, x, maps, metrics=["no_init_test"], references=False)
    torch.testing.assert_close(rep["m"]["no_init_test"].values, x.mean(1).flatten(1).mean(1))
    with pytest.raises(SaliencelabError) as info:
        sl.evaluate(model, x, maps, metrics={"no_init_test": {"typo": 1}}, references=False)
    assert str(info.value) == "The metric no_init_test takes no options."
    with pytest.raises(SaliencelabError, match="takes no options"):
        NoInit(typo=1)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (
            lambda b: Scores(values=torch.zeros(2)),
            "The metric bad_score_test's score() returned values of shape (2,) for a batch of "
            "4; return a (4,) tensor, one value per sample.",
        ),
        (
            lambda b: Scores(values=b.maps.mean()),
            "The metric bad_score_test's score() returned values of shape () for a batch of 4",
        ),
        (
            lambda b: b.maps.flatten(1).mean(1),
            "The metric bad_score_test's score() returned Tensor; return Scores(values=...) with "
            "one value per sample.",
        ),
        (
            lambda b: Scores(values=[0.0] * 4),
            "The metric bad_score_test's score() returned values of shape list for a batch of 4",
        ),
    ],
)
def test_a_metric_scoring_something_else_is_one_sentence(model, x, scratch, returned, message):
    class BadScore(Metric):
        name = "bad_score_test"

        def score(self, batch):
            return returned(batch)

    _register_metric(scratch, BadScore)
    with pytest.raises(SaliencelabError) as info:
        sl.evaluate(model, x, {"m": x.mean(1)}, metrics=["bad_score_test"], references=False)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("attribute", "value", "wanted"),
    [
        ("name", 42, "a non-empty string"),
        ("name", "", "a non-empty string"),
        ("family", None, "a string"),
        ("direction", "up", "'higher' or 'lower' or 'none'"),
        ("value_range", (1, 0), "(low, high) numbers with low <= high"),
        ("value_range", [0, 1], "(low, high) numbers with low <= high"),
        ("needs", ("modle",), "a tuple of 'model', 'masks', 'explainer', 'attributions'"),
    ],
)
def test_register_metric_checks_the_class_attributes(attribute, value, wanted):
    cls = type("Odd", (Metric,), {"name": "odd_test", attribute: value})
    before = dict(_METRICS)
    with pytest.raises(SaliencelabError) as info:
        register_metric(cls)
    assert str(info.value) == f"The metric Odd has {attribute} = {value!r}; it must be {wanted}."
    assert _METRICS == before
    assert sl.metrics.available() == sorted(before)  # listing still works


def test_register_metric_refuses_a_taken_name_and_non_metrics(scratch):
    taken = type("Deletion2", (Metric,), {"name": "deletion"})
    with pytest.raises(SaliencelabError) as info:
        register_metric(taken)
    assert str(info.value).startswith("A metric named 'deletion' is already registered (")
    assert str(info.value).endswith("; give Deletion2 another name.")
    with pytest.raises(SaliencelabError, match="decorates a subclass of sl.metrics.Metric"):
        register_metric(object)
    for _ in range(2):  # a notebook cell defining the same class twice

        class Again(Metric):
            name = "again_test"

        _register_metric(scratch, Again)
    assert _METRICS["again_test"] is Again
