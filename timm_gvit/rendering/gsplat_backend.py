"""The CUDA backend: our pixel-space Gaussians through gsplat's tile rasteriser.

We project the Gaussians ourselves, with :func:`~timm_gvit.rendering.projection.to_pixel_space`
(the projection the CPU kernel uses), and hand gsplat's public rasteriser its inputs directly:
``isect_tiles`` -> ``isect_offset_encode`` -> ``rasterize_to_pixels``. Each image of the batch
is one of gsplat's "images" (cameras), and each Gaussian's depth is its index, so Gaussian 0 is
in front by construction.

Why not ``gsplat.rasterization`` on a flat 3D scene seen by a pinhole camera (as before):

- its projection backward (1.5.3, ``ProjectionEWA3DGSFused.cu``) sums gradients over a warp
  partitioned by Gaussian id, so with k < 32 and a batch > 1 the geometry gradients of Gaussians
  of different images were mixed up;
- it rebuilds the conic by inverting a float32 covariance (``det = a c - b^2``), which loses about
  1% at an axis ratio of 400 and culls thinner Gaussians; ours is analytic;
- "index 0 in front" rested on a stable sort of tied depths.

The rasteriser's gradients (means, conics, colours, opacities, background) are gsplat's; the
projection is plain PyTorch, so autograd carries them back to the nine parameters.

Its cut-offs are those of our other fast backends: it skips alpha < 1/255 and stops a pixel
before the Gaussian that would take its transmittance to 1e-4 or below.

Host syncs: one per render, inside ``isect_tiles`` (it reads the number of tile intersections
back to size its buffers). Nothing here adds another.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .projection import ALPHA_MIN, to_pixel_space

#: The gsplat releases this backend is tested with (pyproject.toml pins the same range).
#: 1.6 changes the alpha cap from 0.999 to 0.99, needs torch >= 2.7 and rewrites the backend.
GSPLAT_VERSIONS = ">=1.5.3,<1.6"
#: gsplat's rasteriser works on 16 x 16-pixel tiles.
TILE_SIZE = 16
#: Radii are int32 pixels; larger ones only mean "covers every tile".
_MAX_RADIUS = 2**30


def gsplat_version_problem(version: str) -> str | None:
    """Why gsplat ``version`` is not used, or None when it is in :data:`GSPLAT_VERSIONS`."""
    from packaging.specifiers import SpecifierSet

    if SpecifierSet(GSPLAT_VERSIONS).contains(version, prereleases=True):
        return None
    return f"gsplat {version} is installed, but timm-gvit is tested with gsplat{GSPLAT_VERSIONS} (pip install 'gsplat{GSPLAT_VERSIONS}')"


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line (a build log keeps its first and last lines)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


@functools.lru_cache(maxsize=None)
def load_gsplat_kernels() -> str | None:
    """Import gsplat's CUDA kernels (building them on first use, which takes minutes); return
    why that failed, or None when they loaded. The reason is kept for the life of the process."""
    try:
        version = importlib.metadata.version("gsplat")
    except importlib.metadata.PackageNotFoundError:
        return f"gsplat is not installed (pip install 'gsplat{GSPLAT_VERSIONS}')"
    problem = gsplat_version_problem(version)
    if problem is not None:
        return problem
    try:
        from gsplat.cuda._backend import _C
    except Exception as exc:  # a failed import, a failed nvcc build: anything it raises
        return f"gsplat {version} failed to load: {_one_line(exc)}"
    if _C is None:
        return f"gsplat {version} failed to load: it found no CUDA toolkit (nvcc) to build its kernels with"
    return None


def gsplat_error() -> str | None:
    """Why ``backend="gsplat"`` cannot render here, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    return load_gsplat_kernels()


def gsplat_available() -> bool:
    """True when there is a CUDA GPU and gsplat's kernels load; :func:`gsplat_error` says why not."""
    return gsplat_error() is None


@dataclass
class RasterizerInputs:
    """What gsplat's rasteriser gets for ``B`` images of ``k`` Gaussians, all ``[B, k, ...]``.

    ``means2d`` [B, k, 2] centres in pixels (pixel (i, j) has its centre at (j + 0.5, i + 0.5)),
    ``conics`` [B, k, 3] (A, B, C) of the inverse covariance, alpha = o exp(-(A dx^2 + 2 B dx dy
    + C dy^2) / 2), ``colors`` [B, k, 3], ``opacities`` [B, k]: differentiable. ``radii`` [B, k, 2]
    int32 half-sizes in pixels of the box outside which alpha < 1/255 (0: never visible) and
    ``depths`` [B, k] = the Gaussian's index (0 in front): no gradient.
    """

    means2d: Tensor
    conics: Tensor
    colors: Tensor
    opacities: Tensor
    radii: Tensor
    depths: Tensor


def rasterizer_inputs(gaussians: Tensor, height: int, width: int) -> RasterizerInputs:
    """Decoded Gaussians ``[B, k, 9]`` -> gsplat's rasteriser inputs for a ``height`` x ``width`` image."""
    B, K, _ = gaussians.shape
    pix = to_pixel_space(gaussians, height, width, ALPHA_MIN)
    with torch.no_grad():
        # extent is 0 where alpha never reaches 1/255: radius 0 tells gsplat to skip the Gaussian
        radii = torch.nan_to_num(pix.extent, nan=0.0).ceil().clamp(0, _MAX_RADIUS).to(torch.int32)
        depths = torch.arange(K, dtype=gaussians.dtype, device=gaussians.device).expand(B, K)
    return RasterizerInputs(pix.means, pix.conics, pix.colors, pix.opacity, radii, depths)


def render_gsplat(gaussians: Tensor, height: int, width: int, background: Tensor) -> Tensor:
    """Render ``[B, K, 9]`` CUDA Gaussians (B, K >= 1) on a ``[B, 3]`` background -> contiguous
    ``[B, 3, H, W]``, computed in float32 and returned in the Gaussians' dtype."""
    from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels

    inputs = rasterizer_inputs(gaussians.float(), height, width)
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    _, isect_ids, flatten_ids = isect_tiles(inputs.means2d, inputs.radii, inputs.depths, TILE_SIZE, tiles_x, tiles_y)
    offsets = isect_offset_encode(isect_ids, gaussians.shape[0], tiles_x, tiles_y)  # [B, tiles_y, tiles_x]
    colors, _ = rasterize_to_pixels(
        inputs.means2d, inputs.conics, inputs.colors, inputs.opacities, width, height, TILE_SIZE,
        offsets, flatten_ids, backgrounds=background.float(),
    )  # [B, H, W, 3]
    return colors.permute(0, 3, 1, 2).contiguous().to(gaussians.dtype)
