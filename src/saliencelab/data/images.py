"""Reading image files safely into RGB PIL images."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import SaliencelabError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

PathLike = str | os.PathLike
ORIENTATION = 0x0112  # the EXIF tag of how the stored pixels are turned for display


MAX_PIXELS = 50_000_000  # image files with more pixels are refused (read from the header)


def load_image(path: PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image.

    The size is checked from the header before any pixel is decoded. EXIF orientation is applied.
    Conversions: transparency (RGBA, LA, PA, palette/gray with a transparent colour) is composited
    on white, so transparent areas look as they do on a white page; 16/32-bit and float gray images
    are stretched linearly from their own min..max to 0..255 (a constant image becomes black);
    gray, palette and CMYK images use Pillow's conversions. Only the first frame of an animation
    or multi-page file is read.

    Raises:
        SaliencelabError: missing file, a directory, not a readable image, or over `max_pixels`.
    """
    p = Path(path)
    if not p.exists():
        raise SaliencelabError(f"Image file {str(p)!r} does not exist; check the path.")
    if p.is_dir():
        raise SaliencelabError(
            f"{str(p)!r} is a directory, not an image; pass an image file, or list the images in "
            "a folder with sl.image_paths(folder)."
        )
    return _decode(p, str(p), max_pixels)


def image_from_bytes(
    data: bytes,
    name: str,
    max_pixels: int = MAX_PIXELS,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """The image file held in `data` (e.g. an upload) as an 8-bit RGB PIL image, read as
    :func:`load_image` reads files; `name` names it in error messages; `formats`: the Pillow
    format names accepted (default: every format Pillow reads).

    Raises:
        SaliencelabError: not a readable image (or not in `formats`), or over `max_pixels`.
    """
    return _decode(io.BytesIO(data), name, max_pixels, formats)


def _decode(
    source: Path | io.BytesIO, name: str, max_pixels: int, formats: Sequence[str] | None = None
) -> Image.Image:
    """`load_image` of an existing file or of bytes in memory; `name` for the messages."""
    try:
        with warnings.catch_warnings():
            # The caller's `max_pixels` is the limit we enforce; Pillow's warning would repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=formats) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise SaliencelabError(
                        f"{name!r} is {w}x{h} = {w * h:,} pixels, over the limit of "
                        f"{max_pixels:,}; downscale it first, or raise the limit (max_pixels= "
                        "in Python, --max-pixels on the command line)."
                    )
                im.load()
                return to_rgb(im)  # upright by its EXIF orientation, too
    except SaliencelabError:
        raise
    except Image.DecompressionBombError as e:
        raise SaliencelabError(
            f"{name!r} is too large for Pillow to decode safely ({e}); downscale it first."
        ) from e
    except UnidentifiedImageError as e:
        raise SaliencelabError(
            f"{name!r} is not an image Pillow can read; pass a PNG, JPEG, BMP, GIF, TIFF, WebP "
            "or PNM (.ppm, .pgm, .pbm) file."
        ) from e
    except PermissionError as e:
        raise SaliencelabError(
            f"Cannot read {name!r} (permission denied); check its permissions."
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise SaliencelabError(
            f"{name!r} could not be decoded ({e}); the file may be truncated or corrupt, "
            "re-export it."
        ) from e


def upright(im: Image.Image) -> Image.Image:
    """`im` turned as its EXIF orientation tag says (a new image, without the tag), or `im`
    itself when it has no such tag (or an EXIF block Pillow cannot read)."""
    try:
        if im.getexif().get(ORIENTATION, 1) == 1:
            return im
        return ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not lose the pixels
        return im


def to_rgb(im: Image.Image) -> Image.Image:
    """A PIL image of any mode as a new 8-bit RGB image, upright by its EXIF orientation (see
    :func:`load_image` for the rules): an image opened with `Image.open` is drawn and explained
    the way `sl.load_image` reads its file."""
    turned = upright(im)
    if turned.mode == "RGB":
        return turned if turned is not im else im.copy()
    im = turned
    if im.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(stretch_to_uint8(np.asarray(im))).convert("RGB")
    bands = im.getbands()
    try:
        if "A" in bands or "a" in bands or "transparency" in im.info:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")
    except ValueError as e:  # e.g. "La", which Pillow cannot convert
        raise SaliencelabError(
            f"Cannot convert an image in Pillow mode {im.mode!r} to RGB; save it as an RGB or "
            "grayscale PNG or JPEG."
        ) from e


def as_rgb_image(image: Any, purpose: str = "to use") -> Image.Image:
    """A photo as 8-bit RGB, read as :func:`load_image` reads files: a PIL image (any mode), or a
    tensor or array (H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4 (RGBA, laid on white),
    uint8 or float in [0, 1] (e.g. `sl.data.shapes` images). `purpose` ("to draw on", "to
    preprocess") words the one-sentence refusal of anything else."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if not isinstance(image, (torch.Tensor, np.ndarray)):
        raise SaliencelabError(
            f"Expected a photo {purpose}, got {type(image).__name__}; pass a PIL image (open "
            "files with sl.load_image(path)) or an image tensor or array."
        )
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()  # bfloat16, float8, ...: float dtypes NumPy does not have
        a = t.numpy()
    else:
        a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    shaped = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))
    if shaped and np.issubdtype(a.dtype, np.floating):
        if not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise SaliencelabError(
                f"An image tensor {purpose} must hold pixels in [0, 1], but its values run from "
                f"{float(np.nanmin(a)):.3g} to {float(np.nanmax(a)):.3g}; pass the photo (e.g. "
                "sl.sample_image(...) or the [0, 1] image), not the model's normalised input."
            )
        a = (a * 255.0 + 0.5).astype(np.uint8)
    if not shaped or a.dtype != np.uint8:
        raise SaliencelabError(
            f"Expected a photo {purpose}: a (3, H, W) or (H, W, 3) tensor or array of floats in "
            f"[0, 1] or uint8; got shape {tuple(a.shape)} and dtype {a.dtype}."
        )
    return to_rgb(Image.fromarray(np.ascontiguousarray(a)))


def stretch_to_uint8(a: np.ndarray) -> np.ndarray:
    """Map an array linearly from its finite min..max to 0..255 uint8 (NaN and constant -> 0)."""
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = a[finite].min(), a[finite].max()
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    scaled = np.where(finite, (a - lo) * (255.0 / (hi - lo)), 0.0)
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def image_paths(paths: PathLike | Iterable[PathLike], recursive: bool = False) -> list[Path]:
    """Files to read: each file as given, each directory expanded to its image files (sorted).

    Image files are recognised by suffix (case-insensitive); hidden files, and with `recursive`
    the files inside hidden folders (`.ipynb_checkpoints`, `.git`…), are skipped.

    Raises:
        SaliencelabError: a path does not exist, or a directory holds no image files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            candidates = p.rglob("*") if recursive else p.iterdir()
            found = sorted(
                f
                for f in candidates
                if f.is_file()
                and f.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise SaliencelabError(
                    f"Directory {str(p)!r} holds no image files"
                    f"{'' if recursive else ' at its top level'} (suffixes "
                    f"{', '.join(sorted(IMAGE_SUFFIXES))}); point to a folder of images."
                )
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise SaliencelabError(f"Path {str(p)!r} does not exist; check the path.")
    return out
