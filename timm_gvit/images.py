"""Reading images, for everything that reads them: the trainer's datasets (files, bytes from tar
shards and Arrow tables), ``explain`` and ``fitting``.

One rule throughout: an image is decoded completely, or it is an :class:`UnreadableImage` that
names it. Odd but readable images (greyscale, CMYK, palette, 16-bit, with transparency,
EXIF-rotated, a PNG named ``.JPEG``) become 8-bit RGB (or greyscale for one-channel models).

It imports nothing from timm_gvit, so that every other module can import it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: File name endings read as images (case-insensitive): what PIL decodes and datasets' imagefolder lists.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


class UnreadableImage(ValueError):
    """An image that cannot be decoded completely; its message names the image and the reason."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB. 16-bit and 32-bit integer greyscale (16-bit PNGs) and float
    greyscale in 0..1 or 0..255 (float TIFFs) are scaled to 8 bits, where PIL's ``convert`` would
    clip them to white."""
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit), I (32-bit int, what 16-bit PNGs may open as)
        values = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) <= 65535 else float(np.iinfo(np.int32).max)
        image = Image.fromarray(np.round(values.clip(0, top) * (255 / top)).astype(np.uint8))
    elif image.mode == "F":  # 32-bit float greyscale: in [0, 1], or in [0, 255] as many tools write it
        values = np.asarray(image)
        top = float(np.nanmax(values, initial=0))
        if not np.isfinite(values).all() or top > 255:
            raise ValueError(f"a 32-bit float image with values up to {top:g}{' and non-finite ones' if np.isfinite(top) else ''}: "
                             "expected values in 0..1 or 0..255")
        scale = 255 if top <= 1 else 1
        image = Image.fromarray(np.round(values.clip(0, 255 / scale) * scale).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what PIL asks for (a palette's transparency is in bytes)
    return image if image.mode == "RGB" else image.convert("RGB")


def to_channels(image: Image.Image, in_chans: int) -> Image.Image:
    """Any PIL image -> what a model with ``in_chans`` input channels takes: 8-bit RGB (3) or 8-bit
    greyscale 'L' (1, PIL's luma of the RGB image; a grey image keeps its values)."""
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 3 (RGB) or 1 (greyscale), got {in_chans!r}")
    image = to_rgb(image)
    return image.convert("L") if in_chans == 1 else image


def decode_image(source: bytes | str | os.PathLike, name: str | None = None, *, in_chans: int = 3,
                 min_size: int | None = None) -> Image.Image:
    """An encoded image (its bytes, or a file's path) as a decoded 8-bit RGB (``in_chans=3``) or
    greyscale (1) PIL image, upright by its EXIF orientation.

    ``min_size``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (PIL's ``draft``, the DCT's own
    downscaling, several times faster) as long as its shorter side stays >= ``min_size`` pixels.

    Raises :class:`UnreadableImage` naming ``name`` (or the path) when the data is empty, not an
    image, truncated, or decodes only partly.
    """
    name = name or (os.fspath(source) if not isinstance(source, (bytes, bytearray, memoryview)) else "<bytes>")
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not len(source):
                raise UnreadableImage(f"{name}: not a readable image (an empty file)")
            stream = io.BytesIO(source)
        elif os.path.getsize(source) == 0:
            raise UnreadableImage(f"{name}: not a readable image (an empty file)")
        else:
            stream = open(source, "rb")
        with stream, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's notes on EXIF and palettes, not problems
            image = Image.open(stream)
            if min_size and image.format == "JPEG":
                scale = min(image.size) / min_size
                if scale >= 2:
                    image.draft(image.mode, (max(1, int(image.size[0] / scale)), max(1, int(image.size[1] / scale))))
            image.load()  # decodes everything: a truncated file fails here
            ImageOps.exif_transpose(image, in_place=True)  # upright; no copy when there is nothing to turn
            return to_channels(image, in_chans)
    except UnreadableImage:
        raise
    except UnidentifiedImageError as exc:
        raise UnreadableImage(f"{name}: not a readable image (no image format that PIL knows)") from exc
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc


def read_image(path: str | Path) -> Image.Image:
    """An image file as 8-bit RGB, decoded completely; a ``ValueError`` that names the problem otherwise."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no such image file: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    return decode_image(path)
