"""The gsplat backend.

On the CPU: the inputs we hand gsplat's rasteriser (centres, conics, radii, depth order) against
our projection and analytic values; those inputs through gsplat's own plain-PyTorch tile binning
and a plain-PyTorch copy of its kernel's rules, against the CPU kernel; the backend's own calls
through gsplat's real Python wrappers with that copy in place of the CUDA function; how a failed
gsplat load is reported. On a CUDA GPU with gsplat's kernels: the real rasteriser against the
reference and the CPU kernel.
"""

import importlib.abc
import importlib.util
import math
import sys
import warnings

import pytest
import torch

from timm_gvit.rendering import gsplat_error, rasterizer_inputs, render_gaussians, resolve_backend
from timm_gvit.rendering import gsplat_backend
from timm_gvit.rendering.cpu import render_cpu
from timm_gvit.rendering.projection import ALPHA_MIN, to_pixel_space
from timm_gvit.rendering.reference import pixel_centers, render_reference

from conftest import random_gaussians
from test_rendering import _cutoff_bound, _grads

GSPLAT_PROBLEM = gsplat_error()
needs_gsplat_cuda = pytest.mark.skipif(GSPLAT_PROBLEM is not None, reason=f"needs gsplat's CUDA kernels: {GSPLAT_PROBLEM}")


def _moderate_gaussians(batch, k, seed, dtype=torch.float32):
    """Opacities <= 0.7 and sigmas in [0.03, 0.6]: where a pixel stops, what it leaves out is below
    3.3e-4, so float32 rounding at the stop cannot move it by more."""
    g = random_gaussians(batch, k, dtype=dtype, seed=seed)
    g[..., 8] = g[..., 8] * 0.7
    g[..., 2:4] = g[..., 2:4].clamp(0.03, 0.6)
    return g


# ---------------------------------------------------------------- the rasteriser's inputs (CPU)
def test_rasterizer_inputs_of_one_rotated_gaussian():
    """Centre (0.25, -0.5) of a 40 x 60 image is pixel (37.5, 10); sigma 0.2 x 0.1 at phi = 30
    degrees gives the conic R diag(1/sx^2, 1/sy^2) R^T in pixel units."""
    H, W, phi = 40, 60, math.pi / 6
    g = torch.tensor([[[0.25, -0.5, 0.2, 0.1, phi, 0.1, 0.2, 0.3, 0.8]]], dtype=torch.float64)
    inp = rasterizer_inputs(g, H, W)
    torch.testing.assert_close(inp.means2d, torch.tensor([[[37.5, 10.0]]], dtype=torch.float64))
    # Sigma_px = S R diag(0.2^2, 0.1^2) R^T S with S = diag(W/2, H/2): x and y scale differently
    c, s = math.cos(phi), math.sin(phi)
    R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    S = torch.diag(torch.tensor([W / 2, H / 2], dtype=torch.float64))
    cov = S @ R @ torch.diag(torch.tensor([0.2**2, 0.1**2], dtype=torch.float64)) @ R.T @ S
    inv = torch.linalg.inv(cov)
    torch.testing.assert_close(inp.conics[0, 0], torch.stack([inv[0, 0], inv[0, 1], inv[1, 1]]), rtol=1e-12, atol=0)
    torch.testing.assert_close(inp.colors, g[..., 5:8])
    torch.testing.assert_close(inp.opacities, g[..., 8])
    # the box where alpha = 0.8 exp(-q / 2) >= 1/255: q <= 2 ln(0.8 * 255), half-size sqrt(q cov_ii)
    reach = math.sqrt(2 * math.log(0.8 * 255))
    want = [math.ceil(reach * math.sqrt(cov[0, 0])), math.ceil(reach * math.sqrt(cov[1, 1]))]
    assert inp.radii.dtype == torch.int32 and inp.radii[0, 0].tolist() == want
    assert inp.depths.tolist() == [[0.0]]


def test_rasterizer_inputs_are_the_cpu_kernels_projection():
    """Same centres, conics, colours and opacities as the CPU kernel gets; radii are its culling
    box rounded up; depth = index (0 in front) in every image; invisible Gaussians get radius 0."""
    g = random_gaussians(3, 20, seed=4)
    H, W = 24, 57
    inp, pix = rasterizer_inputs(g, H, W), to_pixel_space(g, H, W, ALPHA_MIN)
    for got, want in ((inp.means2d, pix.means), (inp.conics, pix.conics), (inp.colors, pix.colors), (inp.opacities, pix.opacity)):
        assert torch.equal(got, want)
    assert torch.equal(inp.radii, pix.extent.ceil().int())
    assert (inp.radii[:, 1] == 0).all()  # opacity 0 never reaches alpha 1/255
    assert torch.equal(inp.depths, torch.arange(20, dtype=g.dtype).expand(3, 20))
    for t in (inp.radii, inp.depths):
        assert not t.requires_grad


def test_rasterizer_inputs_carry_gradients_to_all_nine_parameters():
    g = random_gaussians(2, 6, seed=5).requires_grad_()
    inp = rasterizer_inputs(g, 16, 16)
    (inp.means2d.sum() + inp.conics.sum() + inp.colors.sum() + inp.opacities.sum()).backward()
    assert (g.grad[:, 2:].abs().sum(dim=0) > 0).all()  # every parameter of every (visible) Gaussian


def test_thin_rotated_gaussians_keep_exact_conics_in_float32():
    """Axis ratio 400 (and 4000): float32 conics within 1e-5 of float64's, where inverting a
    float32 covariance loses about 1%."""
    g = torch.tensor([[[0.0, 0.0, 0.4, 0.001, 0.3, 1, 1, 1, 1], [0.1, 0.1, 0.5, 0.000125, 1.1, 1, 1, 1, 1]]], dtype=torch.float64)
    exact = rasterizer_inputs(g, 224, 224).conics
    single = rasterizer_inputs(g.float(), 224, 224).conics.double()
    assert ((single - exact).abs() / exact.abs().amax(-1, keepdim=True)).max() < 1e-5


def _composite_like_gsplat(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets, flatten_ids,
                           backgrounds):
    """gsplat 1.5.3's rasteriser kernel (RasterizeToPixels3DGSFwd.cu) in plain PyTorch, same
    arguments: per tile, the Gaussians listed for it, front to back; skip alpha < 1/255; stop
    before the Gaussian that would take the transmittance to 1e-4 or below -> ``[B, H, W, 3]``.
    Differentiable (autograd stands in for its backward kernel)."""
    B, K = opacities.shape
    ty, tx = isect_offsets.shape[-2:]
    starts = isect_offsets.flatten().tolist()
    ends = starts[1:] + [len(flatten_ids)]
    means, conics = means2d.reshape(B * K, 2), conics.reshape(B * K, 3)
    colors, opacities = colors.reshape(B * K, 3), opacities.reshape(B * K)
    image = means2d.new_zeros(B, height, width, 3)
    for tile, (start, end) in enumerate(zip(starts, ends)):
        b, y0, x0 = tile // (tx * ty), tile // tx % ty * tile_size, tile % tx * tile_size
        y1, x1 = min(height, y0 + tile_size), min(width, x0 + tile_size)
        ids = flatten_ids[start:end].long()
        assert (ids // K == b).all()  # a tile of image b lists only image b's Gaussians
        y = torch.arange(y0, y1, dtype=means.dtype) + 0.5
        x = torch.arange(x0, x1, dtype=means.dtype) + 0.5
        dx = means[ids, 0, None, None] - x  # [n, 1, w]
        dy = means[ids, 1, None, None] - y[:, None]  # [n, h, 1]
        a, bb, c = (conics[ids, i, None, None] for i in range(3))
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + bb * dx * dy
        alpha = (opacities[ids, None, None] * torch.exp(-sigma)).clamp(max=0.999)
        alpha = alpha * ((sigma >= 0) & (alpha >= 1 / 255))
        after = torch.cumprod(1 - alpha, dim=0)
        before = torch.cat([torch.ones_like(alpha[:1]), after[:-1]])
        keep = torch.cumprod((after > 1e-4).to(alpha.dtype), dim=0)  # 0 from the crossing Gaussian on
        weights = alpha * before * keep
        final_t = torch.prod(1 - alpha * keep, dim=0)
        image[b, y0:y1, x0:x1] = torch.einsum("nhw,nc->hwc", weights, colors[ids]) + final_t[..., None] * backgrounds[b]
    return image


def _gsplat_torch():
    return pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed")


def _rasterize_like_gsplat(inputs, height, width, background):
    """Our rasteriser inputs through gsplat's own plain-PyTorch tile binning (``_isect_tiles``,
    ``_isect_offset_encode``) and :func:`_composite_like_gsplat` -> ``[B, 3, H, W]``."""
    gsplat_torch = _gsplat_torch()
    tx, ty = math.ceil(width / 16), math.ceil(height / 16)
    _, isect_ids, flatten_ids = gsplat_torch._isect_tiles(inputs.means2d, inputs.radii, inputs.depths, 16, tx, ty)
    offsets = gsplat_torch._isect_offset_encode(isect_ids, inputs.opacities.shape[0], tx, ty)
    return _composite_like_gsplat(inputs.means2d, inputs.conics, inputs.colors, inputs.opacities, width, height, 16,
                                  offsets, flatten_ids, background).permute(0, 3, 1, 2)


class _PlainRasterizeToPixels:
    """In place of gsplat's CUDA autograd function (same arguments): the kernel's rules in plain
    PyTorch, so that gsplat's own Python wrapper runs on the CPU."""

    @staticmethod
    def apply(means2d, conics, colors, opacities, backgrounds, masks, width, height, tile_size, isect_offsets,
              flatten_ids, absgrad):
        assert masks is None and not absgrad and means2d.dtype == conics.dtype == colors.dtype == torch.float32
        image = _composite_like_gsplat(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets,
                                       flatten_ids, backgrounds)
        return image, image.new_zeros(*image.shape[:-1], 1)


@pytest.fixture
def gsplat_on_cpu(monkeypatch):
    """gsplat's public isect_tiles / isect_offset_encode replaced by its plain-PyTorch versions, and
    its rasteriser's CUDA function by :class:`_PlainRasterizeToPixels`; gsplat's
    ``rasterize_to_pixels`` wrapper itself (its checks, its calling convention) is the real one."""
    gsplat_torch = _gsplat_torch()
    import gsplat
    import gsplat.cuda._wrapper

    monkeypatch.setattr(gsplat, "isect_tiles", lambda *args: gsplat_torch._isect_tiles(*args))
    monkeypatch.setattr(gsplat, "isect_offset_encode", gsplat_torch._isect_offset_encode)
    monkeypatch.setattr(gsplat.cuda._wrapper, "_RasterizeToPixels", _PlainRasterizeToPixels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_render_gsplat_calls_gsplat_right(gsplat_on_cpu, dtype):
    """The backend's own code (argument order, tile grid, layout [B, H, W, 3] -> contiguous
    [B, 3, H, W], float32 compute, the input's dtype back) on the CPU, against the CPU kernel:
    forward to 2e-6, gradients to 1e-4 of their scale."""
    H, W = 29, 45
    g, bg = _moderate_gaussians(3, 12, seed=21, dtype=dtype), torch.rand(3, 3, dtype=dtype)
    weights = torch.randn(3, 3, H, W, dtype=dtype)
    out = gsplat_backend.render_gsplat(g, H, W, bg)
    assert out.shape == (3, 3, H, W) and out.dtype == dtype and out.is_contiguous()
    want = render_cpu(g.float(), H, W, bg.float())
    torch.testing.assert_close(out.float(), want, rtol=0, atol=2e-6)
    got = _grads(lambda a, b: gsplat_backend.render_gsplat(a, H, W, b), g, bg, weights)
    ref = _grads(lambda a, b: render_cpu(a.float(), H, W, b.float()), g, bg, weights)
    for x, y in zip(got, ref):
        assert x.dtype == dtype
        assert ((x - y).abs() / y.abs().amax(dim=tuple(range(y.dim() - 1)), keepdim=True)).max() < 1e-4


def _reference_alpha(g, H, W):
    """The reference's alpha ``[B, k, H, W]`` (capped, no cut-offs)."""
    x, y = pixel_centers(H, W, g)
    gg = g[:, :, :, None, None]
    dx, dy = x - gg[:, :, 0], y[:, None] - gg[:, :, 1]
    c, s = torch.cos(gg[:, :, 4]), torch.sin(gg[:, :, 4])
    q = ((c * dx + s * dy) / gg[:, :, 2]) ** 2 + ((c * dy - s * dx) / gg[:, :, 3]) ** 2
    return (gg[:, :, 8] * torch.exp(-0.5 * q)).clamp(max=0.999)


@pytest.mark.parametrize("batch, k, size", [(3, 16, (37, 50)), (2, 24, (32, 32)), (2, 40, (20, 70))])
def test_gsplat_pipeline_on_our_inputs_equals_the_cpu_kernel(batch, k, size):
    """k < 32 with a batch > 1 included (where gsplat's own projection mixed up gradients), and the
    hard scenes (opaque, tiny, huge, off-screen Gaussians; pixels that stop): forward to 1e-10 and
    every gradient to 1e-8 of its scale, float64. This checks the centres' pixel convention, the
    conic layout, that the radii reach every pixel with alpha >= 1/255, the front-to-back order,
    the image ids, and that the CPU kernel stops a pixel where gsplat does."""
    H, W = size
    g, bg = random_gaussians(batch, k, seed=k), torch.rand(batch, 3, dtype=torch.float64)
    g[:, 6:9, 0:2], g[:, 6:9, 2:4], g[:, 6:9, 8] = 0.1, 0.5, 1.0  # three opaque ones over the middle
    with torch.no_grad():
        stops = torch.cumprod(1 - _reference_alpha(g, H, W), dim=1)[:, -1] <= 1e-4
    assert stops.any()  # some pixels do stop early
    weights = torch.randn(batch, 3, H, W, dtype=torch.float64)
    emulated = lambda a, b: _rasterize_like_gsplat(rasterizer_inputs(a, H, W), H, W, b)  # noqa: E731
    kernel = lambda a, b: render_cpu(a, H, W, b)  # noqa: E731
    torch.testing.assert_close(emulated(g, bg), kernel(g, bg), rtol=0, atol=1e-10)
    for got, want in zip(_grads(emulated, g, bg, weights), _grads(kernel, g, bg, weights)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-8 * want.abs().max().item())


# ---------------------------------------------------------------- a failed load is reported (CPU)
def test_version_outside_the_tested_range_is_refused():
    assert gsplat_backend.gsplat_version_problem("1.5.3") is None
    assert gsplat_backend.gsplat_version_problem("1.5.4") is None
    for version in ("1.4.0", "1.5.2", "1.6.0"):
        assert f"gsplat {version} is installed, but timm-gvit is tested with gsplat>=1.5.3,<1.6" in gsplat_backend.gsplat_version_problem(version)


BUILD_ERROR = "Error building extension 'gsplat_cuda'\n[1/30] nvcc ...\nnvcc fatal : Unsupported gpu architecture 'compute_99'"


class _FailingBuild(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import gsplat.cuda._backend`` fail as a failed nvcc build does."""

    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "gsplat.cuda._backend" else None

    def exec_module(self, module):
        raise RuntimeError(BUILD_ERROR)


@pytest.fixture
def broken_gsplat(monkeypatch):
    """A CUDA machine (as far as torch.cuda.is_available says) where gsplat's kernels fail to build."""
    pytest.importorskip("gsplat", reason="gsplat is not installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delitem(sys.modules, "gsplat.cuda._backend", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_FailingBuild(), *sys.meta_path])
    gsplat_backend.load_gsplat_kernels.cache_clear()
    yield
    gsplat_backend.load_gsplat_kernels.cache_clear()


def test_failed_load_is_kept_and_named(broken_gsplat):
    """The build error's first and last lines reach gsplat_error(), the 'auto' fallback warning
    and the error of backend='gsplat'; the GPU tests' skip reason quotes gsplat_error() too."""
    cause = "RuntimeError: Error building extension 'gsplat_cuda' ... nvcc fatal : Unsupported gpu architecture 'compute_99'"
    problem = gsplat_error()
    assert problem.startswith("gsplat 1.5") and problem.endswith(f"failed to load: {cause}")
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match=r"backend='auto' cannot use gsplat \(gsplat 1\.5\.\d+ failed to load: RuntimeError: .*compute_99'\)"):
        assert resolve_backend("auto", cuda) == "chunked"
    with pytest.raises(ValueError, match="backend='gsplat' needs CUDA tensors and gsplat's kernels, but gsplat 1.5.* failed to load: RuntimeError"):
        resolve_backend("gsplat", cuda)
    assert gsplat_error() is problem  # tried once, kept


def test_auto_off_cuda_says_why():
    with pytest.warns(RuntimeWarning, match="it renders CUDA tensors, these are on meta"):
        assert resolve_backend("auto", torch.device("meta")) == "chunked"
    if not torch.cuda.is_available():
        assert GSPLAT_PROBLEM == "no CUDA GPU (torch.cuda.is_available() is False)"
        with pytest.raises(ValueError, match="not on a CUDA device"):
            render_gaussians(torch.rand(1, 2, 9) + 0.1, 4, 4, backend="gsplat")


# ---------------------------------------------------------------- CUDA
@needs_gsplat_cuda
@pytest.mark.parametrize("k", [16, 24, 64, 256])
@pytest.mark.parametrize("size", [(32, 32), (40, 72)])
def test_gsplat_forward_matches_reference(k, size):
    """Within the cut-off bound of the fast backends plus 1e-4 for float32 and fast-math exp."""
    H, W = size
    g, bg = _moderate_gaussians(4, k, seed=1), torch.rand(4, 3)
    out = render_gaussians(g.cuda(), H, W, bg.cuda(), backend="gsplat")
    assert out.shape == (4, 3, H, W) and out.is_contiguous() and out.dtype == torch.float32
    bound = _cutoff_bound(g.double(), H, W, bg.double()).float()
    assert ((out.cpu() - render_reference(g, H, W, bg)).abs() <= bound + 1e-4).all()


@needs_gsplat_cuda
@pytest.mark.parametrize("batch, k", [(4, 16), (2, 24), (3, 64), (2, 256)])
def test_gsplat_gradients_match_cpu_kernel(batch, k):
    """Every image's own gradients (k < 32 with a batch > 1 mixed images up in gsplat's
    projection): each parameter within 1e-3 of its largest gradient, cosine >= 0.999, forward
    within 1e-3."""
    H, W = 36, 44
    g, bg = _moderate_gaussians(batch, k, seed=2), torch.rand(batch, 3)
    weights = torch.randn(batch, 3, H, W)
    gpu = lambda a, b: render_gaussians(a, H, W, b, backend="gsplat")  # noqa: E731
    cpu = lambda a, b: render_cpu(a, H, W, b)  # noqa: E731
    assert (gpu(g.cuda(), bg.cuda()).cpu() - cpu(g, bg)).abs().max() <= 1e-3
    got = _grads(gpu, g.cuda(), bg.cuda(), weights.cuda())
    want = _grads(cpu, g, bg, weights)
    for x, y in zip(got, want):
        x = x.cpu()
        scale = y.abs().amax(dim=tuple(range(y.dim() - 1)), keepdim=True)
        assert ((x - y).abs() / scale).max() < 1e-3
        assert torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0) >= 0.999
    for b in range(batch):  # per image: no gradient leaks between images
        for x, y in zip(got, want):
            assert torch.nn.functional.cosine_similarity(x[b].cpu().flatten(), y[b].flatten(), dim=0) >= 0.999


@needs_gsplat_cuda
def test_gsplat_thin_gaussians_match_cpu_kernel():
    """Axis ratios up to 400 at 224 px, where gsplat's own float32 projection lost about 1%. The
    quadratic form itself cancels in float32 far along such a Gaussian (our float32 CPU kernel is
    3e-3 off its float64 run here, measured), so gsplat must come as close to float64 as that."""
    g = _moderate_gaussians(2, 32, seed=9)
    g[:, :16, 3] = g[:, :16, 2] / 400
    g[:, :16, 8] = 0.9
    out = render_gaussians(g.cuda(), 224, 224, backend="gsplat").cpu()
    want = render_cpu(g.double(), 224, 224, torch.zeros(2, 3, dtype=torch.float64)).float()
    float32_error = (render_cpu(g, 224, 224, torch.zeros(2, 3)) - want).abs().max()
    assert (out - want).abs().max() <= max(1e-3, 1.5 * float32_error)


@needs_gsplat_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_gsplat_returns_the_input_dtype(dtype):
    g = _moderate_gaussians(2, 16, seed=3)
    out = render_gaussians(g.cuda().to(dtype), 32, 32, backend="gsplat")
    assert out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out.float(), render_gaussians(g.to(dtype).float().cuda(), 32, 32, backend="gsplat"), rtol=0, atol=1e-2)


@needs_gsplat_cuda
@pytest.mark.parametrize("batch, k", [(0, 8), (2, 0)])
def test_gsplat_empty_is_the_background(batch, k):
    bg = torch.rand(batch, 3, device="cuda")
    out = render_gaussians(torch.rand(batch, k, 9, device="cuda"), 8, 8, bg, backend="gsplat")
    assert out.shape == (batch, 3, 8, 8)
    torch.testing.assert_close(out, bg[:, :, None, None].expand(batch, 3, 8, 8))


@needs_gsplat_cuda
def test_gsplat_render_syncs_once():
    """Only gsplat's isect_tiles waits for the GPU (it sizes its buffers from a count): no value
    checks, no host-to-device copies of constants."""
    g = _moderate_gaussians(8, 64, seed=4).cuda().requires_grad_()
    render_gaussians(g, 64, 64, 0.5)  # warm-up: first calls may allocate and load
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = render_gaussians(g, 64, 64, 0.5)
            out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, syncs


@needs_gsplat_cuda
def test_auto_uses_gsplat_on_cuda():
    g = _moderate_gaussians(2, 16, seed=3).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(render_gaussians(g, 32, 32), render_gaussians(g, 32, 32, backend="gsplat"))


@needs_gsplat_cuda
def test_gsplat_unchecked_values_match_the_cpu_backends():
    """Colour and opacity outside [0, 1] are clamped and a NaN image comes out NaN, as on the CPU."""
    g = _moderate_gaussians(3, 16, seed=10)
    g[0, 3, 8], g[0, 4, 5], g[1, 2, 7] = 1.7, -0.4, 2.0
    g[2, 5, 0] = float("nan")
    out = render_gaussians(g.cuda(), 32, 32, 0.5).cpu()
    want = render_gaussians(g, 32, 32, 0.5, check_values=False)
    assert torch.isnan(out[2]).all()
    assert (out[:2] - want[:2]).abs().max() <= 1e-3
