"""timm-gvit: GViT image classifiers that see an image as a few hundred 2D Gaussians.

Importing this package registers ``gvit_nano``, ``gvit_tiny``, ``gvit_small`` and ``gvit_base``
with timm.
"""

from .fitting import fit_gaussians
from .gvit import GViT, GViTOutput
from .rendering import render_gaussians

__version__ = "0.1.0"

__all__ = ["GViT", "GViTOutput", "fit_gaussians", "render_gaussians"]
