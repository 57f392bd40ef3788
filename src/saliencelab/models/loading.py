"""Loading a user's model from a spec string.

Specs:
    "path/to/file.py:build"       a factory in a Python file, called as build(**kwargs)
    "package.module:build"         a factory in an importable module
    "model.pt2"                    a `torch.export` archive (loaded and unflattened); one
                                   exported with a fixed batch size is refused, as the engine
                                   runs chunks of other sizes (export with torch.export.Dim)
    "model.pt" / "model.ts"        a TorchScript file (`torch.jit.load`)

A factory returns an `nn.Module` or an `sl.Model`; `weights=path` then loads a state dict into it
with `torch.load(..., weights_only=True)`. Pickled whole models (`torch.save(model)`) can run
arbitrary code when loaded, so they are refused unless `trust_pickle=True`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..core.errors import SaliencelabError, closest
from .model import Model

MODEL_FILE_SUFFIXES = frozenset({".pt", ".pth", ".pt2", ".ts", ".jit", ".torchscript", ".ptl"})
# Keyword arguments of `load_model` that describe the Model rather than go to the factory.
MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(Model) if f.name != "module")
# Prefixes a wrapper puts before every key of the state dict it saves: nn.DataParallel and
# DistributedDataParallel ("module."), torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def split_factory_spec(spec: str) -> tuple[str, str] | None:
    """("file.py" or "package.module", "function") for a factory spec, else None.

    The function part must be a (dotted) Python identifier, so "C:\\models\\net.pt" is a file;
    an existing file is a file whatever its name ("best:final.pt").
    """
    if _is_file(spec):
        return None
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not all(part.isidentifier() for part in func.split(".")):
        return None
    return target, func


def _is_file(path: str) -> bool:
    """Whether `path` is an existing file (False for a name the system cannot take, e.g. one too
    long)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _exists(path: str) -> bool:
    """Whether `path` exists (False for a name the system cannot take, e.g. one too long)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def looks_like_spec(spec: str) -> bool:
    """Whether a string names a factory or a model file rather than a registered model name."""
    if split_factory_spec(spec) is not None:
        return True
    if spec.endswith(".py:"):
        raise SaliencelabError(
            f"{spec!r} names a Python file but no function; name the function in it that returns "
            f"the model: '{spec}build' (build being that function's name)."
        )
    return (
        Path(spec).suffix.lower() in MODEL_FILE_SUFFIXES
        or "/" in spec
        or os.sep in spec
        or _exists(spec)
    )


def load_spec(
    spec: str,
    *,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> Model:
    """Load a model from a spec (see the module docstring).

    Keyword arguments named like `Model` fields (labels, preprocess, name, default_layer,
    input_size, extra) set those fields, unless the factory has a parameter of that name (then it
    gets them); the rest go to the factory. The module is put in eval mode
    (a torch.export module cannot switch modes and stays as exported).
    """
    model_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in MODEL_FIELDS}
    factory_spec = split_factory_spec(spec)
    if factory_spec is not None:
        model = _from_factory(spec, *factory_spec, kwargs, model_fields)
    else:
        if kwargs:
            raise SaliencelabError(
                f"Unexpected option(s) {', '.join(sorted(kwargs))} for model file {spec!r}; "
                f"options only go to factories ('file.py:build'), the Model fields are "
                f"{', '.join(sorted(MODEL_FIELDS))}."
            )
        model = Model(module=load_model_file(spec, trust_pickle=trust_pickle), name=Path(spec).stem)
    if weights is not None:
        load_weights(model.module, weights, trust_pickle=trust_pickle)
    try:
        model.module.eval()
    except NotImplementedError:
        pass  # a torch.export module: fixed in the mode it was exported in
    return dataclasses.replace(model, **model_fields) if model_fields else model


def _from_factory(
    spec: str, target: str, func: str, kwargs: dict[str, Any], model_fields: dict[str, Any]
) -> Model:
    """The factory's model; the `model_fields` the factory names as parameters (a
    `build(input_size=...)`) move to its `kwargs`, since they are meant for it."""
    module = _import_target(target, spec)
    factory: Any = module
    for part in func.split("."):
        if not hasattr(factory, part):
            names = _callables(factory)
            hint = closest(part, names)
            if not hint and names and len(names) <= 12:
                hint = f" It defines: {', '.join(names)}."
            raise SaliencelabError(
                f"{target!r} has no {part!r} (from spec {spec!r}); name a function there that "
                f"returns an nn.Module.{hint}"
            )
        factory = getattr(factory, part)
    if isinstance(factory, (nn.Module, Model)):
        functions = [n for n in _callables(module) if inspect.isfunction(getattr(module, n))]
        known = f" (it defines {', '.join(functions[:6])})" if functions else ""
        raise SaliencelabError(
            f"{func!r} in {target!r} is a model instance ({type(factory).__name__}), not a "
            f"function that returns one; name a function there that returns the model{known}, "
            f"e.g. '{target}:build' with `def build(): return {func}`."
        )
    if not callable(factory):
        raise SaliencelabError(
            f"{func!r} in {target!r} is a {type(factory).__name__}, not a function; name a "
            "function that returns an nn.Module."
        )
    for name in [k for k in model_fields if _names_parameter(factory, k)]:
        kwargs[name] = model_fields.pop(name)
    try:
        out = factory(**kwargs)
    except SaliencelabError:
        raise  # the factory's own sentence, as it wrote it
    except (Exception, SystemExit) as e:
        raise SaliencelabError(
            f"Calling {func}() from {target!r} raised {type(e).__name__}: {e}; fix the factory or "
            "the options passed to it."
        ) from e
    if isinstance(out, Model):
        return out
    if isinstance(out, nn.Module):
        return Model(module=out, name=func)
    if callable(out) and not isinstance(out, type):
        raise SaliencelabError(
            f"{func}() from {target!r} returned a {type(out).__name__}, not a model; to explain a "
            "function batch → scores, make it return sl.blackbox(fn) (forward-only methods)."
        )
    raise SaliencelabError(
        f"{func}() from {target!r} returned a {type(out).__name__}, not a model; make it return an "
        "nn.Module (or an sl.Model)."
    )


def _names_parameter(factory: Any, name: str) -> bool:
    """Whether `factory` has a parameter `name` that a keyword can set."""
    try:
        param = inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


@contextlib.contextmanager
def _importing(folder: str, argv0: str) -> Iterator[None]:
    """While a user's code is imported or unpickled: `folder` first on sys.path (so it finds its
    neighbours; the `saliencelab` command, unlike `python`, does not put the working folder
    there), and sys.argv without saliencelab's own arguments (a module-level parse_args() would
    read them as its own)."""
    sys.path.insert(0, folder)
    argv, sys.argv = sys.argv, [argv0]
    try:
        yield
    finally:
        sys.argv = argv
        if folder in sys.path:
            sys.path.remove(folder)  # the first one: ours


def _exited(what: str, e: SystemExit) -> str:
    return (
        f"{what} exited (SystemExit: {e.code}) instead of defining the model: code that runs on "
        "import, such as argparse's parse_args() or sys.exit(), belongs under "
        '`if __name__ == "__main__":`.'
    )


def _callables(owner: Any) -> list[str]:
    """The public functions and classes `owner` offers as factories: for a module, those it
    defines itself (not `torch` or `nn` it imports), else its public callables."""
    own = owner.__name__ if isinstance(owner, ModuleType) else None
    found = []
    for n in dir(owner):
        obj = getattr(owner, n, None)
        if n.startswith("_") or not callable(obj) or isinstance(obj, ModuleType):
            continue
        if own is None or getattr(obj, "__module__", None) == own:
            found.append(n)
    return found


def _import_target(target: str, spec: str) -> ModuleType:
    is_file = target.endswith(".py") or "/" in target or os.sep in target or _is_file(target)
    if is_file:
        return _import_file(Path(target), spec)
    try:
        with _importing(os.getcwd(), target):
            return importlib.import_module(target)
    except SystemExit as e:
        raise SaliencelabError(_exited(f"Importing {target!r}", e)) from e
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise SaliencelabError(
                f"No Python module named {target!r} (from spec {spec!r}); install it, fix the "
                "name, or give a path to a .py file instead."
            ) from e
        raise SaliencelabError(
            f"Importing {target!r} failed because it needs the missing module {e.name!r}; "
            "install it."
        ) from e
    except Exception as e:
        raise SaliencelabError(
            f"Importing {target!r} failed with {type(e).__name__}: {e}; fix the error there."
        ) from e


def _import_file(path: Path, spec: str) -> ModuleType:
    if not _exists(str(path)):
        raise SaliencelabError(f"Python file {str(path)!r} (from spec {spec!r}) does not exist.")
    if path.is_dir() or path.suffix != ".py":
        raise SaliencelabError(
            f"{str(path)!r} is not a Python file; a factory spec looks like "
            "'path/to/file.py:build'."
        )
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"_saliencelab_user_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise SaliencelabError(f"Python cannot import {str(path)!r}; check that it is a .py file.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        with _importing(str(path.parent), str(path)):
            module_spec.loader.exec_module(module)
    except SystemExit as e:
        del sys.modules[name]
        raise SaliencelabError(_exited(f"Importing {str(path)!r}", e)) from e
    except Exception as e:
        del sys.modules[name]
        raise SaliencelabError(
            f"Importing {str(path)!r} failed with {type(e).__name__}: {e}; fix the error in that "
            "file."
        ) from e
    return module


def archive_kind(path: Path) -> str | None:
    """ "export", "torchscript" or "checkpoint" for PyTorch zip archives, else None."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
        return "export"
    if any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "checkpoint"
    return None


def static_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size (first dimension) an exported program's first input is fixed to, or None
    if it was exported with a dynamic batch (a symbolic size) or takes no tensor."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() >= 1 and isinstance(val.shape[0], int):
                return val.shape[0]
            return None
    return None


def load_model_file(path: str | os.PathLike, trust_pickle: bool = False) -> nn.Module:
    """An `nn.Module` from a torch.export archive, a TorchScript file or (trusted) a pickle."""
    p = Path(path)
    if not _exists(str(p)):
        raise SaliencelabError(f"Model file {str(p)!r} does not exist; check the path.")
    if p.is_dir():
        if (p / "config.json").is_file():
            raise SaliencelabError(
                f"{str(p)!r} is a directory with a config.json; load a Hugging Face model "
                f"directory with the hf: prefix, 'hf:{p}'."
            )
        raise SaliencelabError(
            f"{str(p)!r} is a directory; pass a model file (.pt2, TorchScript), 'file.py:build', "
            "or 'hf:PATH' for a Hugging Face model directory."
        )
    if p.suffix == ".py":
        raise SaliencelabError(
            f"{str(p)!r} is a Python file; name the function in it that returns the model: "
            f"'{p}:build' (build being that function's name)."
        )
    kind = archive_kind(p)
    if kind == "export":
        try:
            # torch's own deprecation notices while it reads the archive are not the user's to act
            # on (e.g. a FutureWarning about LeafSpec): quiet, so a refusal below is one sentence.
            with open(p, "rb") as f, warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                program = torch.export.load(f)
                # Unflattened, the exported module keeps its submodules, so layer hooks fire.
                module = torch.export.unflatten(program)
            batch = static_batch(program)
        except Exception as e:
            raise SaliencelabError(
                f"{str(p)!r} looks like a torch.export archive but failed to load ({e}); re-save "
                "it with torch.export.save() from this PyTorch version."
            ) from e
        if batch is not None:
            raise SaliencelabError(
                f"{str(p)!r} was exported for batches of exactly {batch} row(s) (torch.export "
                "fixes the example input's batch size unless told otherwise), but saliencelab "
                "runs models on batches of other sizes; export it with a dynamic batch: "
                "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},"
                ")) with an example x of 2 or more rows."
            )
        return module
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(p), map_location="cpu")
        except Exception as e:
            raise SaliencelabError(
                f"{str(p)!r} looks like a TorchScript file but failed to load ({e}); re-save it "
                "with torch.jit.save() or export it with torch.export.save()."
            ) from e
    obj = _torch_load(p, trust_pickle, what="model file")
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping):
        raise SaliencelabError(
            f"{str(p)!r} holds weights (a state dict), not a model; load it into your architecture "
            f"with load_model('file.py:build', weights={str(p)!r})."
        )
    raise SaliencelabError(
        f"{str(p)!r} holds a {type(obj).__name__}, not a model; pass a torch.export archive "
        "(.pt2), a TorchScript file, or 'file.py:build'."
    )


def _torch_load(p: Path, trust_pickle: bool, what: str) -> Any:
    # what to pass instead: a weights file can only be a state dict
    instead = (
        "pass a torch.export archive (.pt2), a TorchScript file, or a state dict saved with "
        "torch.save(model.state_dict())"
        if what == "model file"
        else "pass a state dict saved with torch.save(model.state_dict(), path)"
    )
    try:
        if not trust_pickle:
            return torch.load(p, map_location="cpu", weights_only=True)
        # a pickled whole model names the module of its class: found from the working folder,
        # as with `python` (the `saliencelab` command does not put it on sys.path)
        with _importing(os.getcwd(), sys.argv[0]):
            return torch.load(p, map_location="cpu", weights_only=False)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # weights_only's verdict on a non-tensor object
            raise SaliencelabError(
                f"{str(p)!r} is not a PyTorch {what} (it does not unpickle); {instead}."
            ) from e
        raise SaliencelabError(
            f"{str(p)!r} contains pickled Python objects, which safe loading (weights_only=True) "
            "refuses because unpickling can run arbitrary code; save model.state_dict() instead "
            "(or export the model with torch.export), or pass trust_pickle=True (--trust-pickle "
            "on the command line) only for a file you trust."
        ) from e
    except (ModuleNotFoundError, AttributeError) as e:
        if not trust_pickle:
            raise SaliencelabError(
                f"{str(p)!r} is not a PyTorch {what} ({type(e).__name__}); {instead}."
            ) from e
        # a pickled whole model names the module and class that defined it
        missing = f"the module {e.name!r}" if isinstance(e, ModuleNotFoundError) else f"{e}"
        raise SaliencelabError(
            f"{str(p)!r} is a pickled model whose code is not importable here ({missing}); run "
            "from the folder of the code that defined the model's class or add it to "
            "PYTHONPATH, or better, save model.state_dict() and load it with "
            "'file.py:build' and weights=."
        ) from e
    except Exception as e:  # (the exception's type, e.g. KeyError, tells a user nothing)
        raise SaliencelabError(
            f"{str(p)!r} is not a PyTorch {what} (torch.load cannot read it); {instead}."
        ) from e


def _state_dict_of(obj: Any) -> Mapping[str, Any] | None:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        return None
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner
        if isinstance(inner, nn.Module):  # {"model": model} (a trusted pickle)
            return inner.state_dict()
    return obj


def _without_wrapper_prefixes(
    state: Mapping[str, Any], expected: Mapping[str, Any]
) -> Mapping[str, Any]:
    """`state` without the `WRAPPER_PREFIXES` its keys all share, as many of them as make the
    most keys the model's (a model whose own keys start with "module." keeps them)."""
    candidates = [state]
    while candidates[-1]:
        last = candidates[-1]
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in last)), None)
        if prefix is None:
            break
        candidates.append({k[len(prefix) :]: v for k, v in last.items()})
    return max(candidates, key=lambda c: sum(k in expected for k in c))  # the first of equals


def load_weights(
    module: nn.Module, path: str | os.PathLike, trust_pickle: bool = False
) -> nn.Module:
    """Load a state dict file into `module` (strict); `{"state_dict": ...}` checkpoints work too.

    A "module." prefix on every key (saved from `nn.DataParallel`) or "_orig_mod." (from
    `torch.compile`) is removed, unless the model's own keys have it.
    """
    p = Path(path)
    if p.is_dir():
        raise SaliencelabError(
            f"{str(p)!r} is a folder, not a weights file; give the path of a state dict file "
            "(saved with torch.save(model.state_dict(), path))."
        )
    if not p.is_file():
        raise SaliencelabError(f"Weights file {str(p)!r} does not exist; check the path.")
    kind = archive_kind(p)
    if kind in ("export", "torchscript"):
        what = "a torch.export archive" if kind == "export" else "a TorchScript model"
        raise SaliencelabError(
            f"The weights file {str(p)!r} is {what}, not a state dict; load it as the model "
            f"itself (load_model({str(p)!r}), --model {p} on the command line), or save "
            "model.state_dict() to load into a factory's model."
        )
    state = _state_dict_of(_torch_load(p, trust_pickle, what="weights file"))
    if state is None or not all(isinstance(k, str) for k in state):
        raise SaliencelabError(
            f"{str(p)!r} does not hold a state dict; save one with torch.save(model.state_dict(), "
            "path)."
        )
    expected = module.state_dict()
    state = _without_wrapper_prefixes(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        k
        for k in expected
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        raise SaliencelabError(
            f"The weights in {str(p)!r} do not fit the model ({_describe('missing', missing)}, "
            f"{_describe('unexpected', unexpected)}, {_describe('wrong-shape', wrong_shape)}); "
            "build the same architecture the weights were saved from."
        )
    module.load_state_dict(state, strict=True)
    return module


def _describe(kind: str, keys: list[str]) -> str:
    if not keys:
        return f"0 {kind} keys"
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"{len(keys)} {kind} keys: {shown}"
