"""The method registry: `register(choices=...)`, what each method declares it accepts."""

from __future__ import annotations

import pytest
import torch

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.core.registry import _REGISTRY, get_method, quoted, register


def _method(ctx, *, fusion: str = "mean", row: int | str = "auto") -> torch.Tensor:
    """A test method."""
    return ctx.x


@pytest.fixture
def scratch_name():
    name = "_test_registry_method"
    yield name
    _REGISTRY.pop(name, None)


def test_register_stores_choices(scratch_name):
    register(scratch_name, family="test", cost="0", choices={"fusion": ["'mean'", "'max'"]})(
        _method
    )
    spec = get_method(scratch_name)
    assert spec.choices == {"fusion": ("'mean'", "'max'")}
    # one readable line (the dataclass repr printed the function and every field)
    assert repr(spec) == (
        f"<method {scratch_name} (test): passes per sample 0; fusion='mean', row='auto'>"
    )
    assert quoted(("mean", "max")) == ("'mean'", "'max'")


def test_register_refuses_choices_for_an_unknown_option(scratch_name):
    with pytest.raises(SaliencelabError) as info:
        register(scratch_name, family="test", cost="0", choices={"fusoin": ("'mean'",)})(_method)
    assert str(info.value) == (
        f"register('{scratch_name}', choices=...) names 'fusoin', which is not an option of "
        "_method. Did you mean: fusion? Its options: fusion, row."
    )
    assert scratch_name not in _REGISTRY
    with pytest.raises(SaliencelabError, match="must map to a tuple of strings"):
        register(scratch_name, family="test", cost="0", choices={"fusion": "'mean'"})


def test_builtin_choices_come_from_the_constants_the_methods_check():
    from saliencelab.methods.attention.rollout import HEAD_FUSIONS, ROWS
    from saliencelab.methods.cam.common import FUSIONS
    from saliencelab.methods.gradient.baselines import DISTRIBUTIONS, INPUT_BASELINES
    from saliencelab.methods.perturbation.features import BASELINES, FEATURE_KINDS
    from saliencelab.methods.relevance.lrp import PRESETS

    def starts_with(name: str, option: str, names: tuple[str, ...]) -> None:
        declared = get_method(name).choices[option]
        assert declared[: len(names)] == tuple(map(repr, names)), (name, option)

    starts_with("attention_rollout", "head_fusion", HEAD_FUSIONS)
    for name in ("attention_rollout", "grad_rollout"):
        starts_with(name, "row", ROWS)
    for spec in sl.methods():
        if "fusion" in spec.options:
            starts_with(spec.name, "fusion", FUSIONS)
    starts_with("integrated_gradients", "baselines", INPUT_BASELINES)
    starts_with("deeplift_shap", "baselines", DISTRIBUTIONS)
    starts_with("occlusion", "baseline", BASELINES)
    assert get_method("lime").choices["feature_mask"][1:3] == tuple(map(repr, FEATURE_KINDS))
    starts_with("lrp", "composite", PRESETS)


def test_rollout_row_check_uses_its_names():
    from saliencelab.methods.attention.rollout import _check_row

    for row in ("auto", "mean", 0, -1):
        _check_row(row)
    with pytest.raises(SaliencelabError) as info:
        _check_row("first")
    assert str(info.value) == (
        "row must be 'auto', 'mean' or a token index (0 for the class token), not 'first'."
    )


def _documented(ctx, *, steps: int = 3, mode: str = "a") -> torch.Tensor:
    """First line of the summary.

    More detail that the summary leaves out.
    """
    return ctx.x


def test_register_keeps_keyword_only_options_and_the_first_doc_line(scratch_name):
    register(scratch_name, family="test", cost="0", rowwise=lambda o: o["mode"] == "b")(_documented)
    spec = get_method(scratch_name)
    assert spec.options == {"steps": 3, "mode": "a"}
    assert spec.summary == "First line of the summary."
    assert not spec.is_rowwise({}) and spec.is_rowwise({"mode": "b"})  # the call's options win


def _wrapped(ctx) -> torch.Tensor:
    """A summary sentence long enough that it wraps
    onto a second line.

    More detail.
    """
    return ctx.x


def test_the_summary_is_the_whole_first_paragraph(scratch_name):
    """`saliencelab methods` and the README's table show the summary: a first sentence that wraps
    is kept whole (the `random` reference map's used to stop at "seeded with `seed` and the")."""
    register(scratch_name, family="test", cost="0")(_wrapped)
    assert get_method(scratch_name).summary == (
        "A summary sentence long enough that it wraps onto a second line."
    )
    cut = [s.name for s in sl.methods() if not s.summary.endswith(".")]
    assert cut == [], cut


def test_methods_are_listed_by_family_then_name():
    specs = sl.methods()
    keys = [(s.family, s.name) for s in specs]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert len({s.family for s in specs}) > 1
