"""The 9-number Gaussian layout (docs/method.md section 1): decoding, its inverse, initial layouts.

A *raw* Gaussian is what networks and optimisers work with (unconstrained reals); a *decoded*
Gaussian is the public form every API exchanges:

    index  0, 1        2, 3              4     5, 6, 7    8
    raw    u_x, u_y    s_x, s_y          phi   c_r..c_b   o
    decoded tanh(u)    c * sigmoid(s)    phi   sigmoid(c) sigmoid(o)

with ``c`` the scale bound (1.0 by default, the paper's best).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from timm.layers import register_notrace_function
from torch import Tensor

NUM_PARAMS = 9
PARAM_NAMES = ("mu_x", "mu_y", "sigma_x", "sigma_y", "phi", "r", "g", "b", "opacity")
#: Decoded sigmas are kept at least this large, so that a saturated sigmoid cannot yield sigma 0.
MIN_SIGMA = 1e-6


def decode_gaussians(raw: Tensor, scale_bound: float = 1.0, min_sigma: float = MIN_SIGMA) -> Tensor:
    """Raw ``[..., 9]`` -> decoded ``[..., 9]`` Gaussians (sigma at least ``min_sigma``)."""
    return torch.cat(
        [
            torch.tanh(raw[..., 0:2]),
            (scale_bound * torch.sigmoid(raw[..., 2:4])).clamp_min(min_sigma),
            raw[..., 4:5],
            torch.sigmoid(raw[..., 5:9]),
        ],
        dim=-1,
    )


def encode_gaussians(gaussians: Tensor, scale_bound: float = 1.0, eps: float = 1e-4) -> Tensor:
    """Decoded ``[..., 9]`` -> raw ``[..., 9]``, the inverse of :func:`decode_gaussians`.

    Values on the boundary of their range (mu = +-1, sigma = c, colour 0 or 1) are pulled in by
    ``eps`` so that the raw values stay finite.
    """
    return torch.cat(
        [
            torch.atanh(gaussians[..., 0:2].clamp(-1 + eps, 1 - eps)),
            torch.logit((gaussians[..., 2:4] / scale_bound).clamp(eps, 1 - eps)),
            gaussians[..., 4:5],
            torch.logit(gaussians[..., 5:9].clamp(eps, 1 - eps)),
        ],
        dim=-1,
    )


def grid_layout(num_gaussians: int, height: int = 1, width: int = 1) -> tuple[Tensor, Tensor]:
    """Centres ``[k, 2]`` of a near-regular grid over an ``height`` x ``width`` image, row by row,
    and the grid spacing ``[2]`` (x, y) in normalised units."""
    cols = max(1, math.ceil(math.sqrt(num_gaussians * width / height)))
    rows = math.ceil(num_gaussians / cols)
    xs = (torch.arange(cols) + 0.5) / cols * 2 - 1
    ys = (torch.arange(rows) + 0.5) / rows * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)[:num_gaussians]
    return centres, torch.tensor([2.0 / cols, 2.0 / rows])


@functools.lru_cache(maxsize=None)
def _mirrored_slots(num_gaussians: int) -> Tensor:
    """The slot order ``[k]`` that reverses each row of :func:`grid_layout`."""
    rows = grid_layout(num_gaussians)[0][:, 1]
    order = torch.arange(num_gaussians)
    for row in rows.unique():
        slots = (rows == row).nonzero().flatten()  # left to right
        order[slots] = slots.flip(0)
    return order


def hflip_gaussians(gaussians: Tensor) -> Tensor:
    """Decoded Gaussians ``[..., k, 9]`` of an image -> those of its left-right mirror image.

    mu_x and phi change sign, and the Gaussians trade slots across each row of
    :func:`grid_layout`, so that a slot keeps its place in the image (the encoder's slot i sits in
    grid cell i; ``fit_gaussians``' grid init orders them the same way). A classifier whose
    position embeddings are per slot would otherwise see mirrored content in unmirrored slots.
    Slot order is also compositing order, so Gaussians that overlap within a row swap depth: the
    rendering is the mirror image exactly where no two Gaussians of a row overlap.
    """
    flipped = gaussians[..., _mirrored_slots(gaussians.shape[-2]).to(gaussians.device), :]  # indexing copies
    flipped[..., 0] = -flipped[..., 0]
    flipped[..., 4] = -flipped[..., 4]
    return flipped


@register_notrace_function  # torch.fx keeps it as one call (its batch size is a Proxy while tracing)
def sample_initial_gaussians(batch: int, num_gaussians: int, scale_bound: float = 1.0,
                             generator: Optional[torch.Generator] = None,
                             device: Optional[torch.device] = None) -> Tensor:
    """Random raw Gaussians ``[batch, k, 9]`` around a grid layout: the denoising encoder's g0.

    The noise is in the geometry: Gaussian i sits in grid cell i (jittered by up to half a cell),
    so that a slot keeps its rough place in the image, with sigma about half the spacing
    (log-normal spread) and a random rotation. Colour and opacity start near mid-grey and 0.73
    (raw N(0, 0.5) and N(1, 0.5)), for the encoder to read off the image.

    Drawn on ``device`` (default: the CPU; a ``generator`` must live there too) with no
    host-to-device copy, so that a training step on a GPU does not wait for the host.
    TorchScript-compatible, so that a scripted encoder keeps its training-mode path.
    """
    if device is None:
        device = torch.device("cpu")
    cols = max(1, math.ceil(math.sqrt(num_gaussians)))
    rows = math.ceil(num_gaussians / cols)
    index = torch.arange(num_gaussians, device=device)
    # grid_layout's centres and spacing, made on the device
    centres = torch.stack([((index % cols) + 0.5) / cols * 2 - 1, ((index // cols) + 0.5) / rows * 2 - 1], dim=-1)
    spacing = torch.stack([torch.full([], 2.0 / cols, device=device), torch.full([], 2.0 / rows, device=device)])
    # the draws in this order: seeded runs keep their g0
    xy = centres + (torch.rand([batch, num_gaussians, 2], generator=generator, device=device) - 0.5) * spacing
    sigma = (spacing / 2 * torch.exp(0.3 * torch.randn([batch, num_gaussians, 2], generator=generator, device=device))).clamp(max=0.9 * scale_bound)
    phi = torch.rand([batch, num_gaussians, 1], generator=generator, device=device) * math.pi
    colour = torch.randn([batch, num_gaussians, 4], generator=generator, device=device)
    raw = encode_gaussians(torch.cat([xy, sigma, phi, torch.zeros_like(colour)], dim=-1), scale_bound)
    opacity_offset = (torch.arange(4, device=device) == 3).to(colour.dtype)  # raw opacity around 1, colour around 0
    return torch.cat([raw[..., :5], 0.5 * colour + opacity_offset], dim=-1)
