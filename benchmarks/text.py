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

Timing (`harness.measure`): both are warmed up untimed first: ours by `harness.settle` (until
the engine's chunk-size search is closed and two calls ran the same passes) and one plain call,
Captum by one call; then each repeat runs both, interleaved.

Reported: the median seconds of each and the paired ratio ours / captum (median of per-repeat
ratios), given only where the two agree: the per-token scores (sum over the embedding) must
match to max |diff| ≤ 1e-4 × max |Captum score| (`harness.max_abs_agreement`; NaN on one side
fails too). Otherwise the ratio is None and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from captum.attr import IntegratedGradients

sys.path.insert(0, str(Path(__file__).parent))

from harness import (  # noqa: E402
    Contender,
    add_malloc_option,
    exit_status,
    make_sync,
    max_abs_agreement,
    measure,
    paired,
    settle,
    use_malloc,
    valid_ratio,
)

import saliencelab as sl  # noqa: E402
from saliencelab.text import similarity_to  # noqa: E402

TEXT, REFERENCE = "A man is playing a guitar.", "Someone is making music."
REL_TOL = 1e-4  # max |ours − captum| per-token score ≤ REL_TOL × max |captum score|


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    add_malloc_option(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/text.json"))
    args = parser.parse_args(argv)
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

    settle(ours, tm.module)  # untimed: the chunk search closed (+ one plain call in measure)
    contenders = [Contender("ours", ours), Contender("captum", captum)]
    measure(contenders, args.repeats, make_sync(torch.device("cpu")))
    a = contenders[0].last["integrated_gradients"]
    ref_attr, _ = contenders[1].last
    ref_scores = ref_attr.sum(-1)[0]
    tol = REL_TOL * float(ref_scores.abs().max())
    agreement = max_abs_agreement(a.piece_scores[0], ref_scores, tol, "max |token score diff|")
    print(f"agreement: {agreement.text()}")
    result = {
        "steps": args.steps,
        "ours": contenders[0].summary(),
        "captum": contenders[1].summary(),
        "ratio_ours_over_captum": valid_ratio(paired(contenders[0], contenders[1]), [agreement]),
        "agreements": [agreement.as_dict()],
        "max_token_score": float(a.piece_scores.abs().max()),
        "words": dict(zip(a.tokens[0], a.maps[0].tolist(), strict=True)),
    }
    result["exit_status"] = exit_status([agreement])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("ours", "captum")}, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main()["exit_status"])
