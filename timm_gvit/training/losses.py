"""Training losses (docs/method.md section 5). Renderings and targets are ``[B, 3, H, W]`` in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import Tensor

PIXEL_LOSSES = ("bce", "mse")


def pixel_loss(rendered: Tensor, target: Tensor, kind: str = "bce") -> Tensor:
    """Binary cross-entropy (the paper's choice) or mean squared error."""
    if kind == "bce":
        return F.binary_cross_entropy(rendered.float().clamp(1e-6, 1 - 1e-6), target.float())
    if kind == "mse":
        return F.mse_loss(rendered.float(), target.float())
    raise ValueError(f"pixel loss must be one of {PIXEL_LOSSES}, got {kind!r}")


def gaussian_window(size: int, channels: int, device: torch.device, sigma: float = 1.5) -> Tensor:
    """pytorch-msssim's 1-D Gaussian window ``[channels, 1, 1, size]``, made on ``device``: the
    library builds it on the CPU and copies it over on every call, which makes a GPU step wait."""
    coords = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).view(1, 1, 1, size).repeat(channels, 1, 1, 1)


def dssim(rendered: Tensor, target: Tensor) -> Tensor:
    """D-SSIM = (1 - SSIM) / 2, with pytorch-msssim's Gaussian-window SSIM (window 11, or the
    largest odd size that fits a small image)."""
    window = max(min(11, min(rendered.shape[-2:]) // 2 * 2 - 1), 1)
    win = gaussian_window(window, rendered.shape[1], rendered.device)
    return (1 - ssim(rendered.float(), target.float(), data_range=1.0, size_average=True, win_size=window, win=win)) / 2


def reconstruction_loss(rendered: Tensor, target: Tensor, kind: str, lambda_perc: float, with_dssim: bool) -> Tensor:
    """L_pix + lambda_perc * D-SSIM (the latter only once it is switched on), in float32 whatever
    autocast says: CUDA autocast refuses ``binary_cross_entropy`` outright, and would run SSIM's
    window convolutions in 16 bits."""
    with torch.autocast(rendered.device.type, enabled=False):
        loss = pixel_loss(rendered, target, kind)
        return loss + lambda_perc * dssim(rendered, target) if with_dssim and lambda_perc > 0 else loss

