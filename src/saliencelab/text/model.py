"""The text model adapter: a Hugging Face transformer run from token embeddings.

:class:`TextModule` is the `nn.Module` the engine runs. Its input is the embedding-space tensor
of `inputs.py` (token embeddings plus the attention mask and fixed-token flags of each row); it
runs the transformer from `inputs_embeds` with each row's own attention mask and returns

- "classification" (…ForSequenceClassification): the class logits (n, C) (a config without a
  pad_token_id, GPT-2's default, gets one for the call, so batches run; restored after);
- "embedding" (a bare encoder, sentence-transformers): the sentence embedding (n, D) — the
  model's pooling (mean over the attention mask, [CLS], or max), normalised when it says so;
- "causal-lm" (…ForCausalLM / …LMHeadModel): the next-token logits (n, T, V), with position ids
  counted from each row's first token (rows are padded on the left).

:class:`TextModel` is the `sl.Model` for it. When `sl.explain` starts it tokenises the texts
(`encoding.py`), embeds them, binds text targets (`targets.py`) and returns a copy of itself that
knows the call's words. The engine's methods then run unchanged on the embeddings; afterwards
the model reduces each attribution (B, T, D) to one score per token — the signed sum over the
embedding (`token_scores="signed"`, default) or its L2 norm (`token_scores="l2"`, a magnitude) —
and merges subword pieces into words (the sum of their pieces). Results carry `.tokens` (the
words of each text), `.pieces` and `.piece_scores` (per token, specials included).

Integrated gradients' baselines are built here (`baselines`): the embedding of [PAD] ("pad"), of
[MASK] ("mask"), zeros ("zero", a number, or a (D,) / (B, T, D) tensor) at every token except
the fixed ones (special and continuation tokens), which keep their embedding.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.context import MethodOutput
from ..core.errors import SaliencelabError, closest
from ..core.state import attribution_mode
from ..models.model import Model
from .encoding import TextBatch, check_texts, encode
from .inputs import FLAG_WIDTH, embeddings_of, pack, read_flags, with_embeddings
from .targets import (
    ContinuationLogProb,
    ContinuationTarget,
    CosineSimilarity,
    SimilarityTarget,
)

TASKS = ("classification", "embedding", "causal-lm")
#: The methods documented for text (README, "Text"), named when a method cannot run on text.
TEXT_METHODS = (
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
    "leave_one_out",
    "attention_rollout",
    "grad_rollout",
)
POOLINGS = ("mean", "cls", "max")
TOKEN_SCORES = ("signed", "l2")
BASELINES = ("zero", "pad", "mask")


class TextModule(nn.Module):
    """A Hugging Face transformer run from embedding-space inputs (see the module docstring)."""

    def __init__(
        self, hf: nn.Module, task: str, pooling: str = "mean", normalize: bool = False
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise SaliencelabError(f"Unknown text task {task!r}; use one of {', '.join(TASKS)}.")
        if pooling not in POOLINGS:
            raise SaliencelabError(
                f"Unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}."
            )
        self.hf = hf
        self.task = task
        self.pooling = pooling
        self.normalize = normalize
        self._reads_last: bool | None = None  # `reads_last_position`, probed once

    @property
    def embedding(self) -> nn.Embedding:
        return self.hf.get_input_embeddings()

    @property
    def dim(self) -> int:
        return int(self.embedding.weight.shape[1])

    def reads_last_position(self) -> bool:
        """Whether a classifier scores its last position (a decoder's sequence classifier:
        GPT-2, Llama, ...; from embeddings Hugging Face cannot find the last real token), so
        right padding would score a [PAD]: its texts are padded on the left instead, with their
        own position ids. Found once by a probe: two tokens, then the same with one padding
        token after them, masked; an encoder's [CLS] scores do not move, a decoder's do."""
        if self._reads_last is None:
            self._reads_last = False
            if self.task == "classification":
                w = self.embedding.weight.detach()
                emb = w[torch.arange(3, device=w.device) % w.shape[0]][None]  # (1, 3, D)
                mask = torch.tensor([[1, 1, 0]], device=w.device)
                with attribution_mode(self), torch.no_grad():
                    two = self.hf(inputs_embeds=emb[:, :2], attention_mask=mask[:, :2]).logits
                    padded = self.hf(inputs_embeds=emb, attention_mask=mask).logits
                tol = 1e-5 * (1.0 + float(two.abs().max()))
                self._reads_last = not bool(((two - padded).abs() <= tol).all())
        return self._reads_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask, _ = read_flags(x, self.dim)
        emb = embeddings_of(x, self.dim).to(self.embedding.weight.dtype)
        kwargs: dict[str, Any] = {"inputs_embeds": emb, "attention_mask": mask.long()}
        if self.task == "causal-lm" or self.reads_last_position():  # left-padded rows
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
        if self.task == "causal-lm":
            kwargs["use_cache"] = False
        config = getattr(self.hf, "config", None)
        if self.task != "classification" or getattr(config, "pad_token_id", 0) is not None:
            out = self.hf(**kwargs)
        else:
            # A decoder's classifier without a pad token id (GPT-2's default) refuses batches of
            # more than one text; from embeddings it reads the last position (the rows are
            # padded on the left) and never the id's value, so any id does for the call.
            config.pad_token_id = 0
            try:
                out = self.hf(**kwargs)
            finally:
                config.pad_token_id = None
        if self.task != "embedding":
            return out.logits if hasattr(out, "logits") else out[0]
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return self.pool(hidden, mask)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sentence embedding (n, D) of token states (n, T, D) over the attention mask."""
        m = mask[..., None].to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
        else:
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


@dataclass
class TextModel(Model):
    """An `sl.Model` for text (see the module docstring); load one with `sl.load_model`.

    Attributes (besides `Model`'s):
        tokenizer: a fast Hugging Face tokenizer.
        task: "classification", "embedding" or "causal-lm".
        max_length: the most tokens a text may have (longer texts are cut, with a warning).
        token_scores: "signed" (sum over the embedding) or "l2" (its norm) per token.
        batch: the tokenised texts of the current `sl.explain` call (set on the call's copy).
    """

    tokenizer: Any = None
    task: str = "embedding"
    max_length: int = 512
    token_scores: str = "signed"
    batch: TextBatch | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # labels and input_size, as any Model's
        if not isinstance(self.module, TextModule) or self.tokenizer is None:
            what = (
                "no tokenizer"
                if isinstance(self.module, TextModule)
                else f"a {type(self.module).__name__}, not the TextModule it runs texts through"
            )
            raise SaliencelabError(
                f"This sl.TextModel has {what}; load text models with "
                "sl.load_model('hf:PATH') (a Hugging Face directory with its tokenizer) or "
                "sl.load_model('minilm'), which build both."
            )
        if self.token_scores not in TOKEN_SCORES:
            raise SaliencelabError(
                f"token_scores must be 'signed' (sum over the embedding) or 'l2' (its norm), not "
                f"{self.token_scores!r}."
            )
        if self.task not in TASKS:
            raise SaliencelabError(
                f"Unknown text task {self.task!r}; use one of {', '.join(TASKS)}."
            )
        if (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, numbers.Integral)
            or self.max_length < 1
        ):
            raise SaliencelabError(
                f"max_length must be a positive number of tokens, not {self.max_length!r}."
            )
        # Hooks `sl.explain` and integrated gradients look for (see core/explain.py), and what
        # attention rollout reads (methods/attention/rollout.py): which tokens are real, and,
        # for a mean-pooled sentence encoder, that its output is the mean of the token rows.
        hooks = {
            "check_method": self.check_method,
            "prepare": self.prepare,
            "reduce": self.reduce,
            "baselines": self.baselines,
            "token_mask": self.token_mask,
            "noise_mask": self.noise_mask,  # SmoothGrad: real tokens' embeddings only
            # a classifier's outputs are class logits; an encoder's sentence embedding and a
            # language model's next-token logits are not (core/explain.py: no predicted class)
            "outputs_are_classes": self.task == "classification",
        }
        # The row of attention rollout that stands for the output: the mean of the real tokens'
        # rows for an encoder pooling them all (mean or max), the last position for a
        # left-padded classifier that scores it (GPT-2's), else the first token ([CLS]).
        pooling = getattr(self.module, "pooling", None)
        if "rollout_row" not in self.extra:
            if self.task == "embedding" and pooling in ("mean", "max"):
                hooks["rollout_row"] = "mean"
            elif self.task == "classification" and self.text_module.reads_last_position():
                hooks["rollout_row"] = -1
        self.extra = {**self.extra, **hooks}
        if self.preprocess is None:
            self.preprocess = self.inputs

    def token_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(n, T) bool: the real tokens (the attention mask) of engine inputs `x`."""
        return read_flags(x, self.dim)[0]

    def noise_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(n, T, D + 2R) bool: the embedding columns of the text's own tokens in engine inputs
        `x`, where SmoothGrad adds noise: not the padding, not the fixed tokens ([CLS], [SEP], a
        continuation's tokens: context, kept as integrated gradients' baselines keep them),
        not the flag columns."""
        real, fixed = read_flags(x, self.dim)
        columns = torch.arange(x.shape[-1], device=x.device) < self.dim
        return (real & ~fixed).to(x.device)[..., None] & columns

    # -- the pieces --------------------------------------------------------------------------

    @property
    def text_module(self) -> TextModule:
        return self.module  # type: ignore[return-value]

    @property
    def dim(self) -> int:
        return self.text_module.dim

    @property
    def padding_side(self) -> str:
        """Left for a causal LM and a classifier that scores its last position (so every text
        ends at the last position: `TextModule.reads_last_position`), else right."""
        left = self.task == "causal-lm" or self.text_module.reads_last_position()
        return "left" if left else "right"

    def with_token_scores(self, token_scores: str) -> TextModel:
        """A copy scoring tokens by "signed" sum or "l2" norm over the embedding."""
        return dataclasses.replace(self, token_scores=token_scores)

    def encode(
        self, texts: Any, continuation: str | None = None, name: str | None = None
    ) -> TextBatch:
        """Tokenise texts (and a continuation's tokens, for a causal LM) into a TextBatch;
        `name` names a text compared with, not explained, in the warning if it is cut."""
        ids = None
        if continuation is not None:
            ids = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not ids:
                raise SaliencelabError(
                    f"The continuation {continuation!r} has no tokens; give some text."
                )
        return encode(
            self.tokenizer,
            check_texts(texts),
            max_length=self.max_length,
            padding_side=self.padding_side,
            continuation_ids=ids,
            continuation=continuation,
            name=name,
        )

    def embed(self, batch: TextBatch) -> torch.Tensor:
        """The engine input (B, T, D + 2R) of a TextBatch: token embeddings and flags."""
        with torch.no_grad():
            emb = self.text_module.embedding(batch.ids.to(self.device)).float()
        return pack(emb, batch.mask.to(self.device), batch.fixed.to(self.device))

    def inputs(self, texts: Any) -> torch.Tensor:
        """Texts → engine input (the model's `preprocess`)."""
        return self.embed(self.encode(texts))

    def sentence_embedding(self, texts: Any, name: str | None = None) -> torch.Tensor:
        """(B, D) sentence embeddings (the model's pooling), no gradient; `name` names the
        text in the warning if it is cut (default "Text i")."""
        if self.task != "embedding":
            raise SaliencelabError(
                f"{self.name} is a {self.task} model, not a sentence-embedding model, so it has no "
                "sentence embedding to compare texts with; use a classification target."
            )
        x = self.embed(self.encode(texts, name=name))
        with attribution_mode(self.module), torch.no_grad():
            return self.module(x)

    # -- targets -----------------------------------------------------------------------------

    def bind_target(self, target: Any) -> Any:
        """A target as the engine takes it: text specs bound to this model, names checked."""
        kind = {"embedding": "a sentence-embedding", "causal-lm": "a causal language"}.get(
            self.task, "a classification"
        )
        if isinstance(target, SimilarityTarget):
            if self.task != "embedding":
                raise SaliencelabError(
                    f"similarity_to needs a sentence-embedding model, but {self.name} is "
                    f"{kind} model; "
                    + (
                        "explain a class (target='name') instead."
                        if self.task == "classification"
                        else "use sl.continuation(text) instead."
                    )
                )
            name = "The comparison text of similarity_to"
            embedding = self.sentence_embedding([target.text], name=name)[0]
            return CosineSimilarity(embedding, target.text)
        if isinstance(target, ContinuationTarget):
            if self.task != "causal-lm":
                raise SaliencelabError(
                    f"continuation needs a causal language model, but {self.name} is {kind} model; "
                    + (
                        "explain a class (target='name') instead."
                        if self.task == "classification"
                        else "use sl.similarity_to(text) instead."
                    )
                )
            ids = self.tokenizer(target.text, add_special_tokens=False)["input_ids"]
            return ContinuationLogProb(list(ids), target.text)
        if self.task == "classification":
            self._check_classes(target)
            return target
        if target is None or isinstance(target, (str, int, list, tuple)):
            hint = (
                "sl.similarity_to(text) (CLI: --compare TEXT)"
                if self.task == "embedding"
                else "sl.continuation(text) (CLI: --continuation TEXT)"
            )
            raise SaliencelabError(
                f"{self.name} is {kind} model, which has no classes to explain; give the "
                f"target {hint}."
            )
        return target

    def _check_classes(self, target: Any) -> None:
        names = [target] if isinstance(target, str) else target
        if not isinstance(names, (list, tuple)) or self.labels is None:
            return
        for name in names:
            if isinstance(name, str) and name not in self.labels:
                lowered = [str(label).lower() for label in self.labels]
                if name.lower() in lowered:
                    continue
                raise SaliencelabError(
                    f"{self.name} has no class named {name!r}; its classes are "
                    f"{', '.join(map(str, self.labels))}.{closest(name, self.labels)}"
                )

    # -- hooks for sl.explain ------------------------------------------------------------------

    def check_method(self, name: str, family: str) -> None:
        """One sentence for a method text models cannot run: the CAM family needs a layer with a
        spatial (B, C, H, W) output, and a transformer's layers give token sequences; the image
        perturbations (windows, masks, superpixels) and reference maps (image centre, edges) have
        no meaning on words, which `leave_one_out` removes one at a time instead. Attention
        rollout follows an encoder's attention, not a causal language model's."""
        use = f"For text use {', '.join(TEXT_METHODS[:-1])} or {TEXT_METHODS[-1]}."
        if family == "cam":
            raise SaliencelabError(
                f"{name} is a CAM method, which needs a convolutional (spatial) layer with a "
                f"(B, C, H, W) output; text models have none (their layers output token "
                f"sequences). {use}"
            )
        if family == "attention" and self.task == "causal-lm":
            methods = [m for m in TEXT_METHODS if m not in ("attention_rollout", "grad_rollout")]
            raise SaliencelabError(
                f"{name} is for encoders (it follows the attention of the [CLS] row of a "
                f"classifier, or of a sentence encoder's tokens), and {self.name} is a causal "
                f"language model, whose tokens attend only to the ones before them; use "
                f"{', '.join(methods[:-1])} or {methods[-1]}."
            )
        if family in ("perturbation", "reference") and name not in TEXT_METHODS:
            what = "an image reference map" if family == "reference" else "an image perturbation"
            raise SaliencelabError(
                f"{name} is {what} (pixels, windows or masks of a (B, C, H, W) image), which "
                f"text models do not take; leave_one_out removes each word in turn instead. {use}"
            )

    def prepare(self, x: Any, target: Any) -> tuple[TextModel, torch.Tensor, Any]:
        """Texts → (this model bound to the call's words, engine input, bound target)."""
        if isinstance(x, torch.Tensor):  # already an engine input: no words to merge
            read_flags(x, self.dim)
            return dataclasses.replace(self, batch=None), x, self.bind_target(target)
        check_texts(x)
        cont = target.text if isinstance(target, ContinuationTarget) else None
        bound_target = self.bind_target(target)
        batch = self.encode(x, continuation=cont)
        return dataclasses.replace(self, batch=batch), self.embed(batch), bound_target

    def reduce(self, out: MethodOutput) -> MethodOutput:
        """A method's output on the embeddings → word scores (maps), with the words.

        Embedding attributions (B, T, D + 2R) become per-token scores (signed sum or L2 norm over
        D; the flag columns are dropped) and `attributions` (B, T, D). A method that gives
        per-token maps (B, T) keeps them as token scores. Then maps = per-word sums of token
        scores (B, W), or the method's own `extras["word_scores"]`.
        """
        attr, extras = out.attributions, dict(out.extras)
        signed = out.signed
        width = self.dim + 2 * FLAG_WIDTH
        if out.maps is None and attr.dim() == 3 and attr.shape[-1] == width:
            attr = attr[..., : self.dim]
            if self.token_scores == "l2":
                pieces = attr.norm(dim=-1)
                signed = False
            else:
                pieces = attr.sum(dim=-1)
                # `signed`: the method's options or its registered default (core/explain.py)
                _refuse_vanishing_sums(pieces, attr, bool(signed))
            extras["token_scores"] = self.token_scores
        elif out.maps is not None and out.maps.dim() == 2:
            pieces = out.maps
        else:
            return out
        batch = self.batch
        if batch is None or tuple(pieces.shape) != (batch.batch, batch.length):
            return MethodOutput(attr, maps=pieces, extras=extras, layer=out.layer, signed=signed)
        pieces = pieces * batch.mask.to(pieces.device)
        words = extras.pop("word_scores", None)
        if words is None:
            words = batch.merge(pieces)
        extras.update(
            tokens=[list(w) for w in batch.words],
            char_spans=[list(sp) for sp in batch.char_spans],
            pieces=[list(p) for p in batch.pieces],
            piece_scores=pieces,
            texts=list(batch.texts),
        )
        if batch.cut is not None and any(c is not None for c in batch.cut):
            extras["cut"] = list(batch.cut)
        if batch.continuation is not None:
            extras["continuation"] = batch.continuation
        return MethodOutput(attr, maps=words, extras=extras, layer=out.layer, signed=signed)

    # -- baselines -----------------------------------------------------------------------------

    def reference_embedding(
        self, kind: Any, like: torch.Tensor, option: str = "baselines"
    ) -> torch.Tensor:
        """The embedding that replaces tokens: (D,) for "pad" / "mask" / "zero" / a number, or a
        tensor broadcastable to (n, T, D). `option` is the option `kind` came from, for errors
        ("baselines" of integrated gradients, "removal" of leave-one-out)."""
        dim = self.dim
        weight = self.text_module.embedding.weight
        if isinstance(kind, torch.Tensor):
            if kind.is_floating_point() and not bool(torch.isfinite(kind).all()):
                raise SaliencelabError(
                    "A text baseline tensor must be finite, but it has NaN or infinite values; "
                    "use 'pad', 'mask', 'zero' or a finite tensor."
                )
            ref = kind.to(like.device, like.dtype)
            try:
                torch.broadcast_shapes(ref.shape, like.shape[:-1] + (dim,))
            except RuntimeError:
                raise SaliencelabError(
                    f"A text baseline tensor must broadcast to the token embeddings "
                    f"{tuple(like.shape[:-1]) + (dim,)}, e.g. shape ({dim},), but has shape "
                    f"{tuple(ref.shape)}."
                ) from None
            return ref
        if kind is None or kind == "zero":
            return torch.zeros(dim, device=like.device, dtype=like.dtype)
        if isinstance(kind, numbers.Real) and not isinstance(kind, bool):
            if not math.isfinite(kind):
                raise SaliencelabError(
                    f"A text baseline must be a finite number, not {kind!r}; use 'pad', 'mask', "
                    "'zero' or a number such as 0.0."
                )
            return torch.full((dim,), float(kind), device=like.device, dtype=like.dtype)
        if kind in ("pad", "mask"):
            token = self._token_id(kind)
            if token is None:
                others = ["delete"] if option == "removal" else []
                others += [
                    k for k in ("pad", "mask") if k != kind and self._token_id(k) is not None
                ]
                names = [repr(k) for k in [*others, "zero"]]
                use = " or ".join([", ".join(names[:-1]), names[-1]]) if others else names[0]
                stand_in = " (nor an end-of-text token to stand in)" if kind == "pad" else ""
                raise SaliencelabError(
                    f"The tokenizer of {self.name} has no {kind} token{stand_in}; use "
                    f"{option}={use}."
                )
            return weight[int(token)].detach().to(like.device, like.dtype)
        hint = closest(kind, BASELINES) if isinstance(kind, str) else ""
        raise SaliencelabError(
            f"Unknown text baseline {kind!r}.{hint} For text use 'pad', 'mask' or 'zero' "
            "(embeddings of that token at every word; special tokens are kept), a number, or a "
            f"tensor of shape ({self.dim},)."
        )

    def _token_id(self, kind: str) -> int | None:
        """The id of the [PAD] token (the end-of-text token if there is none) or [MASK]."""
        if kind == "mask":
            return self.tokenizer.mask_token_id
        token = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if token is None else token

    def baselines(self, x: torch.Tensor, kind: Any) -> torch.Tensor:
        """Integrated gradients' baseline of engine inputs `x`: each non-fixed token's embedding
        replaced by the reference embedding of `kind`; fixed tokens, padding and flags kept."""
        mask, fixed = read_flags(x, self.dim)
        emb = embeddings_of(x, self.dim)
        ref = self.reference_embedding(kind, emb).expand_as(emb)
        keep = (fixed | ~mask)[..., None]
        return with_embeddings(x, torch.where(keep, emb, ref))


def _refuse_vanishing_sums(sums: torch.Tensor, attr: torch.Tensor, signed: bool) -> None:
    """One sentence when signed per-token sums of embedding attributions are all ~0 while the
    attributions are not: a signed gradient on a transformer whose embeddings go through
    LayerNorm (BERT, MiniLM, GPT-2), which ignores a shift of all of a token's values, so its
    gradient sums to 0 over them and the map would be rounding noise."""
    if not signed or attr.numel() == 0:
        return
    size = float(attr.abs().sum(dim=-1).max())
    if size > 0 and float(sums.abs().max()) <= 1e-4 * size:
        raise SaliencelabError(
            "The signed gradient sums to ~0 over each token's embedding (this model's "
            "LayerNorm ignores a shift of all of a token's values), so signed token scores would "
            "be rounding noise; use |gradient| (saliency's default), input_x_gradient, or "
            "token_scores='l2'."
        )
