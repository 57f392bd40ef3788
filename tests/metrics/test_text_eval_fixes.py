"""Text maps in `sl.evaluate` and `Metric.update`: each text scored on its own words, in any
batching; maps, masks and messages that do not fit the texts refused in one sentence."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("transformers")

import saliencelab as sl  # noqa: E402
from saliencelab.core.errors import SaliencelabError  # noqa: E402

# 4, 6 and 1 words; the first and last are whole tokens (their words read back from embeddings)
TEXTS = ["the movie was great", "a man is playing guitar .", "cat"]


@pytest.fixture(scope="module")
def tm(classifier_dir) -> sl.Model:
    return sl.load_model(f"hf:{classifier_dir}")


@pytest.fixture(scope="module")
def ex(tm) -> sl.Explanation:
    return sl.explain(tm, TEXTS, methods="saliency", target="positive")


def _sparseness(row: torch.Tensor) -> float:
    """The Gini index of |row| (sparseness), by hand on a text's own words."""
    v = row.abs().double().sort().values
    n = v.numel()
    if n == 1 or float(v.sum()) == 0:
        return 0.0
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * k - n - 1) * v).sum() / (n * v.sum()))


@pytest.mark.parametrize("shape", [(3, 100), (3, 2), (3, 4, 4)])
def test_text_maps_of_another_shape_are_refused(tm, shape):
    with pytest.raises(SaliencelabError, match=r"^m: The maps have shape .* give \(3, 6\) word"):
        sl.evaluate(tm, TEXTS, {"m": torch.rand(*shape)}, metrics="sparseness")


def test_maps_of_other_texts_are_refused(tm, ex):
    other = [TEXTS[2], TEXTS[0], TEXTS[1]]
    with pytest.raises(SaliencelabError, match="these maps explain other texts"):
        sl.evaluate(tm, other, ex, metrics="sparseness", references=False)


def test_plain_tensor_maps_score_each_text_on_its_own_words(tm, ex):
    maps = ex["saliency"].maps
    words = ex["saliency"].tokens
    hand = [_sparseness(maps[i, : len(w)]) for i, w in enumerate(words)]
    by_attr = sl.evaluate(tm, TEXTS, ex, metrics="sparseness")["saliency"]["sparseness"].values
    by_tensor = sl.evaluate(tm, TEXTS, {"m": maps}, metrics="sparseness")["m"]["sparseness"]
    torch.testing.assert_close(by_tensor.values, by_attr)
    torch.testing.assert_close(by_tensor.values, torch.tensor(hand, dtype=by_attr.dtype))
    assert by_tensor.values[2] == 0.0  # "cat": one word


def test_metric_update_scores_each_text_on_its_own_words(tm, ex):
    maps = ex["saliency"].maps
    words = ex["saliency"].tokens
    hand = torch.tensor([_sparseness(maps[i, : len(w)]) for i, w in enumerate(words)])
    metric = sl.metrics.get("sparseness")()
    whole = [TEXTS[0], TEXTS[2]]  # engine inputs: words read back from whole-token texts
    one = sl.explain(tm, whole, methods="saliency", target="positive")["saliency"].maps
    got = metric.update(one, x=tm.preprocess(whole), model=tm)
    torch.testing.assert_close(got, hand[[0, 2]].to(got.dtype), atol=1e-5, rtol=1e-4)
    got = metric.update(maps, x=TEXTS, model=tm)  # the texts themselves
    torch.testing.assert_close(got, hand.to(got.dtype))
    # texts in other batches, given as texts: the same values as each alone
    metric.reset()
    for rows in ([0, 2], [1]):
        batch = [TEXTS[i] for i in rows]
        one = sl.explain(tm, batch, methods="saliency", target="positive")
        metric.update(one["saliency"].maps, x=batch, model=tm)
    values = metric.compute().values
    torch.testing.assert_close(values, hand[[0, 2, 1]].to(values.dtype), atol=1e-5, rtol=1e-4)


def test_masks_past_a_texts_words_are_refused(tm, ex):
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[0, 5], masks[1, 1], masks[2, 0] = True, True, True  # text 0 has 4 words
    with pytest.raises(SaliencelabError, match=r"^The mask of text 0 \('the movie was great'\)"):
        sl.evaluate(tm, TEXTS, ex, metrics="relevance_mass", masks=masks)
    metric = sl.metrics.get("relevance_mass")()
    with pytest.raises(SaliencelabError, match=r"^The mask of text 0 "):
        metric.update(ex["saliency"].maps, x=TEXTS, model=tm, masks=masks)


def test_empty_mask_warning_sees_each_texts_words(tm, ex):
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[1, 1], masks[2, 0] = True, True  # text 0's mask is empty
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rep = sl.evaluate(tm, TEXTS, ex, metrics="relevance_mass", masks=masks, references=False)
    assert any("samples 0)" in str(w.message) for w in seen)
    assert torch.isnan(rep["saliency"]["relevance_mass"].values[0])


def test_random_references_on_texts_say_texts_get_none(tm, ex):
    with pytest.raises(SaliencelabError, match=r"^Reference maps are images .*texts get none"):
        sl.evaluate(tm, TEXTS, ex, metrics="sparseness", references="random")


def test_top_k_larger_than_a_text_names_the_text(tm, ex):
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[0, 0], masks[1, 0], masks[2, 0] = True, True, True
    with pytest.raises(SaliencelabError, match=r"^Text 2 \('cat'\) has 1 word: k=2"):
        sl.evaluate(tm, TEXTS, ex, metrics={"top_k_intersection": {"k": 2}}, masks=masks)
