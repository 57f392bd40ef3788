"""Writing pictures: whole or not at all, with one sentence when the path cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from ..core.files import write_whole


def image_format(path: Path) -> str:
    """The Pillow format for `path`'s suffix (".jpg" -> "JPEG"); "PNG" for no or an unknown
    suffix, so "out/cat" and "out/cat.png" are both PNG files."""
    suffix = path.suffix.lower()
    if not suffix:
        return "PNG"
    Image.init()
    fmt = Image.EXTENSION.get(suffix)
    return fmt if fmt is not None and fmt in Image.SAVE else "PNG"


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write `image` to `path` (creating parent folders) in the format its suffix names (PNG by
    default) and return the path: replaced whole or left as it was, and a path that cannot be
    written is one sentence (`core/files.py`)."""
    fmt = image_format(Path(path))
    return write_whole(path, lambda f: image.save(f, format=fmt), "the picture")
