import math
import os

import pytest
import torch


def random_gaussians(batch: int, k: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Hard random Gaussians: tiny and huge sigmas, opacity 0 and 1, centres off-screen,
    rotations near 0 and pi/2, and heavy overlap (k Gaussians over a small image)."""
    gen = torch.Generator().manual_seed(seed)

    def u(*shape, lo=0.0, hi=1.0):
        return torch.rand(*shape, generator=gen, dtype=dtype) * (hi - lo) + lo

    g = torch.empty(batch, k, 9, dtype=dtype)
    g[..., 0:2] = u(batch, k, 2, lo=-1.3, hi=1.3)  # some centres off-screen
    g[..., 2:4] = torch.exp(u(batch, k, 2, lo=math.log(0.02), hi=math.log(1.5)))
    g[..., 4] = u(batch, k, lo=-math.pi, hi=math.pi)
    g[..., 5:8] = u(batch, k, 3)
    g[..., 8] = u(batch, k)
    g[:, 0, 8], g[:, 1, 8] = 1.0, 0.0  # opaque (alpha capped at 0.999) and invisible
    g[:, 2, 2:4] = torch.tensor([0.004, 0.003])  # tiny: below a pixel
    g[:, 3, 2:4] = torch.tensor([3.0, 2.0])  # huge: far wider than the image
    g[:, 4, 4], g[:, 5, 4] = 1e-4, math.pi / 2 - 1e-4  # rotations near 0 and pi/2
    return g


@pytest.fixture(autouse=True, scope="session")
def _dataset_cache(tmp_path_factory):
    """Folder indexes go to a folder of the test session's, not the user's cache."""
    os.environ["TIMM_GVIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("timm_gvit_cache"))


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test draws the same global random numbers whatever ran before it."""
    torch.manual_seed(0)
