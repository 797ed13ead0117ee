"""The fast CPU backend: a compiled tile rasteriser with a hand-written backward.

The C++ kernel (``csrc/rasterize_cpu.cpp``) is built with ``torch.utils.cpp_extension`` the first
time it is needed and cached by torch (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``). Where it cannot be built (no compiler, no ninja, or
``TIMM_GVIT_NO_EXTENSION=1``), the backend falls back to the pure-PyTorch ``"chunked"`` renderer
and says so once in a warning; with ``TIMM_GVIT_REQUIRE_CPU_KERNEL=1`` (CI sets it, so that the
tests compare the kernel and not its fallback) that is a RuntimeError instead.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .chunked import render_chunked
from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, to_pixel_space

_SOURCE = Path(__file__).parent / "csrc" / "rasterize_cpu.cpp"
#: Set (not "" or "0"), a kernel that cannot be built is an error instead of a fallback.
REQUIRE_VARIABLE = "TIMM_GVIT_REQUIRE_CPU_KERNEL"


@functools.lru_cache(maxsize=None)
def load_extension() -> bool:
    """Build (or load the cached build of) the C++ kernel; ``False`` if that is impossible (a
    RuntimeError instead where :data:`REQUIRE_VARIABLE` is set)."""
    if os.environ.get("TIMM_GVIT_NO_EXTENSION", "") not in ("", "0"):
        reason = "TIMM_GVIT_NO_EXTENSION is set"
    else:
        try:
            from torch.utils.cpp_extension import load

            load(
                name="timm_gvit_rasterize_cpu",
                sources=[str(_SOURCE)],
                extra_cflags=["-O3"],
                is_python_module=False,
                verbose=False,
            )
            return True
        except Exception as exc:  # compiler, ninja or headers missing: anything the build raises
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
    if os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0"):
        raise RuntimeError(f"timm_gvit: the compiled CPU renderer is unavailable ({reason}) and {REQUIRE_VARIABLE} is set: "
                           "install a C++ compiler and ninja (and unset TIMM_GVIT_NO_EXTENSION), or unset "
                           f"{REQUIRE_VARIABLE} to fall back to the pure-PyTorch 'chunked' renderer")
    warnings.warn(
        f"timm_gvit: the compiled CPU renderer is unavailable ({reason}); using the slower "
        "pure-PyTorch 'chunked' renderer instead.",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


class _RasterizeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, colors, opacity, background, qmax, extent, height, width, alpha_min, t_min):
        ctx.save_for_backward(means, conics, colors, opacity, background, qmax, extent)
        ctx.settings = (height, width, alpha_min, ALPHA_MAX, t_min)
        return torch.ops.timm_gvit.rasterize_forward(
            means, conics, colors, opacity, qmax, extent, background, height, width, alpha_min, ALPHA_MAX, t_min
        )

    @staticmethod
    def backward(ctx, grad_image):
        means, conics, colors, opacity, background, qmax, extent = ctx.saved_tensors
        grads = torch.ops.timm_gvit.rasterize_backward(
            means, conics, colors, opacity, qmax, extent, background, grad_image.contiguous(), *ctx.settings
        )
        return (*grads, None, None, None, None, None, None)


def render_cpu(
    gaussians: Tensor,
    height: int,
    width: int,
    background: Tensor,
    alpha_min: float = ALPHA_MIN,
    t_min: float = T_MIN,
) -> Tensor:
    """Render ``[B, K, 9]`` decoded Gaussians on a ``[B, 3]`` background -> ``[B, 3, H, W]``.

    Tiles of 16 x 16 pixels see only the Gaussians whose culling box touches them. Cut-offs
    (``alpha_min``, ``t_min``; both 0 for the exact formula) are those of
    :mod:`timm_gvit.rendering.projection`. Memory is O(B K + B H W) in forward and backward.
    """
    if not load_extension():
        return render_chunked(gaussians, height, width, background, alpha_min, t_min)
    pix = to_pixel_space(gaussians, height, width, alpha_min)
    return _RasterizeCPU.apply(
        pix.means.contiguous(),
        pix.conics.contiguous(),
        pix.colors.contiguous(),
        pix.opacity.contiguous(),
        background.contiguous(),
        pix.qmax.contiguous(),
        pix.extent.contiguous(),
        height,
        width,
        alpha_min,
        t_min,
    )
