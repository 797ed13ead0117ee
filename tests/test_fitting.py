"""fit_gaussians on a real photograph, and the fitting command."""

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, resize

from timm_gvit import fit_gaussians, render_gaussians
from timm_gvit.fitting import ASSETS, main, psnr


@pytest.fixture(scope="module")
def astronaut64():
    """The photo that ships with the package (scikit-image's astronaut, NASA, public domain) at 64 px."""
    image = pil_to_tensor(Image.open(ASSETS / "astronaut.png").convert("RGB")).float() / 255
    return resize(image, [64, 64], antialias=True).clamp(0, 1)[None]


@pytest.mark.parametrize("init, min_psnr", [("grid", 26.5), ("kmeans", 25.5)])
def test_fit_reaches_psnr_on_a_real_photo(astronaut64, init, min_psnr):
    start = fit_gaussians(astronaut64, 256, steps=0, init=init)
    fitted = fit_gaussians(astronaut64, 256, steps=150, init=init, progress=False)
    assert fitted.shape == (1, 256, 9) and not fitted.requires_grad
    quality = psnr(render_gaussians(fitted, 64, 64), astronaut64).item()
    assert quality >= min_psnr
    assert quality - psnr(render_gaussians(start, 64, 64), astronaut64).item() > 10
    # decoded layout: centres in [-1, 1], sigmas in (0, 1], colours and opacity in [0, 1]
    assert fitted[..., 0:2].abs().max() <= 1 and (fitted[..., 2:4] > 0).all() and fitted[..., 2:4].max() <= 1
    assert fitted[..., 5:9].min() >= 0 and fitted[..., 5:9].max() <= 1


def test_default_fit_reaches_the_issue_target(astronaut64):
    """fit_gaussians' defaults (500 Adam steps, grid init): >= 27.5 dB with 256 Gaussians on the
    64 px astronaut (29.3 dB measured, 2.0 s on one core after the kernel's build)."""
    fitted = fit_gaussians(astronaut64, 256, progress=False)
    assert psnr(render_gaussians(fitted, 64, 64), astronaut64).item() >= 27.5


def test_fit_is_deterministic_and_batched(astronaut64):
    pair = torch.cat([astronaut64, astronaut64.flip(-1)])
    a = fit_gaussians(pair, 16, steps=5, progress=False)
    b = fit_gaussians(pair, 16, steps=5, progress=False)
    assert torch.equal(a, b) and a.shape == (2, 16, 9)
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize(
    "images, k, kwargs, match",
    [
        (torch.rand(3, 8, 8), 4, {}, r"\[B, 3, H, W\]"),
        (torch.rand(1, 3, 8, 8) * 2, 4, {}, r"in \[0, 1\]"),
        (torch.rand(1, 3, 8, 8), 0, {}, "num_gaussians"),
        (torch.rand(1, 3, 8, 8), 4, {"init": "random"}, "init must be one of"),
        (torch.rand(1, 3, 8, 8), 4, {"steps": -1}, "steps must be >= 0"),
    ],
)
def test_fit_rejects_bad_input(images, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_gaussians(images, k, **kwargs)


def test_fitting_command_writes_png(tmp_path, capsys):
    out = tmp_path / "fit.png"
    main(["--num-gaussians", "32", "--size", "32", "--steps", "20", "--out", str(out)])
    image = Image.open(out)
    assert image.height == 4 * 32 + 18 and image.width > 4 * 4 * 32
    assert "PSNR" in capsys.readouterr().out
