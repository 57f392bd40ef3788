"""Parsing what a user asks for: names with options (methods, metrics) and dotted options.

Both `sl.explain(methods=...)` and `sl.evaluate(metrics=...)` accept a name, a comma-separated
string, a list of names, or `{name: {option: value}}`; the CLI's `--option name.key=value` gives
an option to one of them and `--option key=value` to every one that takes it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .errors import SaliencelabError, closest

Requests = str | Sequence[str] | Mapping[str, Mapping[str, Any] | None]


def check_options(options: Any, subject: str, example: str) -> None:
    """One sentence unless `options` is None or a dict of keyword options ({option: value}):
    `subject` names them ("smoothgrad: base_options"), `example` shows a right one."""
    if options is not None and not isinstance(options, Mapping):
        raise SaliencelabError(
            f"{subject} must be a dict {{option: value}}, not {type(options).__name__} "
            f"{options!r}; pass e.g. {example}."
        )


def named_requests(asked: Requests, what: str, example: str) -> dict[str, dict[str, Any]]:
    """`{name: {own options}}` from any accepted form; one sentence when nothing is asked."""
    if isinstance(asked, str):
        asked = [m.strip() for m in asked.split(",") if m.strip()]
    if isinstance(asked, Mapping):
        for name, options in asked.items():
            check_options(options, f"The {what} {name!r}'s options", "{'option': value}")
    else:
        items = asked if isinstance(asked, Sequence) else [asked]
        for m in items:
            if not isinstance(m, str):
                raise SaliencelabError(
                    f"A {what} is named by a string, not {type(m).__name__}; pass e.g. {example}."
                )
    per = (
        {str(k): dict(v or {}) for k, v in asked.items()}
        if isinstance(asked, Mapping)
        else {str(m): {} for m in asked}
    )
    if not per:
        raise SaliencelabError(f"No {what} given; pass e.g. {example}.")
    return per


def split_dotted(
    options: Mapping[str, Any] | None,
    per: dict[str, dict[str, Any]],
    what: str,
    where: str,
    known: Collection[str] = (),
) -> dict[str, Any]:
    """Move each `name.key` option into `per[name]`; return the plain `key` (shared) options.

    `what` names the kind ("method", "metric"), `where` says how to request one (for the error),
    `known` the names that exist (a name not among them is said to be no such thing, not an
    unrequested one).
    """
    shared: dict[str, Any] = {}
    for key, value in (options or {}).items():
        name, dot, opt = key.rpartition(".")
        if not dot:
            shared[key] = value
            continue
        if name not in per and known and name not in known:
            raise SaliencelabError(
                f"The option {key!r} names no {what}: there is no {what} {name!r}."
                f"{closest(name, known)} Write {what}.option for one of {where}."
            )
        if name not in per:
            raise SaliencelabError(
                f"The option {key!r} is for the {what} {name!r}, which was not requested; add "
                f"it to {where} or drop the option."
            )
        per[name][opt] = value
    return shared
