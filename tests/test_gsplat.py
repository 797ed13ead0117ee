"""The gsplat backend: our layout -> gsplat's, checked on the CPU against gsplat's own PyTorch
projection, and (CUDA only) rendered by gsplat against the reference and the CPU kernel."""

import pytest
import torch

from timm_gvit.rendering import gsplat_available, render_gaussians, to_gsplat
from timm_gvit.rendering.cpu import render_cpu
from timm_gvit.rendering.projection import to_pixel_space
from timm_gvit.rendering.reference import render_reference

from conftest import random_gaussians
from test_rendering import _cutoff_bound, _grads

gsplat_torch = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed")
needs_gsplat_cuda = pytest.mark.skipif(
    not gsplat_available(), reason="needs a CUDA GPU with gsplat's kernels (none on this machine)"
)


@pytest.mark.parametrize("size", [(32, 32), (24, 57)])
def test_gsplat_camera_reproduces_our_pixel_space(size):
    """gsplat's plain-PyTorch projection of to_gsplat's scene gives our centres and conics."""
    H, W = size
    g = random_gaussians(3, 20, seed=4)
    scene = to_gsplat(g, H, W)
    covars, _ = gsplat_torch._quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    _, means2d, depths, conics, _ = gsplat_torch._fully_fused_projection(
        scene["means"], covars, scene["viewmats"], scene["Ks"], W, H, eps2d=0.0
    )
    ours = to_pixel_space(g, H, W)
    torch.testing.assert_close(means2d[:, 0], ours.means, rtol=0, atol=1e-9)
    torch.testing.assert_close(depths[:, 0], torch.ones_like(depths[:, 0]))
    # gsplat stores (A, B, C) of the inverse covariance as we do
    torch.testing.assert_close(conics[:, 0], ours.conics, rtol=1e-6, atol=1e-9)
    assert scene["opacities"].shape == (3, 20) and scene["colors"].shape == (3, 20, 3)


def _moderate_gaussians(batch, k, seed):
    """Opacities <= 0.7 and few overlaps: no pixel gets near gsplat's stopping point, where its
    rule (drop the Gaussian that crosses T = 1e-4) and ours (keep it) differ."""
    g = random_gaussians(batch, k, dtype=torch.float32, seed=seed)
    g[..., 8] = g[..., 8] * 0.7
    g[..., 2:4] = g[..., 2:4].clamp(0.03, 0.6)
    return g


@needs_gsplat_cuda
@pytest.mark.parametrize("size", [(32, 32), (40, 72)])
def test_gsplat_forward_matches_reference(size):
    """Within the cut-off bound of the fast backends plus 1e-4 for float32 and fast-math exp."""
    H, W = size
    g, bg = _moderate_gaussians(4, 24, seed=1), torch.rand(4, 3)
    out = render_gaussians(g.cuda(), H, W, bg.cuda(), backend="gsplat").cpu()
    bound = _cutoff_bound(g.double(), H, W, bg.double()).float()
    assert ((out - render_reference(g, H, W, bg)).abs() <= bound + 1e-4).all()


@needs_gsplat_cuda
def test_gsplat_gradients_match_cpu_kernel():
    """Same cut-offs as our CPU kernel: every gradient within 1e-3 of its largest magnitude."""
    H, W = 36, 44
    g, bg = _moderate_gaussians(2, 24, seed=2), torch.rand(2, 3)
    weights = torch.randn(2, 3, H, W)
    got = _grads(lambda a, b: render_gaussians(a, H, W, b, backend="gsplat"), g.cuda(), bg.cuda(), weights.cuda())
    want = _grads(lambda a, b: render_cpu(a, H, W, b), g, bg, weights)
    for x, y in zip(got, want):
        scale = y.abs().amax(dim=tuple(range(y.dim() - 1)), keepdim=True)
        assert ((x.cpu() - y).abs() / scale).max() < 1e-3


@needs_gsplat_cuda
def test_auto_uses_gsplat_on_cuda():
    g = _moderate_gaussians(2, 16, seed=3).cuda()
    torch.testing.assert_close(render_gaussians(g, 32, 32), render_gaussians(g, 32, 32, backend="gsplat"))
