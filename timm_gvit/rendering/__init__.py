"""Differentiable rendering of decoded 2D Gaussians (docs/method.md sections 1 and 3).

One entry point, :func:`render_gaussians`, over interchangeable backends:

- ``"reference"``: the dense formula (test oracle; memory O(B K H W)).
- ``"cpu"``: the fast CPU backend, a compiled tile rasteriser with a hand-written backward;
  falls back to ``"chunked"`` with a warning where it cannot be compiled.
- ``"chunked"``: pure PyTorch, tiled and checkpointed; works on any device.
- ``"gsplat"``: gsplat's CUDA rasteriser on our own projection.
- ``"auto"``: ``"gsplat"`` for CUDA tensors when its kernels load, ``"cpu"`` for CPU tensors,
  ``"chunked"`` otherwise (with a warning that says why gsplat is not used).

The fast backends skip contributions with alpha < 1/255 and stop a pixel before the Gaussian
that would take its transmittance to 1e-4 or below, all as gsplat does
(:mod:`~timm_gvit.rendering.projection`); ``"reference"`` has no cut-offs.

Every backend computes in float32 (float64 inputs: float64, except gsplat) whatever autocast
says, reads opacity and colour clamped to [0, 1], and returns the input's dtype.
"""

from __future__ import annotations

import contextlib
import operator
import warnings

import torch
from torch import Tensor

from .chunked import render_chunked
from .cpu import render_cpu
from .gsplat_backend import GSPLAT_VERSIONS, gsplat_available, gsplat_error, rasterizer_inputs, render_gsplat
from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN
from .reference import render_reference

BACKENDS = ("auto", "reference", "cpu", "chunked", "gsplat")

__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "BACKENDS",
    "GSPLAT_VERSIONS",
    "T_MIN",
    "gsplat_available",
    "gsplat_error",
    "rasterizer_inputs",
    "render_gaussians",
    "resolve_backend",
]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that ``backend`` means for tensors on ``device``.

    ``"auto"`` on a CUDA device without working gsplat kernels falls back to ``"chunked"`` with a
    warning that gives the reason (:func:`gsplat_error`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cpu":
            return "cpu"
        why = gsplat_error() if device.type == "cuda" else f"it renders CUDA tensors, these are on {device.type}"
        if why is None:
            return "gsplat"
        warnings.warn(f"timm_gvit: backend='auto' cannot use gsplat ({why}); rendering with the slower "
                      "pure-PyTorch 'chunked' backend", RuntimeWarning, stacklevel=3)
        return "chunked"
    if backend == "gsplat":
        why = "the Gaussians are not on a CUDA device" if device.type != "cuda" else gsplat_error()
        if why is not None:
            raise ValueError(f"backend='gsplat' needs CUDA tensors and gsplat's kernels, but {why}; use backend='auto'")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got {device.type}; use backend='auto'")
    return backend


def _image_size(name: str, value) -> int:
    """``value`` as a Python int >= 1; integer-like values (numpy or 0-d torch integers) pass."""
    try:
        size = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        size = None
    if size is None or size < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return size


def _check_layout(gaussians: Tensor) -> None:
    if not isinstance(gaussians, Tensor) or gaussians.dim() != 3 or gaussians.shape[-1] != 9:
        shape = tuple(gaussians.shape) if isinstance(gaussians, Tensor) else type(gaussians).__name__
        raise ValueError(f"gaussians must be a [B, k, 9] tensor, got {shape}")
    if not gaussians.is_floating_point():
        raise ValueError(f"gaussians must be floating point, got {gaussians.dtype}")


def _first(bad: Tensor) -> list[int]:
    return bad.nonzero()[0].tolist()


@torch.no_grad()
def _check_values(gaussians: Tensor, background: Tensor) -> None:
    """Raise a ValueError naming the first value that the layout does not allow."""
    if not torch.isfinite(gaussians).all():
        raise ValueError(f"gaussians contain non-finite values (first at [batch, gaussian, param] = {_first(~torch.isfinite(gaussians))})")
    sigma = gaussians[..., 2:4]
    if (sigma <= 0).any():
        b, k, i = _first(sigma <= 0)
        raise ValueError(f"sigma_x/sigma_y (params 2, 3) must be > 0, got {sigma[b, k, i].item()} at [batch, gaussian] = {[b, k]}")
    unit = gaussians[..., 5:9]
    outside = (unit < 0) | (unit > 1)
    if outside.any():
        b, k, i = _first(outside)
        name = ("r", "g", "b", "opacity")[i]
        raise ValueError(f"{name} (param {5 + i}) must lie in [0, 1], got {unit[b, k, i].item()} at [batch, gaussian] = "
                         f"{[b, k]} (check_values=False clamps colour and opacity to [0, 1] instead)")
    if not torch.isfinite(background).all():
        raise ValueError("background contains non-finite values")


def _background(background, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if background is None:
        return torch.zeros(batch, 3, dtype=dtype, device=device)
    if isinstance(background, (int, float)) and not isinstance(background, bool):
        return torch.full((batch, 3), float(background), dtype=dtype, device=device)  # no host-to-device copy
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.dim() == 0 or bg.shape == (3,):
        return bg.expand(batch, 3)
    if bg.shape == (batch, 3):
        return bg
    raise ValueError(f"background must be None, a float, a [3] or a [B, 3] = [{batch}, 3] tensor, got {tuple(bg.shape)}")


def render_gaussians(
    gaussians: Tensor,
    height: int,
    width: int,
    background: float | Tensor | None = None,
    backend: str = "auto",
    check_values: bool | None = None,
) -> Tensor:
    """Render decoded Gaussians to images.

    Args:
        gaussians: ``[B, k, 9]`` decoded Gaussians (mu_x, mu_y, sigma_x, sigma_y, phi, r, g, b,
            opacity), Gaussian 0 in front. Differentiable in all nine parameters. float16 and
            bfloat16 are rendered in float32.
        height, width: output size in pixels (integers, numpy integers included); the same
            Gaussians give the same picture at any size.
        background: None (black), a float, or a ``[3]`` / ``[B, 3]`` colour.
        backend: one of :data:`BACKENDS`.
        check_values: raise a ``ValueError`` naming the first bad value (non-finite, sigma <= 0,
            colour or opacity outside [0, 1], non-finite background). Default: check CPU tensors
            only, because on a GPU the check waits for the device on every call. Unchecked,
            colour and opacity are clamped to [0, 1], and an image whose Gaussians hold a
            non-finite value or a sigma <= 0 comes out NaN, on every backend.

    Returns:
        ``[B, 3, height, width]`` contiguous images, same dtype and device as ``gaussians``.
    """
    height, width = _image_size("height", height), _image_size("width", width)
    _check_layout(gaussians)
    name = resolve_backend(backend, gaussians.device)
    B, K, _ = gaussians.shape
    dtype = gaussians.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    bg = _background(background, B, compute, gaussians.device)
    checked = check_values if check_values is not None else gaussians.device.type == "cpu"
    if checked:
        _check_values(gaussians, bg)
    autocast_off = (torch.autocast(gaussians.device.type, enabled=False)
                    if gaussians.device.type in ("cpu", "cuda") else contextlib.nullcontext())
    with autocast_off:
        g = gaussians.to(compute)
        if not checked:  # NaN background: the whole image comes out NaN (transmittance is > 0)
            renderable = torch.isfinite(g).all(dim=(1, 2)) & (g[..., 2:4] > 0).all(dim=(1, 2))
            bg = bg.masked_fill(~renderable[:, None], float("nan"))
        g = torch.cat([g[..., :5], g[..., 5:].clamp(0, 1)], dim=-1)
        if B == 0 or K == 0:  # nothing to rasterise: the background, without launching kernels
            images = (bg + g.sum(dim=(1, 2))[:, None] * 0)[:, :, None, None].expand(B, 3, height, width)
        elif name == "reference":
            images = render_reference(g, height, width, bg)
        elif name == "cpu":
            images = render_cpu(g, height, width, bg, ALPHA_MIN, T_MIN)
        elif name == "gsplat":
            images = render_gsplat(g, height, width, bg)
        else:
            images = render_chunked(g, height, width, bg, ALPHA_MIN, T_MIN)
    return images.contiguous().to(dtype)
