"""What the model, the trainer, ``explain`` and the scripts share about data: reading images into
the model's channels, un-normalising them, and checking a weights file before loading it.

It imports nothing else from timm_gvit, so that every other module can import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

#: A data config's ``mean`` or ``std``: one value per channel.
Stats = Union[Sequence[float], Tensor]


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
    return image.convert("RGB")


def to_channels(image: Image.Image, in_chans: int) -> Image.Image:
    """Any PIL image -> what a model with ``in_chans`` input channels takes: 8-bit RGB (3) or 8-bit
    greyscale 'L' (1, PIL's luma of the RGB image; a grey image keeps its values)."""
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 3 (RGB) or 1 (greyscale), got {in_chans!r}")
    image = to_rgb(image)
    return image.convert("L") if in_chans == 1 else image


def _per_channel(values: Stats, name: str, images: Tensor) -> Tensor:
    values = torch.as_tensor(values, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    if values.shape[0] != images.shape[-3]:
        raise ValueError(f"{name} has {values.shape[0]} value(s) but the images have {images.shape[-3]} channel(s) "
                         f"(shape {list(images.shape)}): use the data config of the model the images were made for")
    return values


def unnormalize(images: Tensor, mean: Stats, std: Stats) -> Tensor:
    """Undo the data config's normalisation.

    Args:
        images: ``[..., C, H, W]`` float, normalised with ``mean`` and ``std``.
        mean: C floats (sequence or tensor), the data config's mean.
        std: C floats (sequence or tensor), the data config's std.

    Returns:
        ``[..., C, H, W]`` images' dtype, in [0, 1].
    """
    mean, std = _per_channel(mean, "mean", images), _per_channel(std, "std", images)
    return (images * std + mean).clamp(0, 1)


def rgb_targets(images: Tensor, mean: Stats, std: Stats) -> Tensor:
    """The reconstruction target of normalised images: the Gaussians are always RGB, so a
    greyscale image (C = 1) becomes grey RGB.

    Args:
        images: ``[B, C, H, W]`` float, C = 3 or 1, normalised with ``mean`` and ``std``.
        mean: C floats, the data config's mean.
        std: C floats, the data config's std.

    Returns:
        ``[B, 3, H, W]`` images' dtype, in [0, 1] (a view that repeats the channel when C = 1).
    """
    return unnormalize(images, mean, std).expand(-1, 3, -1, -1)


def check_safetensors(path: str | Path) -> None:
    """Raise a ``ValueError`` naming ``path`` unless it is a complete safetensors file (reads the header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
