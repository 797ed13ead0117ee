"""The trainer's optimiser, and an optimiser step that skips non-finite losses without waiting
for the device."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from torch import Tensor, nn


def create_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """timm's AdamW (no weight decay on norms, biases and position embeddings), fused: its step
    takes a ``found_inf`` flag on the device (:func:`step_if_finite`), as under AMP's GradScaler."""
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay, betas=tuple(betas), fused=True)


def step_if_finite(optimizer, finite: Tensor) -> None:
    """``optimizer.step()`` unless ``finite`` (a 0-d bool tensor on the parameters' device) is False.

    A fused optimizer skips on the device (its ``found_inf`` flag, which also leaves its step
    counts alone), so the host never waits for the loss; any other optimizer reads the flag
    (one host-device sync). Accelerate's wrapper is looked through; under fp16 its GradScaler
    finds the non-finite gradients itself and skips the step.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if getattr(optimizer, "scaler", None) is not None:
        optimizer.step()
    elif getattr(inner, "_step_supports_amp_scaling", False):
        inner.found_inf = (~finite).to(torch.float32)
        try:
            optimizer.step()
        finally:
            del inner.found_inf
    elif bool(finite):
        optimizer.step()
