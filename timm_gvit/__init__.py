"""timm-gvit: GViT image classifiers that see an image as a few hundred 2D Gaussians."""

from .fitting import fit_gaussians
from .rendering import render_gaussians

__version__ = "0.1.0"

__all__ = ["fit_gaussians", "render_gaussians"]
