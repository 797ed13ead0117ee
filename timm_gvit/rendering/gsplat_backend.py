"""The CUDA backend: our decoded Gaussians through gsplat's rasteriser.

gsplat renders 3D Gaussians through a camera. A planar scene seen by a pinhole camera is an
affine map, so each 2D Gaussian becomes a flat 3D Gaussian on the plane z = 1 (zero scale along
z, rotated only about the view axis) and an identity-pose camera with fx = W/2, cx = W/2,
fy = H/2, cy = H/2 maps [-1, 1]^2 exactly onto the image, pixel centres at j + 0.5 as in our
layout. With ``eps2d=0`` (no anti-aliasing blur) gsplat's projected covariance is exactly ours.

We use gsplat's 3DGS ``rasterization`` rather than ``rasterization_2dgs`` (which the paper used):
the 2DGS kernel clamps every splat to at least a pixel-sized low-pass filter, which changes small
Gaussians; the 3DGS path with a flat z-scale renders the same formula as our reference.

Differences from the reference that remain: gsplat skips alpha < 1/255 (as our CPU kernel does)
and, when a pixel's transmittance would fall to 1e-4 or below, drops the Gaussian that would
cross it (our kernel keeps it). That Gaussian can only be hidden behind 99.9% opacity in front
of it, so the difference is at most the transmittance before it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=None)
def gsplat_available() -> bool:
    """True when gsplat imports and its CUDA kernels load (they may compile on first use)."""
    if not torch.cuda.is_available():
        return False
    try:
        from gsplat.cuda._backend import _C
    except Exception:
        return False
    return _C is not None


def to_gsplat(gaussians: Tensor, height: int, width: int) -> dict[str, Tensor]:
    """Decoded Gaussians ``[B, K, 9]`` -> keyword arguments of ``gsplat.rasterization``.

    Returns ``means`` [B, K, 3], ``quats`` [B, K, 4] (wxyz), ``scales`` [B, K, 3], ``opacities``
    [B, K], ``colors`` [B, K, 3], ``viewmats`` [B, 1, 4, 4] and ``Ks`` [B, 1, 3, 3]: one camera
    per image, so a batch of images renders in one call.
    """
    B, K, _ = gaussians.shape
    zeros = gaussians.new_zeros(B, K, 1)
    half_phi = gaussians[..., 4:5] / 2
    Ks = gaussians.new_tensor([[width / 2, 0, width / 2], [0, height / 2, height / 2], [0, 0, 1]])
    return {
        "means": torch.cat([gaussians[..., 0:2], zeros + 1], dim=-1),
        "quats": torch.cat([torch.cos(half_phi), zeros, zeros, torch.sin(half_phi)], dim=-1),
        "scales": torch.cat([gaussians[..., 2:4], zeros], dim=-1),
        "opacities": gaussians[..., 8],
        "colors": gaussians[..., 5:8],
        "viewmats": torch.eye(4, dtype=gaussians.dtype, device=gaussians.device).expand(B, 1, 4, 4).contiguous(),
        "Ks": Ks.expand(B, 1, 3, 3).contiguous(),
    }


def render_gsplat(gaussians: Tensor, height: int, width: int, background: Tensor) -> Tensor:
    """Render ``[B, K, 9]`` CUDA Gaussians on a ``[B, 3]`` background -> ``[B, 3, H, W]``."""
    from gsplat import rasterization

    colors, _, _ = rasterization(
        **to_gsplat(gaussians.float(), height, width),
        width=width,
        height=height,
        eps2d=0.0,
        packed=False,
        backgrounds=background.float()[:, None, :],
        rasterize_mode="classic",
    )  # [B, 1, H, W, 3]
    return colors[:, 0].permute(0, 3, 1, 2).to(gaussians.dtype)
