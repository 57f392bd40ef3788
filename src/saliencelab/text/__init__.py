"""Text: token attributions for Hugging Face transformers with the same `sl.explain`.

    tm = sl.load_model("minilm")                       # or sl.load_model("hf:./my-model")
    ex = sl.explain(tm, ["A man is playing a guitar."], methods="integrated_gradients",
                    target=sl.similarity_to("Someone is making music."))
    ex["integrated_gradients"].tokens    # per text, the words (subword pieces merged)
    ex["integrated_gradients"].maps      # (B, W) one signed score per word

Modules: `encoding` (tokens, words), `inputs` (the embedding-space tensor the engine sees),
`model` (the adapter), `targets` (similarity_to, continuation), `leave_one_out` (a registered
method), `render` (HTML page, terminal), `commands` (the `explain-text` CLI command). Importing
this package does not import transformers.
"""

from .encoding import TextBatch
from .model import TextModel, TextModule
from .render import save_text_html, terminal_text, text_html
from .targets import continuation, similarity_to

__all__ = [
    "TextBatch",
    "TextModel",
    "TextModule",
    "continuation",
    "save_text_html",
    "similarity_to",
    "terminal_text",
    "text_html",
]
