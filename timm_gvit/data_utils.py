"""What the model, the trainer, ``explain`` and the scripts share about data: un-normalising
images, and checking a weights file before loading it (reading images is :mod:`timm_gvit.images`).

It imports nothing from timm_gvit but :mod:`timm_gvit.images`, so that every other module can import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch
from torch import Tensor

from .images import to_channels, to_rgb  # noqa: F401  (their import path before timm_gvit.images)

#: A data config's ``mean`` or ``std``: one value per channel.
Stats = Union[Sequence[float], Tensor]


def _per_channel(values: Stats, name: str, images: Tensor) -> Tensor:
    values = torch.as_tensor(values, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    if values.shape[0] != images.shape[-3]:
        raise ValueError(f"{name} has {values.shape[0]} value(s) but the images have {images.shape[-3]} channel(s) "
                         f"(shape {list(images.shape)}): use the data config of the model the images were made for")
    return values


def normalize(images: Tensor, mean: Stats, std: Stats) -> Tensor:
    """8-bit images as the model takes them, on their device (what timm's prefetcher does).

    Args:
        images: ``[B, C, H, W]`` uint8, values 0..255.
        mean, std: C floats each, the data config's (for images in [0, 1]).

    Returns:
        ``[B, C, H, W]`` float32, ``(images / 255 - mean) / std``.
    """
    images = images.float()
    mean, std = _per_channel(mean, "mean", images), _per_channel(std, "std", images)
    return images.sub_(mean * 255).div_(std * 255)


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
