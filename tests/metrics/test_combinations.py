"""Features that each work alone, combined: every metric on black boxes, one-score models,
channel and function targets, class lists without a model, tabular maps, text models, boxes.

Each combination gives the number a direct computation gives, or one sentence saying what is
not supported and what to do (never a raw torch error or a silently constant or wrong value).
"""

from __future__ import annotations

import pytest
import torch
from test_bad_input import FAST, MODEL_METRICS  # the same fast settings
from torch import nn

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.metrics.base import metric_classes

PROBABILITY_METRICS = [
    name
    for name in MODEL_METRICS
    if metric_classes()[name](**FAST.get(name, {})).reads_probabilities
]


def test_a_model_with_one_score_is_refused_by_the_probability_metrics(tiny_cnn, images):
    """softmax over one score is 1 whatever the input: deletion and insertion were 1, AOPC and
    ROAD 0, monotonicity 1 and sensitivity-n NaN on every image, silently."""
    x = images[:2]
    one = sl.blackbox(lambda t: tiny_cnn(t)[:, 1])
    maps = x.abs().sum(1)
    assert PROBABILITY_METRICS  # deletion, insertion, aopc, road, monotonicity, ...
    for name in PROBABILITY_METRICS:
        metric = metric_classes()[name](**FAST.get(name, {}))
        with pytest.raises(SaliencelabError, match="^The model gives one score per input, whose"):
            metric(maps, x=x, model=one, target=0)
    for name in set(MODEL_METRICS) - set(PROBABILITY_METRICS):  # the others do not read it
        metric = metric_classes()[name](**FAST.get(name, {}))
        try:
            metric(maps, x=x, model=one, target=0)
        except SaliencelabError as e:
            assert "one score per input" not in str(e), name
    # its logit is what it scores: the same values as the model's class-1 logit
    got = sl.metrics.get("deletion")(steps=4, score="logit")(maps, x=x, model=one, target=0)
    want = sl.metrics.get("deletion")(steps=4, score="logit")(maps, x=x, model=tiny_cnn, target=1)
    torch.testing.assert_close(got.values, want.values)


def test_evaluate_refuses_a_one_score_model_before_any_metric_runs(tiny_cnn, images):
    """The refusal came at the probability metric's first forward, after the metrics before it
    had run (their results lost); now one forward of one row finds it first."""
    x = images[:2]
    rows = []

    def one_score(t: torch.Tensor) -> torch.Tensor:
        rows.append(t.shape[0])
        return tiny_cnn(t)[:, 1]

    one = sl.blackbox(one_score)
    maps = {"mine": x.abs().sum(1)}
    metrics = {"completeness": {"output": "logit"}, "deletion": {"steps": 2}}
    with pytest.raises(SaliencelabError, match="^deletion: The model gives one score per"):
        sl.evaluate(one, x, maps, metrics=metrics, target=0, references=False)
    assert rows == [1]
    metrics = {"completeness": {"output": "logit"}, "deletion": {"steps": 2, "score": "logit"}}
    rep = sl.evaluate(one, x, maps, metrics=metrics, target=0, references=False)
    assert rep["mine"]["deletion"].values.shape == (2,)


def test_maps_of_a_channel_are_scored_only_by_the_metrics_that_read_maps(tiny_cnn, images):
    """Maps explaining a channel record class -1; sl.evaluate scored them against the predicted
    class (deletion of its probability; robustness re-explained the class and compared its maps
    with the channel's), and target=sl.channel(...) was refused as 'not a function' even for
    the metrics that read only the maps."""
    x = images[:3]
    ex = sl.explain(tiny_cnn, x, methods="gradcam", target=sl.channel("features.2", 1))
    maps = ex["gradcam"].maps
    with pytest.raises(SaliencelabError, match="the maps of 'gradcam' explain a channel, neuron"):
        sl.evaluate(tiny_cnn, x, ex, metrics={"deletion": {"steps": 4}}, references=False)
    with pytest.raises(SaliencelabError, match="^The metric max_sensitivity recomputes the maps"):
        sl.evaluate(tiny_cnn, x, ex, metrics={"max_sensitivity": {"n_samples": 2}})
    masks = torch.zeros(3, 12, 12, dtype=torch.bool)
    masks[:, 3:8, 2:9] = True
    rep = sl.evaluate(tiny_cnn, x, ex, metrics=["sparseness", "relevance_mass"], masks=masks)
    own = sl.evaluate(
        tiny_cnn,
        x,
        {"mine": maps},
        metrics=["sparseness", "relevance_mass"],
        masks=masks,
        references=False,
    )
    for metric in ("sparseness", "relevance_mass"):
        torch.testing.assert_close(rep["gradcam"][metric].values, own["mine"][metric].values)
    # the channel given as the target: the same, in sl.evaluate and in a metric object
    rep = sl.evaluate(
        tiny_cnn,
        x,
        {"mine": maps},
        metrics="sparseness",
        target=sl.channel("features.2", 1),
        references=False,
    )
    torch.testing.assert_close(rep["mine"]["sparseness"].values, own["mine"]["sparseness"].values)
    with pytest.raises(SaliencelabError, match="^The metric deletion scores the class the maps"):
        sl.metrics.get("deletion")(steps=4)(maps, x=x, model=tiny_cnn, target=ex["gradcam"].target)
    with pytest.raises(SaliencelabError, match="^The metric deletion scores the class the maps"):
        sl.evaluate(tiny_cnn, x, {"mine": maps}, metrics="deletion", target=lambda o: o[:, 0])


def test_a_list_of_classes_needs_no_model_for_the_map_metrics():
    """A list of class indices was 'Resolving this target needs the model and inputs', where an
    int or a tensor of the same classes was taken."""
    maps = torch.rand(3, 8, 10)
    masks = torch.zeros(3, 8, 10, dtype=torch.bool)
    masks[:, 2:5, 3:7] = True
    metric = sl.metrics.get("pointing_game")(tolerance=0)
    a = metric(maps, masks=masks, target=[0, 2, 1])
    b = metric(maps, masks=masks, target=torch.tensor([0, 2, 1]))
    torch.testing.assert_close(a.values, b.values)
    torch.testing.assert_close(a.extras["target"], torch.tensor([0, 2, 1]))
    with pytest.raises(SaliencelabError, match="^Got 2 targets for a batch of 3 maps"):
        metric(maps, masks=masks, target=[0, 2])


@pytest.mark.parametrize("name", ["model_randomisation", "random_logit"])
def test_randomisation_of_tabular_maps_is_one_sentence(name):
    """It was 'Similarity needs two (B, H, W) batches of maps of the same shape, got (4, 6) and
    (4, 6)' (the same shapes)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 6)
    ex = sl.explain(mlp, x, methods="saliency")
    with pytest.raises(SaliencelabError, match=rf"^The metric {name} compares \(B, H, W\) image"):
        sl.evaluate(mlp, x, ex, metrics={name: {"similarity": "spearman"}})


def test_a_black_box_in_the_metrics_that_need_its_layers_is_named(tiny_cnn, images):
    model = sl.blackbox(lambda t: tiny_cnn(t))
    ex = sl.explain(model, images[:2], methods="occlusion", window=4, stride=4)
    for name in ("model_randomisation", "input_invariance"):
        with pytest.raises(SaliencelabError, match=f"^{name} .*which a black-box function does"):
            sl.evaluate(model, images[:2], ex, metrics=name, references=False)
        with pytest.raises(SaliencelabError, match=f"^{name} .*which a black-box function does"):
            metric_classes()[name]()(
                ex["occlusion"].maps, x=images[:2], model=model, explainer="occlusion"
            )


def test_one_flat_box_is_one_sentence():
    """[x0, y0, x1, y1] without the list of an image's boxes was a raw IndexError."""
    with pytest.raises(SaliencelabError, match=r"not a flat list of numbers; give one image's"):
        sl.metrics.boxes_to_masks([1, 2, 5, 6], (8, 8))
    masks = sl.metrics.boxes_to_masks([[1, 2, 5, 6]], (8, 8))
    assert masks.shape == (1, 8, 8) and int(masks.sum()) == 16


# -- text ------------------------------------------------------------------------------------------

WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] a the movie was great man is playing guitar .".split()


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=24,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label={0: "negative", 1: "positive"},
    )
    path = tmp_path_factory.mktemp("bert")
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        model_max_length=24,
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(path)
    return sl.load_model(f"hf:{path}")


def test_metrics_that_run_a_text_model_are_one_sentence(text_model):
    """The robustness metrics failed with a raw size mismatch, completeness blamed 'a method'
    for removing every token, random_logit spoke of Similarity shapes."""
    texts = ["the movie was great", "a man is playing guitar ."]
    ex = sl.explain(text_model, texts, methods="saliency", target="positive")
    x = text_model.preprocess(texts)
    for name in MODEL_METRICS:
        metric = metric_classes()[name](**FAST.get(name, {}))
        explainer = "saliency" if "explainer" in metric.needs else None
        with pytest.raises(SaliencelabError, match=f"^The metric {name} runs the model on chan"):
            metric(ex["saliency"].maps, x=x, model=text_model, target=1, explainer=explainer)
    with pytest.raises(SaliencelabError, match="^The metric deletion runs the model on changed"):
        sl.evaluate(text_model, texts, ex)  # the default metrics; the texts as sl.explain takes


def test_text_maps_are_scored_on_each_texts_own_words(text_model):
    """(B, W) word maps are padded with zeros after a shorter text's words: its sparseness
    counted them as words and depended on the texts beside it."""
    texts = ["the movie was great", "a man is playing guitar ."]
    ex = sl.explain(text_model, texts, methods="saliency", target="positive")
    masks = torch.zeros(2, 6, dtype=torch.bool)
    masks[0, 1], masks[1, 4] = True, True
    metrics = ["sparseness", "roc_auc"]
    rep = sl.evaluate(text_model, texts, ex, metrics=metrics, masks=masks)
    for i, text in enumerate(texts):
        one = sl.explain(text_model, [text], methods="saliency", target="positive")
        n = len(one["saliency"].tokens[0])
        alone = sl.evaluate(text_model, [text], one, metrics=metrics, masks=masks[i : i + 1, :n])
        for metric in metrics:
            torch.testing.assert_close(
                rep["saliency"][metric].values[i : i + 1], alone["saliency"][metric].values
            )
