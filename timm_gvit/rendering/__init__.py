"""Differentiable rendering of decoded 2D Gaussians (gvit-method.md sections 1 and 3).

One entry point, :func:`render_gaussians`, over interchangeable backends:

- ``"reference"``: the dense formula (test oracle; memory O(B K H W)).
- ``"cpu"``: the fast CPU backend, a compiled tile rasteriser with a hand-written backward;
  falls back to ``"chunked"`` with a warning where it cannot be compiled.
- ``"chunked"``: pure PyTorch, tiled and checkpointed; works on any device.
- ``"gsplat"``: gsplat's CUDA rasteriser.
- ``"auto"``: ``"gsplat"`` for CUDA tensors when its kernels load, ``"cpu"`` for CPU tensors,
  ``"chunked"`` otherwise.

The fast backends skip contributions with alpha < 1/255 and stop a pixel once its
transmittance is below 1e-4 (:mod:`~timm_gvit.rendering.projection`); ``"reference"`` has no
cut-offs.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .chunked import render_chunked
from .cpu import render_cpu
from .gsplat_backend import gsplat_available, render_gsplat, to_gsplat
from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN
from .reference import render_reference

BACKENDS = ("auto", "reference", "cpu", "chunked", "gsplat")

__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "BACKENDS",
    "T_MIN",
    "gsplat_available",
    "render_gaussians",
    "resolve_backend",
    "to_gsplat",
]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that ``backend`` means for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cpu":
            return "cpu"
        if device.type == "cuda" and gsplat_available():
            return "gsplat"
        return "chunked"
    if backend == "gsplat" and (device.type != "cuda" or not gsplat_available()):
        why = "the Gaussians are not on a CUDA device" if device.type != "cuda" else "gsplat's CUDA kernels do not load"
        raise ValueError(f"backend='gsplat' needs CUDA tensors and gsplat's kernels, but {why}; use backend='auto'")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got {device.type}; use backend='auto'")
    return backend


def _check_inputs(gaussians: Tensor, height: int, width: int) -> None:
    if not isinstance(gaussians, Tensor) or gaussians.dim() != 3 or gaussians.shape[-1] != 9:
        shape = tuple(gaussians.shape) if isinstance(gaussians, Tensor) else type(gaussians).__name__
        raise ValueError(f"gaussians must be a [B, k, 9] tensor, got {shape}")
    if not gaussians.is_floating_point():
        raise ValueError(f"gaussians must be floating point, got {gaussians.dtype}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not torch.isfinite(gaussians).all():
        bad = (~torch.isfinite(gaussians)).nonzero()[0].tolist()
        raise ValueError(f"gaussians contain non-finite values (first at [batch, gaussian, param] = {bad})")
    sigma = gaussians[..., 2:4]
    if (sigma <= 0).any():
        bad = (sigma <= 0).nonzero()[0].tolist()
        raise ValueError(
            f"sigma_x/sigma_y (params 2, 3) must be > 0, got {sigma[bad[0], bad[1], bad[2]].item()} "
            f"at [batch, gaussian] = {bad[:2]}"
        )


def _background(background, batch: int, like: Tensor) -> Tensor:
    if background is None:
        return like.new_zeros(batch, 3)
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.dim() == 0:
        return bg.expand(batch, 3)
    if bg.shape == (3,):
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
) -> Tensor:
    """Render decoded Gaussians to images.

    Args:
        gaussians: ``[B, k, 9]`` decoded Gaussians (mu_x, mu_y, sigma_x, sigma_y, phi, r, g, b,
            opacity), Gaussian 0 in front. Differentiable in all nine parameters.
        height, width: output size in pixels; the same Gaussians give the same picture at any size.
        background: None (black), a float, or a ``[3]`` / ``[B, 3]`` colour.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``[B, 3, height, width]`` images, same dtype and device as ``gaussians``.
    """
    _check_inputs(gaussians, height, width)
    bg = _background(background, gaussians.shape[0], gaussians)
    if not torch.isfinite(bg).all():
        raise ValueError("background contains non-finite values")
    name = resolve_backend(backend, gaussians.device)
    if name == "reference":
        return render_reference(gaussians, height, width, bg)
    if name == "cpu":
        return render_cpu(gaussians, height, width, bg, ALPHA_MIN, T_MIN)
    if name == "gsplat":
        return render_gsplat(gaussians, height, width, bg)
    if backend == "auto":
        warnings.warn(
            f"timm_gvit: no gsplat kernels for {gaussians.device.type} tensors; rendering with the "
            "pure-PyTorch 'chunked' backend",
            RuntimeWarning,
            stacklevel=2,
        )
    return render_chunked(gaussians, height, width, bg, ALPHA_MIN, T_MIN)
