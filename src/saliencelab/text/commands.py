"""The `saliencelab explain-text` command: which words of a text a model's score rests on.

    saliencelab explain-text "The movie was great" --model hf:./my-model --target positive
    saliencelab explain-text "A man plays guitar" --model minilm --compare "Someone makes music"
    saliencelab explain-text "The cat sat on the" --model hf:./gpt2 --continuation " mat"

Prints each text with its words coloured per method (blue lowers the score, red raises it;
unsigned scores white to purple by magnitude), and a table of the word scores; `--out
page.html` also writes a self-contained HTML page. Added to the app by `register(app)` (cli.py
calls it). Errors are one sentence, exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

import saliencelab as sl

from ..cli_common import (
    DebugOption,
    DeviceOption,
    load_model,
    out_console,
    parse_options,
    parse_target,
    session,
)
from ..core.files import check_outputs
from ..core.result import cost_text
from .model import TOKEN_SCORES, TextModel
from .render import save_text_html, shown, terminal_text, word_scores
from .targets import continuation as continuation_target
from .targets import similarity_to

DEFAULT_MODEL = "minilm"
DEFAULT_METHODS = "integrated_gradients"


def _target_notes(model: TextModel, ex: sl.Explanation, spec: Any) -> list[str]:
    """Per text, what the target is and its value, e.g. "similarity to '…' = 0.53"."""
    import torch

    n = ex.logits.shape[0]
    if model.task == "classification":
        a = next(iter(ex.attributions.values()))
        probs = ex.logits.softmax(dim=-1)  # a classifier's class logits
        notes = []
        for b in range(n):
            c = int(a.target[b])
            notes.append(f"class {model.label(c)} (p = {float(probs[b, c]):.3f})")
        return notes
    bound = model.bind_target(spec)
    with torch.no_grad():
        values = bound(ex.logits).tolist()
    what = (
        f"similarity to {spec.text!r}"
        if model.task == "embedding"
        else f"log p({spec.text!r} | text)"
    )
    return [f"{what} = {v:.4g}" for v in values]


def _cost(a: sl.Attribution) -> str:
    return cost_text(a.passes, a.forwards)


def _scores_table(ex: sl.Explanation, sample: int) -> Table:
    table = Table(header_style="bold")
    table.add_column("word", overflow="fold")
    for name in ex:
        table.add_column(name, justify="right", no_wrap=True)
    columns = []
    words: list[str] = []
    for a in ex.values():
        words, scores = word_scores(a, sample)
        columns.append(scores.tolist())
    for i, word in enumerate(words):  # Text: a word such as "[/b]" is no Rich markup
        table.add_row(Text(shown(word)), *(score_text(col[i]) for col in columns))
    return table


def score_text(value: float) -> str:
    """A word score with 4 significant digits: "+0.1314", "-4.83e-06" (a fixed "+0.0000" hid
    the scores of models whose words move the score by little)."""
    return "+0" if value == 0 else f"{value:+#.4g}"  # (#: trailing zeros kept, "+0.1100")


def explain_text(
    texts: Annotated[
        list[str],
        typer.Argument(help="One or more texts to explain (quote each).", show_default=False),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="'minilm' (the packaged sentence-transformer) or 'hf:PATH' (a Hugging Face "
            "model directory with its tokenizer).",
        ),
    ] = DEFAULT_MODEL,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="Class to explain for a classifier, a name or an index (default: predicted).",
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            "-c",
            help="Explain the similarity to this text (sentence-embedding models).",
            show_default=False,
        ),
    ] = None,
    continuation: Annotated[
        str | None,
        typer.Option(
            "--continuation",
            help="Explain the log-probability of this continuation (causal language models).",
            show_default=False,
        ),
    ] = None,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            "-m",
            help="Comma-separated methods, e.g. integrated_gradients,leave_one_out,saliency.",
        ),
    ] = DEFAULT_METHODS,
    scores: Annotated[
        str,
        typer.Option(
            "--scores",
            help="Token scores from embedding attributions: 'signed' (sum) or 'l2' (norm).",
        ),
    ] = "signed",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="Method option key=value, repeatable, e.g. n_steps=32 or baselines=pad.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write a self-contained HTML page: a .html file, or a folder for index.html.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    debug: DebugOption = False,
) -> None:
    """Explain texts: each word coloured by how much it moves the model's score."""
    from ..report.run import method_requests

    with session(debug):
        given = [
            name
            for name, v in (
                ("--target", target),
                ("--compare", compare),
                ("--continuation", continuation),
            )
            if v is not None
        ]
        if len(given) > 1:
            raise sl.SaliencelabError(
                f"Give only one of {' and '.join(given)}: --target for a classifier, --compare "
                "for a sentence-embedding model, --continuation for a language model."
            )
        if scores not in TOKEN_SCORES:
            raise sl.SaliencelabError(f"--scores must be signed or l2, not {scores!r}.")
        requests = method_requests(methods, options=parse_options(option))
        page = None
        if out is not None:
            # a page's name (.html) is the file; anything else is a folder (made if new) for
            # index.html, as --out is for the other commands ("results/" loses its slash)
            page = out if out.suffix.lower() in {".html", ".htm"} else out / "index.html"
            check_outputs([(page, "the HTML page")])  # before the model runs, not after
        loaded = load_model(model, device)
        if not isinstance(loaded, TextModel):
            raise sl.SaliencelabError(
                f"{model!r} is not a text model; use --model minilm or --model hf:PATH (a Hugging "
                "Face model directory), or `saliencelab explain` for images."
            )
        loaded = loaded.with_token_scores(scores)
        if compare is not None:
            spec: Any = similarity_to(compare)
        elif continuation is not None:
            spec = continuation_target(continuation)
        else:
            spec = parse_target(target)
        ex = sl.explain(loaded, list(texts), methods=requests, target=spec)
        notes = _target_notes(loaded, ex, spec)
        console = out_console()
        first = next(iter(ex.values()))
        for b, text in enumerate(first.extras["texts"]):
            console.print(Text(f"Text {b + 1}: {shown(text)}", style="bold"), soft_wrap=True)
            console.print(Text(shown(f"{loaded.name}, {notes[b]}"), style="dim"), soft_wrap=True)
            width = max(len(name) for name in ex)
            for name, a in ex.items():
                line = Text(f"{name:<{width}}  ")
                line.append_text(terminal_text(a, b))
                console.print(line, soft_wrap=True)
            console.print(_scores_table(ex, b))
        costs = ", ".join(f"{name} {_cost(a)}" for name, a in ex.items())
        console.print(f"Cost per text: {costs}; {ex.seconds:.1f} s.", soft_wrap=True)
        if page is not None:
            target_note = dict(enumerate(notes))
            save_text_html(
                ex, page, title=f"saliencelab: {loaded.name}", model=loaded.name, target=target_note
            )
            console.print(Text.assemble("HTML: ", (str(page), "bold")), soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `explain-text` command to the app."""
    app.command("explain-text")(explain_text)
