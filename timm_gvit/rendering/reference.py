"""The reference renderer: the dense formula of docs/method.md section 3, nothing more.

It materialises B x K x H x W tensors and lets autograd differentiate them. It is the test
oracle for every other backend: keep it short and obviously right, not fast.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .projection import ALPHA_MAX


def pixel_centers(height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised centres of the pixel grid: x ``[W]`` and y ``[H]`` in (-1, 1)."""
    x = (torch.arange(width, dtype=like.dtype, device=like.device) + 0.5) / width * 2 - 1
    y = (torch.arange(height, dtype=like.dtype, device=like.device) + 0.5) / height * 2 - 1
    return x, y


def render_reference(gaussians: Tensor, height: int, width: int, background: Tensor) -> Tensor:
    """Render ``[B, K, 9]`` decoded Gaussians over a ``[B, 3]`` background -> ``[B, 3, H, W]``.

    No cut-offs: every Gaussian contributes to every pixel, front to back in index order.
    """
    x, y = pixel_centers(height, width, gaussians)
    g = gaussians[:, :, :, None, None]  # [B, K, 9, 1, 1]
    dx = x - g[:, :, 0]  # [B, K, 1, W]
    dy = y[:, None] - g[:, :, 1]  # [B, K, H, 1]
    cos, sin = torch.cos(g[:, :, 4]), torch.sin(g[:, :, 4])
    u = (cos * dx + sin * dy) / g[:, :, 2]  # offset along the Gaussian's own x axis, in sigmas
    v = (cos * dy - sin * dx) / g[:, :, 3]
    alpha = (g[:, :, 8] * torch.exp(-0.5 * (u * u + v * v))).clamp(max=ALPHA_MAX)  # [B, K, H, W]
    transmittance = torch.cumprod(1 - alpha, dim=1)
    in_front = torch.cat([torch.ones_like(alpha[:, :1]), transmittance[:, :-1]], dim=1)
    image = torch.einsum("bkhw,bkc->bchw", alpha * in_front, gaussians[..., 5:8])
    return image + transmittance[:, -1, None] * background[:, :, None, None]
