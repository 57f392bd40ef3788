"""Integrated gradients on MiniLM token embeddings: saliencelab against Captum.

    .venv/bin/python benchmarks/text.py [--steps 50] [--repeats 5] [--threads 1]
        [--out benchmarks/out/text.json]

Same model (the packaged all-MiniLM-L6-v2), text ("A man is playing a guitar."), target (cosine
similarity of the mean-pooled, normalised sentence embeddings to "Someone is making music."),
baseline (zero embeddings, [CLS] / [SEP] kept), rule (Gauss-Legendre, `--steps` nodes) and
chunks of 32 rows:

- `ours`: `sl.explain(tm, [text], methods="integrated_gradients", target=sl.similarity_to(...))`
  as a user calls it: tokenising, embedding the reference text, the IG rows, S(x) and S(x')
  for the completeness gap;
- `captum`: Captum's `IntegratedGradients` on a function of the input embeddings that does the
  same, with `return_convergence_delta=True`, the reference embedding computed inside the timed
  region as ours does.

Reported: the median seconds of each, the paired ratio ours / captum, and the largest difference
of the per-token scores (sum over the embedding) between the two.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from captum.attr import IntegratedGradients

sys.path.insert(0, str(Path(__file__).parent))

from harness import (
    Contender,
    add_malloc_option,
    make_sync,
    measure,
    paired,
    use_malloc,
)  # noqa: E402

import saliencelab as sl  # noqa: E402
from saliencelab.text import similarity_to  # noqa: E402

TEXT, REFERENCE = "A man is playing a guitar.", "Someone is making music."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    add_malloc_option(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/text.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(use_malloc(args), flush=True)

    tm = sl.load_model("minilm")
    hf = tm.module.hf.eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    enc = tm.tokenizer([TEXT], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    emb = hf.get_input_embeddings()(ids).detach()
    special = (ids == tm.tokenizer.cls_token_id) | (ids == tm.tokenizer.sep_token_id)
    base = torch.where(special[..., None], emb, torch.zeros_like(emb))

    def captum():
        with torch.no_grad():
            ref = tm.sentence_embedding([REFERENCE])[0]

        def score(e):
            h = hf(inputs_embeds=e, attention_mask=mask.expand(e.shape[0], -1)).last_hidden_state
            m = mask[..., None].to(h.dtype)
            pooled = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
            return pooled @ ref

        return IntegratedGradients(score).attribute(
            emb,
            base,
            n_steps=args.steps,
            method="gausslegendre",
            internal_batch_size=32,
            return_convergence_delta=True,
        )

    def ours():
        return sl.explain(
            tm,
            [TEXT],
            methods="integrated_gradients",
            target=similarity_to(REFERENCE),
            n_steps=args.steps,
            chunk_size=32,
        )

    contenders = [Contender("ours", ours), Contender("captum", captum)]
    measure(contenders, args.repeats, make_sync(torch.device("cpu")))
    a = contenders[0].last["integrated_gradients"]
    ref_attr, _ = contenders[1].last
    diff = float((a.piece_scores[0] - ref_attr.sum(-1)[0]).abs().max())
    result = {
        "steps": args.steps,
        "ours": contenders[0].summary(),
        "captum": contenders[1].summary(),
        "ratio_ours_over_captum": paired(contenders[0], contenders[1]),
        "max_token_score_diff": diff,
        "max_token_score": float(a.piece_scores.abs().max()),
        "words": dict(zip(a.tokens[0], a.maps[0].tolist(), strict=True)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("ours", "captum")}, indent=2))


if __name__ == "__main__":
    main()
