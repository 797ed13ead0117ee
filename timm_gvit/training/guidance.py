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


def guidance_step(model, optimizer, images: Tensor, targets: Tensor, labels: Tensor, *, gamma: float,
                  pixel_loss: str = "bce", lambda_perc: float = 0.1, with_dssim: bool = True,
                  accelerator=None) -> dict[str, float]:
    """One encoder-only optimiser step on a batch; returns the batch's losses before the step.

    ``model`` is the plain (unwrapped) GViT: the two gradients are taken with
    ``torch.autograd.grad`` so that no gradient reaches the classifier, and, under DDP, they are
    averaged across processes by hand. ``images`` are normalised, ``targets`` the same images in
    [0, 1]. Returns ``{}`` without stepping if a loss is not finite.
    """
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    distributed = accelerator is not None and accelerator.num_processes > 1
    with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
        gaussians = model.encode(images)
        finite = torch.isfinite(gaussians.detach()).all()
        if not (accelerator.gather(finite[None]).all() if distributed else finite):  # every process skips together
            return {}
        rec = reconstruction_loss(model.render(gaussians, tuple(images.shape[-2:])), targets, pixel_loss, lambda_perc, with_dssim)
        cls = F.cross_entropy(model.classify(gaussians).float(), labels)
    finite = torch.isfinite(rec.detach()) & torch.isfinite(cls.detach())
    if not (accelerator.gather(finite[None]).all() if distributed else finite):
        return {}
    rec_grads = torch.autograd.grad(rec, params, retain_graph=True, allow_unused=True)
    cls_grads = torch.autograd.grad(cls, params, allow_unused=True)
    optimizer.zero_grad(set_to_none=True)
    scale = accelerator.scaler.get_scale() if accelerator is not None and accelerator.scaler is not None else 1.0
    for p, g_rec, g_cls in zip(params, rec_grads, cls_grads):
        grad = torch.zeros_like(p) if g_rec is None else g_rec.clone()
        if g_cls is not None:
            grad.add_(g_cls, alpha=gamma)
        if distributed:
            grad = accelerator.reduce(grad, reduction="mean")
        p.grad = grad * scale  # fp16: the optimizer's grad scaler divides it out again
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"guidance/rec_loss": rec.item(), "guidance/ce_loss": cls.item()}
