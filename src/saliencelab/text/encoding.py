"""Tokenising texts for attribution: token ids, attention mask, fixed tokens, and words.

A :class:`TextBatch` holds B texts padded to T tokens:

- `ids` (B, T) token ids, `mask` (B, T) True for tokens and False for padding;
- `fixed` (B, T) True for tokens that are context rather than text to explain: the tokenizer's
  special tokens ([CLS], [SEP], <s>, …) and the tokens of a continuation target. Baselines keep
  them as they are and word scores leave them out;
- `word` (B, T) the index of the word each token belongs to (-1 for fixed tokens and padding);
- `pieces` the token strings and `words` the words of each text;
- `cut` per text, the character after which a text too long for the model was cut (None when
  the whole text fits), so that pages and tables can say what was not explained.

Words are the tokenizer's own word split (`word_ids()` of a fast tokenizer: the words of its
pre-tokenizer, e.g. "playing" and "." for BERT). The text of a word is the span of the original
text from its first piece's start to its last piece's end, so subword pieces ("gu", "##itar")
merge back into "guitar" with the original casing. A word's score is the sum of its pieces'.

Encoders are padded on the right, causal language models on the left, so that a continuation
target's tokens are the last K positions of every row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import SaliencelabError

log = logging.getLogger("saliencelab")


@dataclass
class TextBatch:
    """Texts tokenised and padded to one length T (see the module docstring)."""

    texts: list[str]
    ids: torch.Tensor  # (B, T) long
    mask: torch.Tensor  # (B, T) bool
    fixed: torch.Tensor  # (B, T) bool
    word: torch.Tensor  # (B, T) long, -1 where no word
    pieces: list[list[str]]  # per text, the tokens in order (specials included, no padding)
    words: list[list[str]]  # per text, the words
    char_spans: list[list[tuple[int, int]]]  # per text, each word's (start, end) in the text
    start: torch.Tensor  # (B,) position of each text's first token (left padding shifts it)
    padding_side: str = "right"
    continuation: str | None = None
    cut: list[int | None] | None = None  # per text, the character it was cut after (None: whole)
    n_continuation: int = 0  # K: the continuation's tokens, the last K of every row

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    @property
    def n_words(self) -> list[int]:
        return [len(w) for w in self.words]

    def merge(self, piece_scores: torch.Tensor) -> torch.Tensor:
        """(B, T) scores per token → (B, W) scores per word, the sum over each word's pieces.

        W is the most words of any text; shorter texts are padded with 0.
        """
        width = max(1, max(self.n_words, default=0))
        out = torch.zeros(self.batch, width, dtype=piece_scores.dtype, device=piece_scores.device)
        word = self.word.to(piece_scores.device)
        has = word >= 0
        rows = torch.arange(self.batch, device=piece_scores.device)[:, None].expand_as(word)
        out.index_put_((rows[has], word[has]), piece_scores[has], accumulate=True)
        return out

    def word_spans(self) -> list[list[tuple[int, int]]]:
        """Per text, (first, last + 1) token positions of each word (pieces are contiguous)."""
        spans: list[list[tuple[int, int]]] = []
        word = self.word.tolist()
        for b, n in enumerate(self.n_words):
            first = [-1] * n
            last = [-1] * n
            for t, w in enumerate(word[b]):
                if w >= 0:
                    if first[w] < 0:
                        first[w] = t
                    last[w] = t + 1
            spans.append(list(zip(first, last, strict=True)))
        return spans


def check_texts(texts: Any) -> list[str]:
    """A list of non-empty strings, else one clear sentence."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or isinstance(texts, (bytes, bytearray)):
        raise SaliencelabError(
            f"A text model takes a string or a list of strings, not {type(texts).__name__}."
        )
    texts = list(texts)
    if not texts:
        raise SaliencelabError("No text was given; pass a string or a non-empty list of strings.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise SaliencelabError(
                f"Text {i + 1} is a {type(t).__name__}, not a string; pass strings."
            )
        if not t.strip():
            raise SaliencelabError(f"Text {i + 1} is empty; give at least one word to explain.")
    return texts


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """(start, end) without surrounding white space (kept if the span is only white space)."""
    piece = text[start:end]
    if not piece.strip():
        return start, end
    return start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())


def _cut_warning(name: str, text: str, end: int, max_length: int, rest: str) -> None:
    tail = " ".join(text[max(0, end - 40) : end].split())
    log.warning(
        "%s is longer than the %d tokens this model takes: it was cut after character %d "
        "(…%s), the rest is %s.",
        name,
        max_length,
        end,
        tail,
        rest,
    )


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    padding_side: str = "right",
    continuation_ids: Sequence[int] | None = None,
    continuation: str | None = None,
    name: str | None = None,
) -> TextBatch:
    """Tokenise `texts` (checked) into a :class:`TextBatch`.

    Texts longer than `max_length` tokens (special tokens and continuation included) are cut at
    their end (whatever the tokenizer's `truncation_side`), with a warning on the "saliencelab"
    logger saying after which character; it names "Text i", or `name` for a text compared with
    rather than explained (a similarity target's text). `continuation_ids`
    are appended to every text as fixed tokens (a continuation target of a causal LM).
    """
    texts = check_texts(texts)
    if not getattr(tokenizer, "is_fast", False):
        raise SaliencelabError(
            f"The tokenizer {type(tokenizer).__name__} is not a fast tokenizer, so subword pieces "
            "cannot be merged into words; save the model with a fast tokenizer (tokenizer.json)."
        )
    extra = list(continuation_ids or [])
    budget = max_length - len(extra)
    specials = tokenizer.num_special_tokens_to_add()
    if budget < 1 + specials:
        if extra:
            raise SaliencelabError(
                f"The continuation has {len(extra)} tokens, which leaves no room for the text in "
                f"the {max_length} tokens this model takes; give a shorter continuation."
            )
        raise SaliencelabError(
            f"The model takes at most {max_length} tokens, which leaves no room for a word after "
            f"its {specials} special tokens; load it with a larger max_length (at least "
            f"{specials + 1})."
        )
    rows: list[tuple] = []
    cut: list[int | None] = []
    # The start of a text is what is explained: cut its end (a tokenizer saved with
    # truncation_side="left" would drop the start silently), then put the setting back.
    side = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = "right"
    try:
        encodings = [
            tokenizer(
                text,
                truncation=True,
                max_length=budget,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
            )
            for text in texts
        ]
    finally:
        tokenizer.truncation_side = side
    for i, (text, enc) in enumerate(zip(texts, encodings, strict=True)):
        ids = list(enc["input_ids"])
        special = [bool(s) for s in enc["special_tokens_mask"]]
        offsets = enc["offset_mapping"]
        word_ids = enc.word_ids()
        pieces = enc.tokens()
        # Words in order of appearance, renumbered 0.. (special tokens have no word).
        number: dict[int, int] = {}
        spans: list[list[int]] = []
        word: list[int] = []
        for t, w in enumerate(word_ids):
            if w is None or special[t]:
                word.append(-1)
                continue
            if w not in number:
                number[w] = len(spans)
                spans.append([offsets[t][0], offsets[t][1]])
            k = number[w]
            spans[k][1] = max(spans[k][1], offsets[t][1])
            word.append(k)
        if not spans:
            raise SaliencelabError(
                f"Text {i + 1} has no token the model can read; give it some words."
            )
        spans = [_strip_span(text, a, b) for a, b in spans]
        words = [text[a:b] for a, b in spans]
        end = max(b for _, b in spans)
        if text[end:].strip() and len(ids) >= budget:
            if name is None:
                _cut_warning(f"Text {i + 1}", text, end, max_length, "not explained")
            else:
                _cut_warning(name, text, end, max_length, "not compared")
            cut.append(end)
        else:
            cut.append(None)
        if extra:
            ids += extra
            special += [True] * len(extra)
            word += [-1] * len(extra)
            pieces = list(pieces) + tokenizer.convert_ids_to_tokens(extra)
        rows.append((ids, special, word, list(pieces), words, spans))

    length = max(len(r[0]) for r in rows)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    b = len(rows)
    ids_t = torch.full((b, length), int(pad_id), dtype=torch.long)
    mask = torch.zeros(b, length, dtype=torch.bool)
    fixed = torch.zeros(b, length, dtype=torch.bool)
    word_t = torch.full((b, length), -1, dtype=torch.long)
    start = torch.zeros(b, dtype=torch.long)
    for r, (ids, special, word, *_) in enumerate(rows):
        n = len(ids)
        s = length - n if padding_side == "left" else 0
        start[r] = s
        ids_t[r, s : s + n] = torch.tensor(ids)
        mask[r, s : s + n] = True
        fixed[r, s : s + n] = torch.tensor(special)
        word_t[r, s : s + n] = torch.tensor(word)
    return TextBatch(
        texts=texts,
        ids=ids_t,
        mask=mask,
        fixed=fixed,
        word=word_t,
        pieces=[r[3] for r in rows],
        words=[r[4] for r in rows],
        char_spans=[[tuple(span) for span in r[5]] for r in rows],
        start=start,
        padding_side=padding_side,
        continuation=continuation,
        cut=cut,
        n_continuation=len(extra),
    )
