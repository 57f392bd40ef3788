"""The method registry: every saliency method registered by name, with its family and cost.

A method is a function `fn(ctx: Context, **options) -> MethodOutput | Tensor` (see
`core/context.py`). Methods whose work is one gradient pass plus cheap maths declare that pass in
`shared_passes`, so `sl.explain` runs it once for all of them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .backward import Backward
from .errors import SaliencelabError, closest


@dataclass(frozen=True)
class SharedPass:
    """One forward+backward pass a method can share: backward mode, input grad, layer grads."""

    backward: Backward = "plain"
    input_grad: bool = True
    layer: bool = False


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str
    cost: str
    fn: Callable[..., Any]
    shared_passes: tuple[SharedPass, ...] = ()
    signed: bool = True
    reduction: str = "sum"
    summary: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    rowwise: bool | Callable[[dict[str, Any]], bool] = False
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def needs_layer(self) -> bool:
        return "layer" in self.options

    def __repr__(self) -> str:
        """One line a person can read: name, family, cost and options with their defaults (the
        dataclass repr printed the function and every field)."""
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return (
            f"<method {self.name} ({self.family}): passes per sample {self.cost}; "
            f"{options or 'no options'}>"
        )

    def is_rowwise(self, options: dict[str, Any]) -> bool:
        """Whether, with these options, the method reads the model only through the engine's
        passes and explains each sample from its own rows alone (no draws that depend on the
        sample's position in the batch): then several weight versions can share one call
        (`core/row_versions.py`)."""
        rowwise = self.rowwise
        return bool(rowwise({**self.options, **options}) if callable(rowwise) else rowwise)


_REGISTRY: dict[str, MethodSpec] = {}


def quoted(names: Iterable[str]) -> tuple[str, ...]:
    """("'mean'", "'max'") for ("mean", "max"): option names as `choices` lists them."""
    return tuple(repr(name) for name in names)


def register(
    name: str,
    *,
    family: str,
    cost: str,
    shared_passes: tuple[SharedPass, ...] = (),
    signed: bool = True,
    reduction: str = "sum",
    rowwise: bool | Callable[[dict[str, Any]], bool] = False,
    choices: dict[str, tuple[str, ...]] | None = None,
) -> Callable:
    """Register a method under `name`. `cost` says its passes per sample, e.g. "n_steps";
    `rowwise` see `MethodSpec.is_rowwise` (a bool, or a function of the options); `choices` maps
    an option to the values it accepts, in words for `saliencelab methods`: the names quoted
    (`quoted(NAMES)`, from the constant the method checks against), then the other kinds of
    value, e.g. {"fusion": quoted(FUSIONS)} or {"baseline": (*quoted(BASELINES), "a number")}."""
    choices = dict(choices or {})
    for option, values in choices.items():
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            raise SaliencelabError(
                f"register({name!r}, choices=...): {option!r} must map to a tuple of strings "
                f"(the values in words), not {values!r}."
            )
    choices = {k: tuple(v) for k, v in choices.items()}

    def wrap(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters.values())[1:]
        options = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        for option in choices:
            if option not in options:
                raise SaliencelabError(
                    f"register({name!r}, choices=...) names {option!r}, which is not an option "
                    f"of {fn.__qualname__}.{closest(option, options)} "
                    f"Its options: {', '.join(options) or 'none'}."
                )
        # The summary is the docstring's first paragraph, a sentence that may wrap over lines.
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[name] = MethodSpec(
            name=name,
            family=family,
            cost=cost,
            fn=fn,
            shared_passes=shared_passes,
            signed=signed,
            reduction=reduction,
            summary=" ".join(doc.split("\n\n")[0].split()),
            options=options,
            rowwise=rowwise,
            choices=choices,
        )
        return fn

    return wrap


def _load_builtin_methods() -> None:
    # By module path: the package attribute `saliencelab.methods` is the `methods()` function.
    importlib.import_module("saliencelab.methods")


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SaliencelabError(
            f"Unknown method {name!r}.{closest(name, _REGISTRY)} "
            "Run `saliencelab methods` to list them."
        ) from None


def methods() -> list[MethodSpec]:
    """Every registered method, with its family and its cost in passes."""
    _load_builtin_methods()
    return sorted(_REGISTRY.values(), key=lambda s: (s.family, s.name))
