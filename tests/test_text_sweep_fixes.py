"""Text fixes from a sweep: signed sums of guided backprop, rollout on GPT-2's classifier, a
decoder classifier without pad_token_id, truncation_side="left", the comparison text's cut,
leave-one-out of a one-word text, hints for a missing pad token, and rendering bad indices.

Tiny randomly initialised models built offline (the helpers of test_text.py); nothing is
downloaded.
"""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("transformers")

from test_text import (  # noqa: E402
    _cli_app,
    _gpt2_config,
    _one_sentence,
    _tokenizer,
)

import saliencelab as sl  # noqa: E402
from saliencelab.core.errors import SaliencelabError  # noqa: E402
from saliencelab.text import continuation, similarity_to, terminal_text, text_html  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny sentence encoder (BertModel, mean pooling from the config default)."""
    from test_text import _bert_config
    from transformers import BertModel

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("bert-enc")
    BertModel(_bert_config()).eval().save_pretrained(path)
    _tokenizer(bert=True).save_pretrained(path)
    return path


def _gpt2_classifier(path, **config):
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(3)
    config = _gpt2_config(id2label={0: "negative", 1: "positive"}, **config)
    GPT2ForSequenceClassification(config).eval().save_pretrained(path)
    _tokenizer(bert=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_classifier_no_pad_id_dir(tmp_path_factory):
    """GPT-2's default: no pad_token_id in the config (Hugging Face then refuses batches > 1)."""
    return _gpt2_classifier(tmp_path_factory.mktemp("gpt2-cls-nopad"))


# -- 1: signed sums of bare-tensor methods ---------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*no nn.ReLU")  # BERT's GELU: the plain gradient
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_signed_sums_of_guided_backprop_and_deconvnet_are_refused(classifier, method):
    """They return a bare tensor (no `signed` of their own), so the check of vanishing signed
    sums was skipped: word scores ~1e-7 against per-token |attributions| of 2 to 11. BERT's
    embedding LayerNorm makes each token's sum 0; the same refusal as saliency(absolute=False)
    now, and their L2 token scores are the norm of the attributions."""
    with pytest.raises(SaliencelabError, match="sums to ~0 over each token's embedding") as e:
        sl.explain(classifier, "bad plot", methods=method, target=1)
    _one_sentence(e)
    a = sl.explain(classifier.with_token_scores("l2"), "bad plot", methods=method, target=1)[method]
    norms = a.attributions.norm(dim=-1)[0, 1:3]  # "bad", "plot" after [CLS]
    torch.testing.assert_close(a.maps[0], norms)
    assert bool((norms > 0).all())


# -- 2: rollout on GPT-2's sequence classifier -----------------------------------------------------


def _rollout_by_hand(hf, ids, grad_weighted):
    """Last row of R = Π rownorm(½Ā + ½I) (attention rollout) or Π (I + E_h[(∇A ⊙ A)⁺])
    (gradient rollout, of the positive logit) from Hugging Face's eager attentions."""
    out = hf(input_ids=torch.tensor([ids]), output_attentions=True)
    att = out.attentions
    grads = [None] * len(att)
    if grad_weighted:
        for a in att:
            a.retain_grad()
        out.logits[0, 1].backward()
        grads = [a.grad for a in att]
    n = len(ids)
    eye = torch.eye(n, dtype=torch.float64)
    r = eye
    for a, g in zip(att, grads, strict=True):
        a = a[0].detach().double()
        if grad_weighted:
            step = eye + (g[0].double() * a).clamp(min=0).mean(0)
        else:
            step = 0.5 * a.mean(0) + 0.5 * eye
            step = step / step.sum(1, keepdim=True)
        r = step @ r
    return r[-1]


def test_rollouts_on_a_gpt2_classifier_are_those_of_its_attentions(gpt2_classifier_dir):
    """GPT-2 declares its attention as OutputRecorder(GPT2Attention, layer_name='.attn'); any
    recorder with a layer name was skipped, so rollouts said "The model has no attention layer
    saliencelab can read". Now the last row (the position it scores) of R by hand, alone and
    beside a longer text (left padding); the causal LM still says rollout is for encoders."""
    from transformers import AutoModelForSequenceClassification

    tm = sl.load_model(f"hf:{gpt2_classifier_dir}")
    hf = AutoModelForSequenceClassification.from_pretrained(
        gpt2_classifier_dir, attn_implementation="eager"
    ).eval()
    short, long = "the movie was great", "a man is playing guitar and the cat sat on the mat"
    ids = tm.tokenizer(short)["input_ids"]
    methods = ["attention_rollout", "grad_rollout"]
    implementation = tm.module.hf.config._attn_implementation
    alone = sl.explain(tm, [short], methods=methods, target="positive")
    beside = sl.explain(tm, [long, short], methods=methods, target="positive")
    for method, grad_weighted in zip(methods, (False, True), strict=True):
        want = _rollout_by_hand(hf, ids, grad_weighted).float()
        n = len(ids)
        torch.testing.assert_close(alone[method].piece_scores[0], want, atol=1e-6, rtol=1e-5)
        got = beside[method].piece_scores[1, -n:]  # left padded
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert (beside[method].piece_scores[1, :-n] == 0).all()
    assert tm.module.hf.config._attn_implementation == implementation  # restored


def test_rollout_on_a_gpt2_causal_lm_still_says_it_is_for_encoders(gpt2_dir):
    lm = sl.load_model(f"hf:{gpt2_dir}")
    with pytest.raises(SaliencelabError) as e:
        sl.explain(lm, "the cat sat", methods="attention_rollout", target=continuation(" mat"))
    assert _one_sentence(e).startswith("attention_rollout is for encoders")


def _tiny_bart(path):
    from transformers import BartConfig, BartForSequenceClassification

    torch.manual_seed(4)
    config = BartConfig(
        vocab_size=_tokenizer(bert=False).vocab_size,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        max_position_embeddings=64,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    model = BartForSequenceClassification(config).eval()
    model.save_pretrained(path)
    _tokenizer(bert=False).save_pretrained(path)
    return model


def test_an_encoder_decoder_is_refused_when_loaded_and_by_the_rollouts(tmp_path):
    """GPT-2's layer names made the attention search match BART's `self_attn` in both its
    encoder and its decoder (and the decoder's cross-attention): a rollout would chain
    attentions over other tokens, so the recorder refuses an encoder-decoder. Loading one as a
    text model raised transformers' NotImplementedError (BART takes no input embeddings)."""
    from saliencelab.core.attention import AttentionRecorder, attention_layers
    from saliencelab.core.state import Hooks

    bart = _tiny_bart(tmp_path)
    implementation = bart.config._attn_implementation
    assert {"model.encoder.layers.0.self_attn", "model.decoder.layers.0.self_attn"} <= {
        layer.name for layer in attention_layers(bart)
    }
    with pytest.raises(SaliencelabError) as e:
        sl.load_model(f"hf:{tmp_path}")
    assert "encoder-decoder (bart)" in _one_sentence(e)
    for gradients in (False, True):
        with Hooks() as hooks, pytest.raises(SaliencelabError) as e:
            AttentionRecorder(gradients=gradients).install(bart, hooks)
        assert "encoder-decoder" in _one_sentence(e)
    assert bart.config._attn_implementation == implementation
    assert not any(m._forward_hooks for m in bart.modules())


# -- 3: a decoder classifier without pad_token_id --------------------------------------------------


def test_a_decoder_classifier_without_pad_token_id_runs_batches(gpt2_classifier_no_pad_id_dir):
    """Hugging Face's GPT-2 classifier refuses batches > 1 when its config has no
    pad_token_id (GPT-2's default): integrated gradients, leave-one-out and any batch of two
    texts raised a raw ValueError. From embeddings it reads the last position, which saliencelab
    pads on the left, so the results are those of the same model with pad_token_id set, and of
    each text alone; the config is left without a pad_token_id, also when the model raises."""
    path = gpt2_classifier_no_pad_id_dir
    tm = sl.load_model(f"hf:{path}")
    assert tm.module.hf.config.pad_token_id is None and tm.padding_side == "left"
    ref = sl.load_model(f"hf:{path}")
    ref.module.hf.config.pad_token_id = 0
    texts = ["the movie was great", "bad plot"]
    methods = {"integrated_gradients": {"n_steps": 4}, "leave_one_out": {}, "saliency": {}}
    got = sl.explain(tm, texts, methods=methods, target="positive")
    want = sl.explain(ref, texts, methods=methods, target="positive")
    for name in methods:
        torch.testing.assert_close(got[name].maps, want[name].maps, msg=name)
    for i, text in enumerate(texts):  # saliency of one text ran before the fix too
        alone = sl.explain(tm, [text], methods="saliency", target="positive")["saliency"]
        n = len(alone.tokens[0])
        torch.testing.assert_close(got["saliency"].maps[i, :n], alone.maps[0])
    assert tm.module.hf.config.pad_token_id is None

    class Boom(Exception):
        pass

    def boom(*args):
        raise Boom

    handle = tm.module.hf.score.register_forward_hook(boom)
    try:
        with pytest.raises(Boom):
            sl.explain(tm, texts, methods="saliency", target="positive")
    finally:
        handle.remove()
    assert tm.module.hf.config.pad_token_id is None


def test_cli_explains_a_decoder_classifier_without_pad_token_id(
    gpt2_classifier_no_pad_id_dir, runner
):
    """It printed a traceback (ValueError: Cannot handle batch sizes > 1 ...)."""
    result = runner.invoke(
        _cli_app(),
        [
            "explain-text",
            "the movie",
            "--model",
            f"hf:{gpt2_classifier_no_pad_id_dir}",
            "--option",
            "n_steps=4",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "movie" in result.output and "Traceback" not in result.output


# -- 4: truncation_side="left" ---------------------------------------------------------------------


def test_a_left_truncating_tokenizer_still_cuts_the_end_with_a_warning(classifier_dir, caplog):
    """A tokenizer saved with truncation_side="left" dropped the start of a long text with no
    warning and no cut mark (words 'sat on the mat', cut None). Texts are cut at their end as
    documented; the tokenizer keeps its setting."""
    tm = sl.load_model(f"hf:{classifier_dir}", max_length=6)
    tm.tokenizer.truncation_side = "left"
    text = "the movie was great . the cat sat on the mat"
    with caplog.at_level(logging.WARNING, logger="saliencelab"):
        a = sl.explain(tm, [text], methods="saliency", target=1)["saliency"]
    kept = text.split()[:4]  # 6 tokens - [CLS] - [SEP]; one token per word here
    end = len(" ".join(kept))
    assert a.tokens[0] == kept and a.extras["cut"] == [end]
    (message,) = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
    assert message.startswith("Text 1 is longer") and f"cut after character {end}" in message
    assert terminal_text(a, 0).plain == " ".join(kept) + " … (cut: the rest is not explained)"
    assert tm.tokenizer.truncation_side == "left"


# -- 5: the comparison text's cut ------------------------------------------------------------------


def test_a_cut_comparison_text_is_named_as_such(encoder_dir, caplog):
    """The comparison text of similarity_to, cut, was reported as the user's "Text 1"."""
    tm = sl.load_model(f"hf:{encoder_dir}", max_length=6)
    target = similarity_to("the cat sat on the mat . the movie was great")
    with caplog.at_level(logging.WARNING, logger="saliencelab"):
        a = sl.explain(tm, ["a man", "bad"], methods="saliency", target=target)["saliency"]
    (message,) = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
    end = len("the cat sat on")
    assert message.startswith("The comparison text of similarity_to is longer than the 6 tokens")
    assert f"cut after character {end}" in message and "Text 1" not in message
    assert "cut" not in a.extras  # the explained texts were not cut


# -- 6: leave-one-out of a one-word text -----------------------------------------------------------


def test_leave_one_out_of_a_decoder_classifiers_only_word(gpt2_classifier_dir, classifier):
    """Deleting the only word of a text left a GPT-2 classifier's row empty (no special
    tokens): the whole batch failed with "A text input row has no token left ... use ...
    leave_one_out". Now the sentence causal LMs get; replacing it works (the drop by hand) and
    BERT, whose [CLS] and [SEP] stay, still deletes a one-word text's word."""
    tm = sl.load_model(f"hf:{gpt2_classifier_dir}")
    for unit in ("word", "token"):
        with pytest.raises(SaliencelabError, match="cannot delete 'movie' from text 2") as e:
            sl.explain(tm, ["the movie", "movie"], methods="leave_one_out", target=1, unit=unit)
        message = _one_sentence(e)
        assert f"the text's only {unit}" in message and "removal='pad'" in message
        assert "use saliency" not in message and "'mask'" not in message  # no [MASK] here
    ex = sl.explain(tm, ["the movie", "movie"], methods="leave_one_out", target=1, removal="pad")
    hf = tm.module.hf
    emb = hf.get_input_embeddings().weight.detach()
    movie, pad = tm.tokenizer("movie")["input_ids"][0], tm.tokenizer.pad_token_id
    with torch.no_grad():
        drop = hf(inputs_embeds=emb[[movie]][None]).logits[0, 1]
        drop = drop - hf(inputs_embeds=emb[[pad]][None]).logits[0, 1]
    torch.testing.assert_close(ex["leave_one_out"].maps[1, 0], drop, atol=1e-5, rtol=1e-5)

    bert = sl.explain(classifier, ["movie"], methods="leave_one_out", target=1)
    ids = classifier.tokenizer("movie")["input_ids"]  # [CLS] movie [SEP]
    hf = classifier.module.hf
    with torch.no_grad():
        whole = hf(input_ids=torch.tensor([ids])).logits[0, 1]
        without = hf(input_ids=torch.tensor([[ids[0], ids[2]]])).logits[0, 1]
    torch.testing.assert_close(bert["leave_one_out"].maps[0, 0], whole - without)


# -- 7: hints for a missing pad or mask token ------------------------------------------------------


def test_a_missing_pad_or_mask_token_suggests_options_that_work(gpt2_dir):
    """With no pad token the sentence said "use baselines='pad' or 'zero'", the option that had
    failed. Each suggested option now runs."""
    lm = sl.load_model(f"hf:{gpt2_dir}")  # [PAD], no [MASK]
    target = continuation(" mat")
    ig = {"integrated_gradients": {"n_steps": 2}}
    with pytest.raises(SaliencelabError, match="has no mask token; use baselines='pad' or 'zero'"):
        sl.explain(lm, "the cat sat", methods=ig, target=target, baselines="mask")
    with pytest.raises(SaliencelabError) as e:
        sl.explain(lm, "the cat sat", methods="leave_one_out", target=target, removal="mask")
    assert "use removal='delete', 'pad' or 'zero'." in _one_sentence(e)
    for baselines in ("pad", "zero"):
        sl.explain(lm, "the cat sat", methods=ig, target=target, baselines=baselines)
    for removal in ("delete", "pad", "zero"):
        sl.explain(lm, "the cat sat", methods="leave_one_out", target=target, removal=removal)

    nopad = sl.load_model(f"hf:{gpt2_dir}")
    nopad.tokenizer.pad_token = None  # and no end-of-text token to stand in
    assert nopad.tokenizer.pad_token_id is None and nopad.tokenizer.eos_token_id is None
    for kind in ("pad", "mask"):
        with pytest.raises(SaliencelabError) as e:
            sl.explain(nopad, "the cat sat", methods=ig, target=target, baselines=kind)
        message = _one_sentence(e)
        assert f"no {kind} token" in message and message.endswith("use baselines='zero'.")
    sl.explain(nopad, "the cat sat", methods=ig, target=target, baselines="zero")


# -- rendering -------------------------------------------------------------------------------------


def test_rendering_a_missing_text_or_nothing_says_so(classifier):
    """terminal_text(a, 5) of one text and text_html({}) raised a bare IndexError."""
    a = sl.explain(classifier, ["bad plot"], methods="saliency", target=1)["saliency"]
    with pytest.raises(SaliencelabError, match="one of the 1 texts explained") as e:
        terminal_text(a, 5)
    _one_sentence(e)
    assert terminal_text(a, -1).plain == terminal_text(a, 0).plain == "bad plot"
    with pytest.raises(SaliencelabError, match="no attributions") as e:
        text_html({})
    _one_sentence(e)


@pytest.mark.parametrize("where", ["file_as_folder", "folder_as_page"])
def test_explain_text_checks_out_before_the_model_loads(tmp_path, runner, monkeypatch, where):
    """--out that could not be written was found only after the model had loaded and explained
    every text; now it is one sentence before anything runs."""
    import saliencelab.text.commands as commands

    if where == "file_as_folder":
        (tmp_path / "notes").write_text("mine")
        out = tmp_path / "notes" / "result"
    else:
        out = tmp_path / "page.html"
        out.mkdir()

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(commands, "load_model", no_load)
    result = runner.invoke(
        _cli_app(), ["explain-text", "the movie", "--model", "minilm", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert ("is a file" if where == "file_as_folder" else "is a folder") in result.output


def test_explain_text_prints_control_characters_of_a_text_escaped(classifier_dir, runner):
    """A text's own escape sequences reached the terminal as they were: "\\x1b[2J" in a review
    cleared the screen, "\\x1b[31m" restyled what followed."""
    text = "the \x1b[2Jmovie\x07 was fine\x9b"
    result = runner.invoke(
        _cli_app(),
        ["explain-text", text, "--model", f"hf:{classifier_dir}", "--methods", "leave_one_out"],
    )
    assert result.exit_code == 0, result.output
    assert not any(c in result.output for c in "\x1b\x07\x9b")  # nothing styled: not a tty
    assert "Text 1: the \\x1b[2Jmovie\\x07 was fine\\x9b" in result.output


def test_hf_prefix_on_an_image_model_says_it_loads_text_models(tmp_path):
    """An image model's folder got "has no tokenizer; save the model's tokenizer there", which
    sends the user the wrong way: hf: loads text models, a ViT is passed as a module."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8,
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    with pytest.raises(SaliencelabError, match="ViTForImageClassification.*hf: loads text"):
        sl.load_model(f"hf:{tmp_path / 'vit'}")
