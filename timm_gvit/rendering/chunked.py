"""Pure-PyTorch tiled renderer: the fast CPU backend's fallback, and a device-agnostic path.

The image is rendered in bands of rows. Each band sees only the Gaussians whose culling box
touches it and is wrapped in activation checkpointing, so the backward pass recomputes one band
at a time instead of keeping B x K x H x W intermediates. Same cut-offs and the same result as
the compiled kernel, just slower.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, to_pixel_space

BAND_ROWS = 16


def _composite_band(means, conics, colors, opacity, background, y0: int, height: int, width: int,
                    alpha_min: float, t_min: float) -> Tensor:
    """Rows ``y0 .. y0 + height`` of the image from band-culled Gaussians ``[B, Kb, ...]``."""
    x = torch.arange(width, dtype=means.dtype, device=means.device) + 0.5
    y = torch.arange(y0, y0 + height, dtype=means.dtype, device=means.device) + 0.5
    dx = x - means[..., 0, None, None]  # [B, Kb, 1, W]
    dy = y[:, None] - means[..., 1, None, None]  # [B, Kb, h, 1]
    a, b, c = (conics[..., i, None, None] for i in range(3))
    raw = opacity[..., None, None] * torch.exp(-0.5 * (a * dx * dx + 2 * b * dx * dy + c * dy * dy))
    alpha = torch.where(raw >= alpha_min, raw.clamp(max=ALPHA_MAX), torch.zeros_like(raw))
    in_front = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=1), dim=1)
    # As gsplat: a pixel stops before the Gaussian that would take it to t_min or below; that one
    # and those behind it do not count (the transmittance after each Gaussian only falls, so the
    # ones kept are the ones in front).
    alpha = alpha * (in_front * (1 - alpha) > t_min).to(alpha.dtype).detach()
    transmittance = torch.prod(1 - alpha, dim=1)
    image = torch.einsum("bkhw,bkc->bchw", alpha * in_front, colors)
    return image + transmittance[:, None] * background[:, :, None, None]


def render_chunked(
    gaussians: Tensor,
    height: int,
    width: int,
    background: Tensor,
    alpha_min: float = ALPHA_MIN,
    t_min: float = T_MIN,
) -> Tensor:
    """Render ``[B, K, 9]`` decoded Gaussians on a ``[B, 3]`` background -> ``[B, 3, H, W]``."""
    pix = to_pixel_space(gaussians, height, width, alpha_min)
    lo = pix.means[..., 1] - pix.extent[..., 1]  # [B, K] topmost pixel-centre y reached
    hi = pix.means[..., 1] + pix.extent[..., 1]
    visible = pix.qmax >= 0
    bands = []
    for y0 in range(0, height, BAND_ROWS):
        rows = min(BAND_ROWS, height - y0)
        touches = visible & (hi >= y0 + 0.5) & (lo <= y0 + rows - 0.5)  # [B, K]
        count = int(touches.sum(1).max())
        # Per image, the touching Gaussians in index order, padded with opacity-0 entries.
        order = torch.sort((~touches).to(torch.int8), dim=1, stable=True).indices[:, :count]
        keep = torch.gather(touches, 1, order).to(gaussians.dtype)

        def pick(t: Tensor) -> Tensor:
            idx = order.reshape(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            return torch.gather(t, 1, idx)

        args = (pick(pix.means), pick(pix.conics), pick(pix.colors), pick(pix.opacity) * keep, background)
        bands.append(
            checkpoint(_composite_band, *args, y0, rows, width, alpha_min, t_min, use_reentrant=False)
        )
    return torch.cat(bands, dim=2)
