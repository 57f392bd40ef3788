"""Text targets: the similarity between two texts, and the log-probability of a continuation.

    sl.similarity_to("Someone is making music.")    S(x) = cos(e(x), e(r)),  e = the model's
                                                     sentence embedding (its pooling), r the text
    sl.continuation(" on the mat")                   S(x) = Σ_k log p(c_k | x, c_<k), the
                                                     log-probability a causal LM gives the tokens
                                                     c_1..c_K of the continuation after x

Both are specs: a text model binds them to itself when `sl.explain` starts (it embeds the
reference text once; it appends the continuation's tokens to every text), giving the plain score
functions below that the engine calls on each batch of outputs. A class logit of a sequence
classifier needs no spec: pass its name (`target="positive"`) or index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import SaliencelabError


class _TextTargetSpec:
    """A target that only a text model can bind; called unbound, it says so."""

    kind = "text target"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise SaliencelabError(
            f"{self!r} is a target for text models; load one with sl.load_model('minilm') or "
            "sl.load_model('hf:PATH') and pass texts."
        )


@dataclass(frozen=True, eq=True)
class SimilarityTarget(_TextTargetSpec):
    """Cosine similarity to the sentence embedding of `text` (see :func:`similarity_to`)."""

    text: str

    def __repr__(self) -> str:
        return f"similarity_to({self.text!r})"


@dataclass(frozen=True, eq=True)
class ContinuationTarget(_TextTargetSpec):
    """Log-probability of `text` after the input (see :func:`continuation`)."""

    text: str

    def __repr__(self) -> str:
        return f"continuation({self.text!r})"


def _check(text: object, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise SaliencelabError(f"The {what} must be a non-empty string, not {text!r}.")
    return text


def similarity_to(text: str) -> SimilarityTarget:
    """Target: the cosine similarity between each input text and `text`.

    Both are embedded with the model's sentence embedding (for MiniLM: the mean of the token
    embeddings over the attention mask, normalised), S(x) = e(x)·e(r) / (|e(x)| |e(r)|).
    """
    return SimilarityTarget(_check(text, "text to compare with"))


def continuation(text: str) -> ContinuationTarget:
    """Target: the log-probability a causal language model gives `text` right after the input.

    S(x) = Σ_k log softmax(logits at the position before c_k)[c_k] over the continuation's tokens
    c_1..c_K (tokenised on its own, without special tokens: mind the leading space for GPT-2).
    The continuation's tokens are part of the input but fixed (not scored as words).
    """
    return ContinuationTarget(_check(text, "continuation"))


class CosineSimilarity:
    """Bound :class:`SimilarityTarget`: cos(e, r) for a batch of sentence embeddings e (n, D)."""

    def __init__(self, reference: torch.Tensor, text: str) -> None:
        self.reference = reference.detach().flatten()
        self.text = text

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        r = self.reference.to(embeddings.device, embeddings.dtype)
        e = embeddings.flatten(1)
        return (e @ r) / (e.norm(dim=1) * r.norm()).clamp_min(1e-12)

    def __repr__(self) -> str:
        return f"similarity_to({self.text!r})"


class ContinuationLogProb:
    """Bound :class:`ContinuationTarget`: Σ_k log p(c_k | ...) from LM logits (n, T, V).

    The continuation's K tokens are the last K positions of every row (left padding), so the
    logits predicting them are at positions T-K-1 .. T-2.
    """

    def __init__(self, ids: list[int], text: str) -> None:
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.text = text

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        n, length = logits.shape[0], logits.shape[1]
        k = len(self.ids)
        steps = logits[:, length - k - 1 : length - 1].float().log_softmax(dim=-1)  # (n, K, V)
        ids = self.ids.to(logits.device).view(1, k, 1).expand(n, k, 1)
        return steps.gather(-1, ids).sum(dim=(1, 2)).to(logits.dtype)

    def __repr__(self) -> str:
        return f"continuation({self.text!r})"
