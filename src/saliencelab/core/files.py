"""Writing output files whole or not at all, with one sentence when a path cannot be written."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import SaliencelabError


def make_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the folder `path` (and its parents); one sentence naming `what` it is if that is
    not possible (a file in the way, no permission)."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaliencelabError(
            f"Cannot create the {what} {str(folder)!r} ({e.strerror or e}); choose another "
            "output folder."
        ) from e
    return folder


def temporary_beside(path: Path) -> Path:
    """A fresh hidden name in `path`'s folder for writing `path` before moving it into place."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def write_whole(path: str | os.PathLike, write: Callable[[BinaryIO], None], what: str) -> Path:
    """Write a file with `write(f)` (creating parent folders) and return its path.

    The content goes to a temporary file beside `path` that is moved over it when complete, so
    an existing file is replaced whole or left as it was. A path that cannot be written (a
    folder, a parent that is a file, no permission) is one sentence naming `what` it is (e.g.
    "the picture").
    """
    path = Path(path)
    if path.is_dir():
        raise SaliencelabError(
            f"{str(path)!r} is a folder; give a file name for {what}, e.g. "
            f"{str(path / 'out')!r} with its suffix."
        )
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = temporary_beside(path)
        with open(candidate, "xb") as f:  # (the umask applies, as for a plain open)
            tmp = candidate
            write(f)
        os.replace(candidate, path)
        tmp = None
    except OSError as e:
        raise SaliencelabError(
            f"Cannot write {what} {str(path)!r} ({e.strerror or e}); choose another path."
        ) from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path
