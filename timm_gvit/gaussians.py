"""The 9-number Gaussian layout (docs/method.md section 1): decoding, its inverse, initial layouts.

A *raw* Gaussian is what networks and optimisers work with (unconstrained reals); a *decoded*
Gaussian is the public form every API exchanges:

    index  0, 1        2, 3              4     5, 6, 7    8
    raw    u_x, u_y    s_x, s_y          phi   c_r..c_b   o
    decoded tanh(u)    c * sigmoid(s)    phi   sigmoid(c) sigmoid(o)

with ``c`` the scale bound (1.0 by default, the paper's best).

The denoising encoder's initial Gaussians g0 sit on a layout (:data:`G0_LAYOUTS`): the paper's
grid, row by row, or a nested order (docs/flex.md) whose every prefix of k slots covers the image
about as evenly as a k-slot layout would, which a model serving several budgets needs.
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


def grid_shape(num_gaussians: int, height: int = 1, width: int = 1) -> tuple[int, int]:
    """(columns, rows) of the near-regular grid of k cells over an ``height`` x ``width`` image:
    :func:`grid_layout`'s, and the cells :func:`nested_layout` orders. (sample_initial_gaussians
    repeats it in TorchScript.)"""
    cols = max(1, math.ceil(math.sqrt(num_gaussians * width / height)))
    return cols, math.ceil(num_gaussians / cols)


def grid_layout(num_gaussians: int, height: int = 1, width: int = 1) -> tuple[Tensor, Tensor]:
    """Centres ``[k, 2]`` of a near-regular grid over an ``height`` x ``width`` image, row by row,
    and the grid spacing ``[2]`` (x, y) in normalised units."""
    cols, rows = grid_shape(num_gaussians, height, width)
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


#: Initial layouts: 'grid' (slot i in cell i of a near-square grid, row by row: the paper's) and
#: the nested orders of :func:`nested_layout`.
G0_LAYOUTS = ("grid", "morton", "r2", "halton")
NESTED_LAYOUTS = G0_LAYOUTS[1:]
#: The plastic number, whose powers give the R2 sequence's steps (Roberts 2018).
PLASTIC = 1.324717957244746


def _radical_inverse(index: Tensor, base: int) -> Tensor:
    """Van der Corput's radical inverse of integers ``index`` in ``base``: their digits mirrored
    about the point, in [0, 1)."""
    out, scale, rest = torch.zeros(index.shape, dtype=torch.float64), 1.0 / base, index.clone()
    while bool((rest > 0).any()):
        out += (rest % base).double() * scale
        rest, scale = rest // base, scale / base
    return out


def nested_layout(num_slots: int, order: str) -> Tensor:
    """Centres ``[num_slots, 2]`` (x, y in [-1, 1]) in a coarse-to-fine order: for every k, the
    first k spread over the whole image, about as evenly as a k-slot layout would.

    - 'morton': the cells of :func:`grid_layout`'s grid for ``num_slots``, ordered by the bit
      reversal of their Morton (quadtree) code: the first 4 hold one cell of each quadrant, the
      first 16 one of each cell of a 4 x 4 split, and so on; every other bit is flipped, so that
      the cell a block starts with lies near the block's centre rather than in its corner.
    - 'r2': the R2 low-discrepancy sequence, t_i = frac(0.5 + (i + 1) (1 / p, 1 / p^2)) with p
      the plastic number; no grid, so every prefix length is as even as any other.
    - 'halton': the Halton sequence in bases 2 and 3, from its second point on.
    """
    if order not in NESTED_LAYOUTS:
        raise ValueError(f"order must be one of {NESTED_LAYOUTS}, got {order!r}")
    index = torch.arange(num_slots)
    if order == "r2":
        steps = torch.tensor([1 / PLASTIC, 1 / PLASTIC**2], dtype=torch.float64)
        unit = torch.frac(0.5 + (index[:, None] + 1).double() * steps)
    elif order == "halton":
        unit = torch.stack([_radical_inverse(index + 1, 2), _radical_inverse(index + 1, 3)], dim=-1)
    else:
        cols, rows = grid_shape(num_slots)
        cell = torch.arange(cols * rows)
        col, row = cell % cols, cell // cols
        bits = max(1, math.ceil(math.log2(max(cols, rows))))
        # each cell's column and row as fractions of 2^bits, interleaved from the finest bit: the code read backwards;
        # flipping every other bit starts each quadrant (and sub-quadrant) nearer its centre than its corner
        centring = sum(1 << bit for bit in range(0, bits, 2))
        qx, qy = (col * 2**bits // cols) ^ centring, (row * 2**bits // rows) ^ centring
        key = torch.zeros_like(cell)
        for bit in range(bits):
            key = key * 4 + ((qx >> bit) & 1) * 2 + ((qy >> bit) & 1)
        chosen = torch.sort(key * cols * rows + cell).indices[:num_slots]  # ties in cell order
        unit = torch.stack([(col[chosen] + 0.5) / cols, (row[chosen] + 0.5) / rows], dim=-1).double()
    return (unit * 2 - 1).float()


def rescale_initial_sigma(raw: Tensor, factor: float, scale_bound: float = 1.0) -> Tensor:
    """Raw Gaussians ``[..., 9]`` with their sigmas multiplied by ``factor`` (capped at 0.9 c, as
    :func:`sample_initial_gaussians` caps them): a nested g0 drawn for one budget, sized for another."""
    sigma = (scale_bound * torch.sigmoid(raw[..., 2:4]) * factor).clamp(max=0.9 * scale_bound)
    return torch.cat([raw[..., 0:2], torch.logit((sigma / scale_bound).clamp(1e-4, 1 - 1e-4)), raw[..., 4:]], dim=-1)


@register_notrace_function  # torch.fx keeps it as one call (its batch size is a Proxy while tracing)
def sample_initial_gaussians(batch: int, num_gaussians: int, scale_bound: float = 1.0,
                             generator: Optional[torch.Generator] = None,
                             device: Optional[torch.device] = None, centres: Optional[Tensor] = None) -> Tensor:
    """Random raw Gaussians ``[batch, k, 9]`` around a layout: the denoising encoder's g0.

    The noise is in the geometry: Gaussian i sits at its slot's place (jittered by up to half the
    spacing), so that a slot keeps its rough place in the image, with sigma about half the spacing
    (log-normal spread) and a random rotation. Colour and opacity start near mid-grey and 0.73
    (raw N(0, 0.5) and N(1, 0.5)), for the encoder to read off the image.

    The layout is the grid of :func:`grid_layout`, slot i in cell i, or, given ``centres``
    ``[>= k, 2]`` (a :func:`nested_layout`), their first k with the spacing of k evenly spread
    points, 2 / sqrt(k): the Gaussians of every budget k are sized for k.

    Drawn on ``device`` (default: the CPU; a ``generator`` must live there too) with no
    host-to-device copy, so that a training step on a GPU does not wait for the host.
    TorchScript-compatible, so that a scripted encoder keeps its training-mode path.
    """
    if device is None:
        device = torch.device("cpu")
    if centres is None:
        cols = max(1, math.ceil(math.sqrt(num_gaussians)))
        rows = math.ceil(num_gaussians / cols)
        index = torch.arange(num_gaussians, device=device)
        # grid_layout's centres and spacing, made on the device
        centres = torch.stack([((index % cols) + 0.5) / cols * 2 - 1, ((index // cols) + 0.5) / rows * 2 - 1], dim=-1)
        spacing = torch.stack([torch.full([], 2.0 / cols, device=device), torch.full([], 2.0 / rows, device=device)])
    else:
        centres = centres[:num_gaussians].to(device)
        spacing = torch.full([2], 2.0 / math.sqrt(num_gaussians), device=device)
    # the draws in this order: seeded runs keep their g0
    xy = centres + (torch.rand([batch, num_gaussians, 2], generator=generator, device=device) - 0.5) * spacing
    sigma = (spacing / 2 * torch.exp(0.3 * torch.randn([batch, num_gaussians, 2], generator=generator, device=device))).clamp(max=0.9 * scale_bound)
    phi = torch.rand([batch, num_gaussians, 1], generator=generator, device=device) * math.pi
    colour = torch.randn([batch, num_gaussians, 4], generator=generator, device=device)
    raw = encode_gaussians(torch.cat([xy, sigma, phi, torch.zeros_like(colour)], dim=-1), scale_bound)
    opacity_offset = (torch.arange(4, device=device) == 3).to(colour.dtype)  # raw opacity around 1, colour around 0
    return torch.cat([raw[..., :5], 0.5 * colour + opacity_offset], dim=-1)
