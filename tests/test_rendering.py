"""The renderer against its dense oracle, analytic values and its own stated cut-off bounds."""

import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import timm_gvit
from timm_gvit.rendering import ALPHA_MIN, T_MIN, render_gaussians
from timm_gvit.rendering.chunked import render_chunked
from timm_gvit.rendering.cpu import REQUIRE_VARIABLE, load_extension, render_cpu
from timm_gvit.rendering.projection import to_pixel_space
from timm_gvit.rendering.reference import pixel_centers, render_reference

from conftest import random_gaussians

CPU_BACKENDS = ["reference", "cpu", "chunked"]
FAST = {"cpu": render_cpu, "chunked": render_chunked}


def _grads(fn, gaussians, background, weights):
    g = gaussians.clone().requires_grad_()
    bg = background.clone().requires_grad_()
    (fn(g, bg) * weights).sum().backward()
    return g.grad, bg.grad


def test_exported_from_package_root():
    assert timm_gvit.render_gaussians is render_gaussians


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend):
    g = random_gaussians(2, 6, seed=1)
    g[..., 2:4] = g[..., 2:4].clamp(0.05, 0.8)  # keep finite differences away from sub-pixel spikes
    g[..., 5:9] = g[..., 5:9].clamp(0.05, 0.95)  # ... and from the clamp of colour and opacity at 0 and 1
    g = g.requires_grad_()
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: render_gaussians(a, 7, 10, b, backend=backend), (g, bg), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FAST))
def test_gradcheck_exact_mode(name):
    """With the cut-offs disabled the fast backends compute the reference formula exactly."""
    g = random_gaussians(1, 6, seed=2)
    g[..., 2:4] = g[..., 2:4].clamp(0.05, 0.8)
    g[..., 1, 8] = 0.05  # finite differences at opacity 0 would probe negative opacities
    g = g.requires_grad_()
    bg = torch.rand(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: FAST[name](a, 6, 9, b, 0.0, 0.0), (g, bg), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("size", [(20, 31), (32, 32), (48, 17)])
def test_fast_equals_reference_without_cutoffs(name, size):
    """float64, cut-offs off: forward to 1e-12 and every gradient to 1e-9 of its scale."""
    H, W = size
    g = random_gaussians(2, 24, seed=H * W)
    bg = torch.rand(2, 3, dtype=torch.float64)
    weights = torch.randn(2, 3, H, W, dtype=torch.float64)
    fast = FAST[name](g, H, W, bg, 0.0, 0.0)
    torch.testing.assert_close(fast, render_reference(g, H, W, bg), rtol=0, atol=1e-12)
    got = _grads(lambda a, b: FAST[name](a, H, W, b, 0.0, 0.0), g, bg, weights)
    want = _grads(lambda a, b: render_reference(a, H, W, b), g, bg, weights)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-9 * y.abs().max().item())


def _cutoff_bound(g, H, W, bg):
    """Largest error the cut-offs may cause, per pixel ``[B, 1, H, W]``, from the reference's own
    intermediates: each skipped Gaussian (alpha < 1/255) changes the pixel by at most alpha * T,
    where T may grow by 255/254 for every skipped Gaussian in front of it. Stopping before a
    Gaussian leaves out at most the transmittance in front of it (colours and background lie in
    [0, 1]); a fast backend stops only where its transmittance after that Gaussian, which is at
    least the reference's, is at most 1e-4."""
    x, y = pixel_centers(H, W, g)
    gg = g[:, :, :, None, None]
    dx, dy = x - gg[:, :, 0], y[:, None] - gg[:, :, 1]
    c, s = torch.cos(gg[:, :, 4]), torch.sin(gg[:, :, 4])
    q = ((c * dx + s * dy) / gg[:, :, 2]) ** 2 + ((c * dy - s * dx) / gg[:, :, 3]) ** 2
    alpha = (gg[:, :, 8] * torch.exp(-0.5 * q)).clamp(max=0.999)
    in_front = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
    skipped = alpha < ALPHA_MIN
    growth = (255 / 254) ** torch.cumsum(skipped.to(g.dtype), 1)
    could_stop = in_front * (1 - alpha) <= T_MIN
    stop = (in_front * growth * could_stop).amax(1, keepdim=True)
    return (alpha * in_front * growth * skipped).sum(1, keepdim=True) + stop


@pytest.mark.parametrize("name", sorted(FAST))
def test_fast_cutoffs_stay_within_their_bound(name):
    H, W = 40, 56
    g = random_gaussians(3, 40, seed=7)
    bg = torch.rand(3, 3, dtype=torch.float64)
    err = (FAST[name](g, H, W, bg) - render_reference(g, H, W, bg)).abs()
    bound = _cutoff_bound(g, H, W, bg)
    assert (err <= bound + 1e-12).all(), float((err - bound).max())
    assert err.max() > 1e-6  # the cut-offs really are active in this scene
    assert bound.max() < 0.06  # ... and their effect is small


@pytest.mark.parametrize("name", sorted(FAST))
def test_fast_float32_matches_reference(name):
    """float32, cut-offs off, hard cases: forward to 1e-5, gradients to 1e-3 of each parameter's
    largest gradient."""
    H, W = 30, 44
    g = random_gaussians(2, 32, dtype=torch.float32, seed=11)
    bg = torch.rand(2, 3)
    weights = torch.randn(2, 3, H, W)
    torch.testing.assert_close(FAST[name](g, H, W, bg, 0.0, 0.0), render_reference(g, H, W, bg), rtol=0, atol=1e-5)
    got = _grads(lambda a, b: FAST[name](a, H, W, b, 0.0, 0.0), g, bg, weights)
    want = _grads(lambda a, b: render_reference(a, H, W, b), g, bg, weights)
    for x, y in zip(got, want):
        scale = y.abs().amax(dim=tuple(range(y.dim() - 1)), keepdim=True)
        assert ((x - y).abs() / scale).max() < 1e-3


@pytest.mark.parametrize("seed", range(3))
def test_cutoffs_effect_on_gradients(seed):
    """What the gsplat-style cut-offs do to gradients, pinned: pixels where a Gaussian's alpha is
    below 1/255 send it no gradient. For Gaussians with opacity >= 0.1 that changes colour and
    opacity gradients by < 1% and geometry (mu, sigma, phi) gradients by < 15% of each
    parameter's largest gradient; a Gaussian with opacity < 1/255 gets no gradient at all."""
    H, W = 30, 44
    g = random_gaussians(2, 32, seed=seed)
    bg = torch.rand(2, 3, dtype=torch.float64)
    weights = torch.randn(2, 3, H, W, dtype=torch.float64)
    (fast, _), (ref, _) = _grads(lambda a, b: render_cpu(a, H, W, b), g, bg, weights), _grads(lambda a, b: render_reference(a, H, W, b), g, bg, weights)
    rel = (fast - ref).abs() / ref.abs().amax(dim=(0, 1))
    visible = g[..., 8] >= 0.1
    assert rel[visible][:, 5:].max() < 0.01
    assert rel[visible][:, :5].max() < 0.15
    assert (fast[g[..., 8] < ALPHA_MIN] == 0).all()


def test_backends_agree_with_each_other():
    g = random_gaussians(2, 30, dtype=torch.float32, seed=5)
    a = render_gaussians(g, 33, 47, 0.5, backend="cpu")
    b = render_gaussians(g, 33, 47, 0.5, backend="chunked")
    torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    torch.testing.assert_close(render_gaussians(g, 33, 47, 0.5), a)  # auto on CPU is the compiled kernel


def _one_gaussian(mu, sigma, opacity, phi=0.0, colour=(1.0, 1.0, 1.0)):
    return torch.tensor([[[mu[0], mu[1], sigma[0], sigma[1], phi, *colour, opacity]]], dtype=torch.float64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_isotropic_gaussian_values(backend):
    """33 x 33 image: the centre pixel's centre is (0, 0); sigma = 4 pixels = 8/33 normalised."""
    sigma = 8 / 33
    img = render_gaussians(_one_gaussian((0.0, 0.0), (sigma, sigma), 0.7), 33, 33, backend=backend)
    assert img[0, :, 16, 16].tolist() == pytest.approx([0.7] * 3, abs=1e-12)
    expected = 0.7 * math.exp(-0.5)
    for i, j in [(16, 20), (12, 16), (20, 16), (16, 12)]:  # one sigma away along each axis
        assert img[0, :, i, j].tolist() == pytest.approx([expected] * 3, abs=1e-12)
    assert img[0, 0, 16 + 3, 16 + 4].item() == pytest.approx(0.7 * math.exp(-0.5 * 25 / 16), abs=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rotated_anisotropic_gaussian(backend):
    """phi rotates the Gaussian's own x axis from the image x axis (y points down)."""
    s = 8 / 33
    g = _one_gaussian((0.0, 0.0), (2 * s, s), 0.5, phi=math.pi / 2)  # long axis now vertical
    img = render_gaussians(g, 33, 33, backend=backend)
    assert img[0, 0, 16 + 8, 16].item() == pytest.approx(0.5 * math.exp(-0.5), abs=1e-9)  # 1 sigma along y
    assert img[0, 0, 16, 16 + 4].item() == pytest.approx(0.5 * math.exp(-0.5), abs=1e-9)  # 1 sigma along x


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opacity_zero_gives_background(backend):
    g = _one_gaussian((0.1, -0.2), (0.3, 0.5), 0.0)
    bg = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    img = render_gaussians(g, 9, 13, bg, backend=backend)
    assert torch.equal(img, bg[None, :, None, None].expand(1, 3, 9, 13))


def test_opaque_front_gaussian_hides_the_rest():
    """Alpha is capped at 0.999, so the reference shows the second Gaussian with weight
    0.001 * 0.999. The fast backends, like gsplat, stop before it (it would take the
    transmittance to 1e-6 <= 1e-4) and show the background through the 0.001 left instead."""
    g = torch.cat([_one_gaussian((0, 0), (5, 5), 1.0, colour=(1, 0, 0)), _one_gaussian((0, 0), (5, 5), 1.0, colour=(0, 1, 0))], 1)
    blue = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    want = {"reference": [0.999, 0.001 * 0.999, 0.001 * 0.001], "cpu": [0.999, 0, 0.001], "chunked": [0.999, 0, 0.001]}
    for backend in CPU_BACKENDS:
        img = render_gaussians(g, 8, 8, blue, backend=backend)
        torch.testing.assert_close(img[0, :, 4, 4], torch.tensor(want[backend], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_resolution_independence(backend):
    """The same Gaussians at 32 px and at 128 px (area-downsampled to 32) agree."""
    g = random_gaussians(2, 20, dtype=torch.float32, seed=3)
    g[..., 2:4] = g[..., 2:4].clamp(0.1, 1.0)
    small = render_gaussians(g, 32, 32, backend=backend)
    large = render_gaussians(g, 128, 128, backend=backend)
    diff = (F.avg_pool2d(large, 4) - small).abs()
    assert diff.mean() < 2e-3 and diff.max() < 0.03, (diff.mean().item(), diff.max().item())


@pytest.mark.parametrize("backend", ["cpu", "chunked"])
def test_backward_keeps_no_dense_intermediates(backend):
    """Autograd keeps only O(B k) tensors for the fast backends (the reference keeps B k H W)."""
    B, K, H, W = 2, 64, 64, 64
    g = random_gaussians(B, K, dtype=torch.float32).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = render_gaussians(g, H, W, backend=backend)
    assert max(saved) <= B * K * 9
    out.sum().backward()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        render_gaussians(g, H, W, backend="reference")
    assert max(saved) >= B * K * H * W


def test_fallback_without_compiler_warns_once_and_still_renders(monkeypatch):
    g = random_gaussians(1, 10, dtype=torch.float32)
    expected = render_chunked(g, 16, 16, torch.zeros(1, 3))
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)  # a user's machine, not CI
    monkeypatch.setenv("TIMM_GVIT_NO_EXTENSION", "1")
    load_extension.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="compiled CPU renderer is unavailable"):
            out = render_gaussians(g, 16, 16, backend="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            render_gaussians(g, 16, 16, backend="cpu")  # said once, not on every call
    finally:
        load_extension.cache_clear()
    torch.testing.assert_close(out, expected)


def test_a_kernel_that_cannot_be_built_fails_where_it_is_required(monkeypatch):
    """CI sets TIMM_GVIT_REQUIRE_CPU_KERNEL: without the kernel the 'cpu' tests would compare the
    chunked fallback with itself, so a failed build must fail them."""
    monkeypatch.setenv(REQUIRE_VARIABLE, "1")
    monkeypatch.setenv("TIMM_GVIT_NO_EXTENSION", "1")
    load_extension.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="compiled CPU renderer is unavailable.*TIMM_GVIT_REQUIRE_CPU_KERNEL is set"):
            render_gaussians(random_gaussians(1, 10, dtype=torch.float32), 8, 8, backend="cpu")
    finally:
        load_extension.cache_clear()


@pytest.mark.skipif(os.environ.get(REQUIRE_VARIABLE, "") in ("", "0"), reason="CI only: TIMM_GVIT_REQUIRE_CPU_KERNEL unset")
def test_ci_compares_the_compiled_kernel():
    assert load_extension()


@pytest.mark.parametrize(
    "bg, expected",
    [(None, [0, 0, 0]), (0.5, [0.5] * 3), ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]), (torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]), None)],
)
def test_background_forms(bg, expected):
    g = _one_gaussian((0, 0), (0.1, 0.1), 0.0).float().expand(2, 1, 9)
    img = render_gaussians(g, 4, 4, torch.as_tensor(bg) if isinstance(bg, list) else bg)
    want = torch.tensor(expected).expand(2, 3) if expected is not None else bg
    torch.testing.assert_close(img[:, :, 0, 0], want.float())


@pytest.mark.parametrize(
    "gaussians, height, width, background, match",
    [
        (torch.rand(2, 9), 8, 8, None, r"\[B, k, 9\]"),
        (torch.rand(1, 4, 8), 8, 8, None, r"\[B, k, 9\]"),
        (torch.ones(1, 4, 9).int(), 8, 8, None, "floating point"),
        (torch.rand(1, 4, 9), 0, 8, None, "height must be an integer >= 1"),
        (torch.rand(1, 4, 9), 8, 8.0, None, "width must be an integer >= 1"),
        (torch.rand(1, 4, 9).index_put_((torch.tensor(0), torch.tensor(2), torch.tensor(5)), torch.tensor(float("nan"))), 8, 8, None, r"non-finite.*\[0, 2, 5\]"),
        (torch.rand(1, 4, 9).index_put_((torch.tensor(0), torch.tensor(1), torch.tensor(3)), torch.tensor(-0.2)), 8, 8, None, r"must be > 0.*-0.2.*\[0, 1\]"),
        (torch.rand(1, 4, 9), 8, 8, torch.zeros(2), "background must be"),
        (torch.rand(1, 4, 9), 8, 8, torch.tensor([0.0, float("inf"), 0.0]), "background contains non-finite"),
    ],
)
def test_bad_input_raises_value_error(gaussians, height, width, background, match):
    with pytest.raises(ValueError, match=match):
        render_gaussians(gaussians, height, width, background)


def test_bad_backend_names():
    g = torch.rand(1, 2, 9) + 0.1
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        render_gaussians(g, 4, 4, backend="cuda")
    with pytest.raises(ValueError, match="backend='gsplat' needs CUDA tensors"):
        render_gaussians(g, 4, 4, backend="gsplat")


def test_pixel_space_culling_box_contains_every_visible_pixel():
    """Outside a Gaussian's culling box its alpha is below 1/255, so culling adds no error."""
    g = random_gaussians(1, 30, seed=9)
    H, W = 37, 53
    pix = to_pixel_space(g, H, W)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=g.dtype) + 0.5, torch.arange(W, dtype=g.dtype) + 0.5, indexing="ij")
    dx, dy = xs - pix.means[0, :, 0, None, None], ys - pix.means[0, :, 1, None, None]
    A, B, C = (pix.conics[0, :, i, None, None] for i in range(3))
    alpha = pix.opacity[0, :, None, None] * torch.exp(-0.5 * (A * dx * dx + 2 * B * dx * dy + C * dy * dy))
    outside = (dx.abs() > pix.extent[0, :, 0, None, None]) | (dy.abs() > pix.extent[0, :, 1, None, None])
    assert (alpha[outside] < ALPHA_MIN).all()
    assert (alpha[~outside] >= ALPHA_MIN).any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_renders_in_float32(backend, dtype):
    """float16/bfloat16 Gaussians render in float32 and come back in their own dtype, with
    gradients in their own dtype too."""
    g = random_gaussians(2, 12, dtype=torch.float32, seed=6).to(dtype)
    bg = torch.tensor([0.2, 0.4, 0.6])
    out = render_gaussians(g, 20, 28, bg, backend=backend)
    assert out.dtype == dtype and out.shape == (2, 3, 20, 28) and out.is_contiguous()
    want = render_gaussians(g.float(), 20, 28, bg, backend=backend).to(dtype)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    leaf = g.clone().requires_grad_()
    render_gaussians(leaf, 20, 28, bg, backend=backend).float().sum().backward()
    assert leaf.grad.dtype == dtype and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_does_not_lower_the_precision(backend):
    g = random_gaussians(2, 12, dtype=torch.float32, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = render_gaussians(g, 16, 16, backend=backend)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, render_gaussians(g, 16, 16, backend=backend), rtol=0, atol=0)


def _out_of_range():
    """Opacity -0.5 and 1.7, colours -0.3 and 1.4: what the issue's probe fed in."""
    g = random_gaussians(2, 16, dtype=torch.float32, seed=12)
    g[..., 2:4] = g[..., 2:4].clamp(0.1, 0.8)
    g[:, 6, 8], g[:, 7, 8] = -0.5, 1.7
    g[:, 8, 5], g[:, 9, 6], g[:, 10, 7] = -0.3, 1.4, -2.0
    return g


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_colour_and_opacity_outside_unit_range_rejected_when_checked(backend):
    with pytest.raises(ValueError, match=r"opacity \(param 8\) must lie in \[0, 1\], got -0.5 at \[batch, gaussian\] = \[0, 6\]"):
        render_gaussians(_out_of_range(), 16, 16, backend=backend)
    g = _out_of_range()
    g[..., 8] = g[..., 8].clamp(0, 1)
    with pytest.raises(ValueError, match=r"r \(param 5\) must lie in \[0, 1\], got -0.3"):
        render_gaussians(g, 16, 16, backend=backend, check_values=True)


def test_colour_and_opacity_are_clamped_alike_on_every_backend():
    """Unchecked, every backend reads colour and opacity clamped to [0, 1]: they agree with each
    other as they do on valid input, and a picture over a background in [0, 1] stays in [0, 1]
    (the reference used to give pixels down to -0.47 where the CPU kernel gave 0)."""
    g, H, W = _out_of_range(), 24, 30
    bg = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    clamped = torch.cat([g[..., :5], g[..., 5:].clamp(0, 1)], dim=-1)
    out = {b: render_gaussians(g, H, W, bg, backend=b, check_values=False) for b in CPU_BACKENDS}
    for backend, image in out.items():
        torch.testing.assert_close(image, render_gaussians(clamped, H, W, bg, backend=backend), rtol=0, atol=0)
        assert image.min() >= 0 and image.max() <= 1, backend
    torch.testing.assert_close(out["cpu"], out["chunked"], rtol=0, atol=2e-6)
    bound = _cutoff_bound(clamped.double(), H, W, bg.double()).float()
    assert ((out["cpu"] - out["reference"]).abs() <= bound + 1e-5).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unchecked_bad_values_give_a_nan_image(backend):
    """check_values=False: an image with a NaN, an inf or a sigma <= 0 comes out all NaN (so a
    diverged model shows in its loss); the other images of the batch are unaffected."""
    g = random_gaussians(4, 8, dtype=torch.float32, seed=13)
    g[1, 3, 0], g[2, 5, 7], g[3, 2, 3] = float("nan"), float("inf"), 0.0
    out = render_gaussians(g, 16, 20, 0.5, backend=backend, check_values=False)
    assert torch.isnan(out[1:]).all()
    torch.testing.assert_close(out[:1], render_gaussians(g[:1], 16, 20, 0.5, backend=backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("batch, k", [(0, 5), (3, 0), (0, 0)])
def test_empty_batch_or_no_gaussians_is_the_background(backend, batch, k):
    g = torch.rand(batch, k, 9).requires_grad_()
    bg = torch.rand(batch, 3).requires_grad_()
    out = render_gaussians(g, 6, 7, bg, backend=backend)
    assert out.shape == (batch, 3, 6, 7) and out.is_contiguous()
    torch.testing.assert_close(out, bg.detach()[:, :, None, None].expand(batch, 3, 6, 7))
    out.sum().backward()
    torch.testing.assert_close(bg.grad, torch.full((batch, 3), 42.0))
    assert g.grad is not None and g.grad.shape == g.shape


@pytest.mark.parametrize("size", [np.int64(12), np.int32(12), torch.tensor(12)])
def test_integer_like_sizes(size):
    g = random_gaussians(1, 8, dtype=torch.float32, seed=14)
    torch.testing.assert_close(render_gaussians(g, size, size), render_gaussians(g, 12, 12))


@pytest.mark.parametrize("size", [np.float64(12.0), 12.5, True, -3, 0, "12", None])
def test_non_integer_or_non_positive_sizes_rejected(size):
    with pytest.raises(ValueError, match="height must be an integer >= 1"):
        render_gaussians(torch.rand(1, 2, 9) + 0.1, size, 12)


@pytest.mark.parametrize("num_gaussians", [16, 10])
def test_hflip_gaussians_renders_the_mirror_image_and_keeps_slots_in_place(num_gaussians):
    """Slot i of a grid-ordered set keeps grid cell i; with no overlaps (slot order is compositing
    order, which the mirror changes within a row) the flipped set renders the flipped image."""
    from timm_gvit.gaussians import grid_layout, hflip_gaussians

    gaussians = random_gaussians(2, num_gaussians, seed=3)
    gaussians[..., 0:2] = grid_layout(num_gaussians)[0] + 0.05 * gaussians[..., 0:2]
    gaussians[..., 2:4] = gaussians[..., 2:4].clamp(max=0.08)
    flipped = hflip_gaussians(gaussians)
    background = torch.rand(2, 3, dtype=gaussians.dtype)
    torch.testing.assert_close(render_reference(flipped, 24, 24, background),
                               render_reference(gaussians, 24, 24, background).flip(-1), atol=1e-4, rtol=0)  # tails overlap
    torch.testing.assert_close(hflip_gaussians(flipped), gaussians)
    full_rows = num_gaussians // 4 * 4  # 4 columns; a partial last row mirrors within its own slots
    assert (flipped[..., :full_rows, 0] - grid_layout(num_gaussians)[0][:full_rows, 0]).abs().max() < 0.1
