"""Writing output files whole or not at all, with one sentence when a path cannot be written."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from .errors import SaliencelabError


class FolderInTheWay(SaliencelabError):
    """A folder stands where a file is to be written.

    `path` and `what` (e.g. "the picture") let the command line give its own advice: there every
    file name is the tool's choice, so the user can only move that folder or pick another --out.
    """

    def __init__(self, path: str | os.PathLike, what: str, message: str | None = None) -> None:
        self.path, self.what = Path(path), what
        super().__init__(message or self.advice())

    def advice(self, another: str = "another output folder") -> str:
        """The sentence for a file whose name the tool chose: remove the folder, or `another`."""
        return (
            f"{str(self.path)!r} is a folder, so {self.what} cannot be written there; remove or "
            f"rename that folder, or choose {another}."
        )


def check_outputs(files: Iterable[tuple[str | os.PathLike, str]]) -> None:
    """Check, before any work, that each (path, what it is) a run will write can be written:
    no folder stands in its place and no file in place of one of its folders. One sentence
    (:class:`FolderInTheWay` for a folder) otherwise, so that a run never stops halfway
    through writing its results."""
    for path, what in files:
        path = Path(path)
        if path.is_dir():
            raise FolderInTheWay(path, what)
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise SaliencelabError(
                        f"{str(parent)!r} is a file, where the folder of {what} is to be made; "
                        "remove or rename that file, or choose another output folder."
                    )
                break


def new_folder(path: str | os.PathLike, what: str = "output folder") -> list[Path]:
    """`make_folder(path, what)`, returning the folders this call created (deepest first;
    none when `path` was there), for :func:`remove_if_empty` to take back."""
    folder = Path(path)
    created = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        created.append(p)
    try:
        make_folder(folder, what)
    except SaliencelabError:  # e.g. a parent made, then a name too long: take the parent back
        remove_if_empty(created)
        raise
    return created


def remove_if_empty(folders: Iterable[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty: a run that stopped before writing
    anything leaves no empty folder behind."""
    for folder in folders:
        if folder.name in (".", "..") or not os.path.isdir(folder):
            continue  # never made (a name the call failed on) or not a folder of its own
        try:
            folder.rmdir()
        except OSError:  # not empty: leave it and its parents
            return


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
    """A fresh hidden name in `path`'s folder for writing `path` before moving it into place
    (a short one where `path`'s own name leaves no room: names hold at most 255 bytes)."""
    name = f".{path.name}.{secrets.token_hex(4)}.tmp"
    if len(name.encode()) > 255:
        name = f".saliencelab.{secrets.token_hex(8)}.tmp"
    return path.with_name(name)


def write_whole(path: str | os.PathLike, write: Callable[[BinaryIO], None], what: str) -> Path:
    """Write a file with `write(f)` (creating parent folders) and return its path.

    The content goes to a temporary file beside `path` that is moved over it when complete, so
    an existing file is replaced whole or left as it was. A symbolic link keeps pointing where it
    did (the file it points to is replaced), and a special file that exists (a device such as
    /dev/stdout, a pipe) is written into, never replaced. A path that cannot be written (a
    folder, a parent that is a file, no permission, a name too long) is one sentence naming
    `what` it is (e.g. "the picture").
    """
    path = Path(path)
    try:
        is_dir = path.is_dir()
        if path.is_symlink():
            path = Path(os.path.realpath(path))  # replace what the link points to, keep the link
        special = path.exists() and not path.is_file() and not path.is_dir()
    except OSError as e:  # e.g. a name too long for the file system
        raise SaliencelabError(
            f"Cannot write {what} {str(path)!r} ({e.strerror or e}); choose another path."
        ) from e
    if is_dir:
        raise FolderInTheWay(
            path,
            what,
            f"{str(path)!r} is a folder; give a file name for {what}, e.g. "
            f"{str(path / 'out')!r} with its suffix.",
        )
    tmp: Path | None = None
    try:
        if special:
            with open(path, "wb") as f:
                write(f)
            return path
        check_outputs([(path, what)])  # a file where a folder is to be made: say which
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
