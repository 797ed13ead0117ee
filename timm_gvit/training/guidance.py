"""The guidance step (gvit-method.md section 6): the classifier frozen, the encoder stepped with

    grad_encoder = grad(L_pix + lambda_perc * L_perc) + gamma * grad(L_cls)

i.e. the Gaussians DESCEND on the classification loss (the paper's Eq. 2 and Algorithm 1; its
Eq. 1 has the sign wrong).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import reconstruction_loss
from .optim import step_if_finite


def guidance_step(model, optimizer, images: Tensor, targets: Tensor, labels: Tensor, *, gamma: float,
                  pixel_loss: str = "bce", lambda_perc: float = 0.1, with_dssim: bool = True, label_smoothing: float = 0.0,
                  accelerator=None, encode=None, classify=None, reconstruction=None) -> dict[str, Tensor]:
    """One encoder-only optimiser step on a batch.

    Args:
        model: the plain (unwrapped) GViT.
        optimizer: its optimiser; only the encoder's parameters get gradients, so only they move.
        images: ``[B, C, H, W]`` normalised images.
        targets: ``[B, 3, H, W]`` float, the same images in [0, 1].
        labels: ``[B]`` int64 class indices.
        gamma: weight of the classification gradient (> 0: descent on the cross-entropy).
        pixel_loss, lambda_perc, with_dssim: the reconstruction loss, as in normal steps.
        label_smoothing: the cross-entropy's, as in normal steps.
        accelerator: Accelerate's, for autocast and, under DDP, averaging the gradients by hand.
        encode, classify, reconstruction: the trainer's (possibly compiled) ``images -> Gaussians``,
            ``(Gaussians, labels) -> (cross-entropy, accuracy)`` and ``(rendering, targets) -> loss``;
            default: the model's own and :func:`reconstruction_loss`.

    One backward pass of ``L_rec + gamma * L_cls`` (by linearity, the two gradients' weighted
    sum), taken with ``torch.autograd.grad`` so that no gradient reaches the classifier. A step
    whose losses are not finite on some process is skipped on the device: nothing here waits
    for the device.

    Returns:
        ``{"guidance/rec_loss", "guidance/ce_loss", "guidance/finite"}``: 0-d tensors of the batch
        before the step, the last a bool that says whether the step was taken.
    """
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    distributed = accelerator is not None and accelerator.num_processes > 1
    encode = encode or (lambda x: model.encode(x, check_values=False))
    if classify is None:
        def classify(g, y):
            return F.cross_entropy(model.classify(g, check_values=False).float(), y, label_smoothing=label_smoothing), None
    if reconstruction is None:
        def reconstruction(rendered, target):
            return reconstruction_loss(rendered, target, pixel_loss, lambda_perc, with_dssim)
    with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
        gaussians = encode(images)
        rec = reconstruction(model.render(gaussians, tuple(images.shape[-2:])), targets)
        cls, _ = classify(gaussians, labels)
    finite = torch.isfinite(rec.detach()) & torch.isfinite(cls.detach())
    if distributed:  # every process skips together
        finite = accelerator.gather(finite[None]).all()
    grads = torch.autograd.grad(rec + gamma * cls, params, allow_unused=True)
    optimizer.zero_grad(set_to_none=True)
    scale = accelerator.scaler.get_scale() if accelerator is not None and accelerator.scaler is not None else 1.0
    for p, grad in zip(params, grads):
        grad = torch.zeros_like(p) if grad is None else grad
        if distributed:
            grad = accelerator.reduce(grad, reduction="mean")
        p.grad = grad * scale  # fp16: the optimizer's grad scaler divides it out again
    step_if_finite(optimizer, finite)
    optimizer.zero_grad(set_to_none=True)
    return {"guidance/rec_loss": rec.detach(), "guidance/ce_loss": cls.detach(), "guidance/finite": finite}
