"""The README's Python and shell examples stay true to the library, without running the models.

Every ```python block parses; every `sl.` name it uses exists (also through an alias such as
`O = sl.objectives`); every call of a library function passes keywords (and no more positional
arguments than) its signature takes; and the literal requests go through the library's own
checks: `sl.explain`'s methods and options (`core/explain._requests`), `sl.evaluate`'s and
`sl.metrics.get(name)(...)`'s metrics and options (`metric_requests`, which builds each metric),
`sl.load_model`'s registered names. Every `saliencelab ...` line of the README's shell blocks
parses as the CLI parses it (command, options, their types), its `--methods` and `--metrics`
name registered methods and metrics and its `--model` a registered model (or a spec). A renamed
function, command, option, method or metric fails here with the README's block and line.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

import saliencelab as sl
from saliencelab.cli import app
from saliencelab.cli_common import click_errors, parse_options
from saliencelab.core.errors import SaliencelabError
from saliencelab.core.explain import _requests
from saliencelab.metrics.evaluate import metric_requests
from saliencelab.models.zoo import list_models

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_LITERAL = object()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, text) of each ``` block, in order."""
    blocks: list[tuple[str, str]] = []
    language, lines = None, []
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, "".join(lines)))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


BLOCKS = [b for lang, b in fenced_blocks(README.read_text(encoding="utf-8")) if lang == "python"]
SHELL_LINES = [
    line.strip()
    for lang, b in fenced_blocks(README.read_text(encoding="utf-8"))
    if lang != "python"
    for line in b.replace("\\\n", " ").splitlines()
    if line.strip().startswith("saliencelab ")
]


def literal(node: ast.AST | None) -> Any:
    """The value of a literal node (numbers, strings, lists, dicts of them), else NOT_LITERAL."""
    if node is None:
        return NOT_LITERAL
    try:
        return ast.literal_eval(node)
    except ValueError:
        return NOT_LITERAL


class Names:
    """`sl.a.b` chains and the aliases the README binds to them (`O = sl.objectives`)."""

    def __init__(self) -> None:
        self.aliases: dict[str, Any] = {"sl": sl}
        self.metrics: set[str] = set()  # metrics the README registers itself

    def resolve(self, node: ast.AST) -> tuple[str, Any] | None:
        """(dotted name, object) of an attribute chain rooted at `sl` or an alias; None for
        other expressions; raises AttributeError for a name the library lacks."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        obj = self.aliases[node.id]
        dotted = node.id
        for part in reversed(parts):
            dotted += f".{part}"
            if not hasattr(obj, part):
                raise AttributeError(f"{dotted} does not exist")
            obj = getattr(obj, part)
        return dotted, obj

    def bind(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                found = self.resolve(node.value) if isinstance(target, ast.Name) else None
                if found is not None and inspect.ismodule(found[1]):
                    self.aliases[target.id] = found[1]
            if isinstance(node, ast.ClassDef):  # class M(Metric): name = "..."
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and [getattr(t, "id", None) for t in item.targets] == ["name"]
                        and isinstance(literal(item.value), str)
                    ):
                        self.metrics.add(literal(item.value))


def calls(tree: ast.Module) -> Iterator[ast.Call]:
    yield from (n for n in ast.walk(tree) if isinstance(n, ast.Call))


def check_signature(name: str, fn: Callable, call: ast.Call) -> None:
    """Positional count and keyword names fit `fn`'s signature (a `**kwargs` takes any)."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(
        k.arg is None for k in call.keywords
    ):
        return
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C type without one
        return
    try:
        sig.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
    except TypeError as e:
        if "missing" not in str(e):  # the README may leave out what the reader supplies
            raise AssertionError(f"{name}(...): {e}") from None


def keyword(call: ast.Call, name: str, position: int) -> ast.AST | None:
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return call.args[position] if len(call.args) > position else None


def options_of(call: ast.Call, taken: set[str]) -> dict[str, Any]:
    """The call's other keywords, each its literal value (None where not a literal)."""
    out = {}
    for k in call.keywords:
        if k.arg is not None and k.arg not in taken:
            value = literal(k.value)
            out[k.arg] = None if value is NOT_LITERAL else value
    return out


def check_explain(call: ast.Call) -> None:
    methods = literal(keyword(call, "methods", 2))
    if methods is NOT_LITERAL:
        return
    taken = set(inspect.signature(sl.explain).parameters) - {"options"}
    _requests(methods, options_of(call, taken))


def check_metrics(metrics: Any, options: dict[str, Any], defined: set[str]) -> None:
    """The metrics build with these options (values the README does not spell out: left to
    their defaults, the name still checked against the constructor). A request naming a metric
    the README defines itself (`defined`, registered as the block runs) is not checked."""
    if metrics is NOT_LITERAL or set(requested_names(metrics)) & defined:
        return
    known = {k: v for k, v in options.items() if v is not None}
    built = metric_requests(metrics, known)
    accepted = {p for m in built for p in inspect.signature(type(m).__init__).parameters}
    for key in sorted(set(options) - set(known) - accepted):
        raise AssertionError(f"No requested metric takes the option {key!r}")


def requested_names(asked: Any) -> list[str]:
    if isinstance(asked, str):
        return [m.strip() for m in asked.split(",")]
    return [str(m) for m in asked]


def check_evaluate(call: ast.Call, defined: set[str]) -> None:
    taken = set(inspect.signature(sl.evaluate).parameters) - {"options"}
    metrics = keyword(call, "metrics", 3)
    asked = ("deletion", "insertion") if metrics is None else literal(metrics)
    check_metrics(asked, options_of(call, taken), defined)


def check_call(names: Names, call: ast.Call) -> None:
    func = call.func
    # sl.metrics.get("name")(options): the metric builds with them
    if isinstance(func, ast.Call):
        inner = names.resolve(func.func)
        if inner is not None and inner[1] is sl.metrics.get:
            name = literal(func.args[0]) if func.args else NOT_LITERAL
            if name is not NOT_LITERAL and name not in names.metrics:
                check_signature(f"sl.metrics.get({name!r})", sl.metrics.get(name), call)
                values = {k: v for k, v in options_of(call, set()).items() if v is not None}
                metric_requests({name: values}, {})
        return
    found = names.resolve(func)
    if found is None:
        return
    dotted, fn = found
    if not callable(fn):
        raise AssertionError(f"{dotted} is not callable")
    check_signature(dotted, fn, call)
    if fn is sl.explain:
        check_explain(call)
    elif fn is sl.evaluate:
        check_evaluate(call, names.metrics)
    elif fn is sl.load_model:
        name = literal(keyword(call, "name_or_spec", 0))
        if isinstance(name, str) and ":" not in name and "/" not in name:
            assert name.lower() in list_models(), f"sl.load_model({name!r}): no such model"


def check_block(names: Names, index: int, source: str) -> None:
    tree = ast.parse(source, filename=f"README python block {index}")
    names.bind(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            try:
                names.resolve(node)
            except AttributeError as e:
                pytest.fail(f"README block {index}, line {node.lineno}: {e}")
    for call in calls(tree):
        try:
            check_call(names, call)
        except (AssertionError, SaliencelabError, TypeError) as e:
            line = source.splitlines()[call.lineno - 1].strip()
            pytest.fail(f"README block {index}, line {call.lineno} ({line}): {e}")


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 10


def test_every_python_example_matches_the_library() -> None:
    names = Names()  # aliases carry over from block to block, as a reader reads them
    for index, source in enumerate(BLOCKS):
        check_block(names, index, source)


def check_shell(line: str) -> None:
    """One `saliencelab ...` line: the CLI parses it (no command run), and its names exist."""
    group = typer.main.get_command(app)
    args = shlex.split(line, comments=True)[1:]
    ctx = typer.Context(group, info_name="saliencelab")
    try:
        name, command, rest = group.resolve_command(ctx, args)
        params = command.make_context(name, rest, parent=ctx).params
    except typer.Exit:  # --help
        return
    except click_errors.ClickException as e:
        raise AssertionError(e.format_message()) from None
    if isinstance(params.get("methods"), str):
        _requests(params["methods"], {})
    if isinstance(params.get("metrics"), str):
        metric_requests(params["metrics"], {})
    parse_options(list(params.get("option") or []))
    models = params.get("model")
    for model in [models] if isinstance(models, str) else list(models or []):
        if not any(c in model for c in ":/\\") and not model.endswith((".pt", ".pt2", ".py")):
            assert model.lower() in list_models(), f"--model {model}: no such model"


def test_the_readme_has_shell_examples() -> None:
    assert len(SHELL_LINES) >= 15


@pytest.mark.parametrize("line", SHELL_LINES)
def test_every_shell_example_parses(line: str) -> None:
    check_shell(line)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("saliencelab explian chelsea", "No such command"),
        ("saliencelab explain chelsea --method gradcam", "No such option"),
        ("saliencelab explain chelsea --chunk-size many", "valid integer"),
        ("saliencelab explain chelsea --methods gradcamm", "gradcamm"),
        ("saliencelab evaluate photos/ --metrics deletoin", "deletoin"),
        ("saliencelab explain chelsea --option n_steps", "key=value"),
        ("saliencelab serve --model efficientnet_lite9", "no such model"),
    ],
)
def test_a_wrong_shell_example_fails(line: str, expected: str) -> None:
    with pytest.raises((AssertionError, SaliencelabError), match=re.escape(expected)):
        check_shell(line)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("sl.explian(model, x)", "sl.explian does not exist"),
        ("sl.explain(model, x, methods='gradcam', n_step=4)", "No requested method takes"),
        ("sl.explain(model, x, methods={'lime': {'n_sample': 9}})", "lime has no option"),
        ("sl.explain(model, x, methods=['saliancy'])", "saliancy"),
        ("sl.evaluate(model, x, ex, metrics=['deletoin'])", "deletoin"),
        ("sl.evaluate(model, x, ex, metrics='deletion', stepz=3)", "stepz"),
        ("sl.evaluate(model, x, ex, metrics='deletion', stepz=n)", "stepz"),
        ("sl.metrics.get('deletion')(stepz=3)", "stepz"),
        ("sl.load_model('efficientnet_lite9')", "no such model"),
        ("sl.metrics.boxes_to_masks(b, 64, fmt='xyxy')", "fmt"),
        ("sl.sample_image('chelsea', 'coffee')", "too many positional"),
        ("O = sl.objectives\nO.class_logitt('cat')", "O.class_logitt does not exist"),
    ],
)
def test_a_wrong_example_fails(source: str, expected: str) -> None:
    """Each kind of drift the check is there for is caught (so the check can fail)."""
    with pytest.raises(pytest.fail.Exception, match=re.escape(expected)):
        check_block(Names(), 0, source)
