"""Decoded Gaussians -> pixel-space Gaussians, shared by the fast renderers.

The decoded layout (docs/method.md section 1) lives in normalised coordinates: x and y in
[-1, 1] across the image, sigma = 1 spanning half of it. Rasterisers want pixels: a centre in
pixel units and the inverse covariance ("conic") in pixel units. The map is affine per axis,
p_px = (p + 1) * (W / 2, H / 2), so a non-square image stretches the Gaussians exactly as it
stretches the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: Alpha is capped here so that no pixel becomes fully opaque (docs/method.md section 3).
ALPHA_MAX = 0.999
#: Fast backends skip contributions below this alpha, as gsplat does.
ALPHA_MIN = 1.0 / 255.0
#: Fast backends stop a pixel before the Gaussian that would take its transmittance to this or
#: below (that Gaussian and those behind it do not count), as gsplat does.
T_MIN = 1e-4


@dataclass
class PixelGaussians:
    """Gaussians in pixel units, each field ``[B, K, ...]``.

    ``means`` [B, K, 2], ``conics`` [B, K, 3] = (A, B, C) of Sigma_px^-1 so that
    q = A dx^2 + 2 B dx dy + C dy^2, ``colors`` [B, K, 3], ``opacity`` [B, K]. The culling
    fields carry no gradient: ``qmax`` [B, K] is the q beyond which alpha < alpha_min (negative:
    never visible) and ``extent`` [B, K, 2] is the half-size in pixels of the box around the
    ellipse q <= qmax.
    """

    means: Tensor
    conics: Tensor
    colors: Tensor
    opacity: Tensor
    qmax: Tensor
    extent: Tensor


def to_pixel_space(gaussians: Tensor, height: int, width: int, alpha_min: float = ALPHA_MIN) -> PixelGaussians:
    """Convert decoded Gaussians ``[B, K, 9]`` to pixel units for an ``height`` x ``width`` image.

    Differentiable in means, conics, colours and opacity. The culling box is exact for the
    alpha cut-off: a pixel outside it has alpha below ``alpha_min`` (``alpha_min = 0`` disables
    culling: infinite boxes).
    """
    hx, hy = width / 2.0, height / 2.0  # Python scalars: no host-to-device copy per call
    mu, sigma, phi = gaussians[..., 0:2], gaussians[..., 2:4], gaussians[..., 4]
    cos, sin = torch.cos(phi), torch.sin(phi)
    inv_var = sigma.pow(-2)  # [B, K, 2]
    # Sigma^-1 = R diag(1/sx^2, 1/sy^2) R^T in normalised units, then scaled to pixels.
    a = cos * cos * inv_var[..., 0] + sin * sin * inv_var[..., 1]
    b = cos * sin * (inv_var[..., 0] - inv_var[..., 1])
    c = sin * sin * inv_var[..., 0] + cos * cos * inv_var[..., 1]
    conics = torch.stack([a / hx**2, b / (hx * hy), c / hy**2], dim=-1)
    opacity = gaussians[..., 8]
    with torch.no_grad():
        var = sigma.pow(2)
        var_x = (cos * cos * var[..., 0] + sin * sin * var[..., 1]) * hx**2
        var_y = (sin * sin * var[..., 0] + cos * cos * var[..., 1]) * hy**2
        if alpha_min > 0:
            qmax = 2.0 * (torch.log(opacity.clamp_min(1e-30)) - math.log(alpha_min))
        else:
            qmax = torch.full_like(opacity, torch.inf)
        reach = qmax.clamp_min(0).sqrt()
        extent = torch.stack([reach * var_x.sqrt(), reach * var_y.sqrt()], dim=-1)
    return PixelGaussians(
        means=torch.stack([(mu[..., 0] + 1) * hx, (mu[..., 1] + 1) * hy], dim=-1),
        conics=conics,
        colors=gaussians[..., 5:8],
        opacity=opacity,
        qmax=qmax.detach(),
        extent=extent.detach(),
    )
