"""The guidance step (docs/method.md section 6): the classifier frozen, the encoder stepped with

    grad_encoder = grad(L_pix + lambda_perc * L_perc) + gamma * grad(L_cls)

i.e. the Gaussians DESCEND on the classification loss (the paper's Eq. 2 and Algorithm 1; its
Eq. 1 has the sign wrong).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .losses import reconstruction_loss
from .optim import step_if_finite

#: the most bytes one all-reduce of :func:`average_across_processes` carries (DDP's default bucket size)
BUCKET_BYTES = 25 * 1024 * 1024


def guidance_step(model, optimizer, images: Tensor, targets: Tensor, labels: Tensor, *, gamma: float,
                  pixel_loss: str = "bce", lambda_perc: float = 0.1, with_dssim: bool = True, label_smoothing: float = 0.0,
                  accelerator=None, encode=None, classify=None, reconstruction=None, budgets: list[int] | None = None) -> dict[str, Tensor]:
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
            ``(Gaussians, labels) -> (cross-entropy, ...)`` and ``(rendering, targets) -> loss``;
            default: the model's own and :func:`reconstruction_loss`.
        budgets: a flex model's budgets to guide at (``--guidance-budgets``): the loss is the mean of
            each budget's, the model left serving the last; default: the k the model serves.

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
    recs, clss = [], []
    for k in budgets or [None]:
        if k is not None:
            model.set_num_gaussians(k)
        with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
            gaussians = encode(images)
            recs.append(reconstruction(model.render(gaussians, tuple(images.shape[-2:])), targets))
            clss.append(classify(gaussians, labels)[0])
    rec, cls = torch.stack(recs).mean(), torch.stack(clss).mean()
    finite = torch.isfinite(rec.detach()) & torch.isfinite(cls.detach())
    grads = torch.autograd.grad(rec + gamma * cls, params, allow_unused=True)
    grads = [torch.zeros_like(p) if grad is None else grad for p, grad in zip(params, grads)]
    if distributed:  # the mean over the processes, which skip together
        grads, finite = average_across_processes(grads, finite, accelerator)
    optimizer.zero_grad(set_to_none=True)
    scale = accelerator.scaler.get_scale() if accelerator is not None and accelerator.scaler is not None else 1.0
    for p, grad in zip(params, grads):
        p.grad = grad if scale == 1.0 else grad * scale  # fp16: the optimizer's grad scaler divides it out again
    step_if_finite(optimizer, finite)
    optimizer.zero_grad(set_to_none=True)
    return {"guidance/rec_loss": rec.detach(), "guidance/ce_loss": cls.detach(), "guidance/finite": finite}


def average_across_processes(tensors: list[Tensor], finite: Tensor, accelerator, bucket_bytes: int = BUCKET_BYTES) -> tuple[list[Tensor], Tensor]:
    """The mean of ``tensors`` over the processes and whether ``finite`` holds on all of them.

    As DDP does with its buckets: the tensors are packed into contiguous flat buffers of at most
    ``bucket_bytes`` (a larger tensor gets one of its own; one buffer per dtype and device), each
    summed over the processes with one all-reduce (all of them in flight together), then divided
    by the process count: the values of ``accelerator.reduce(t, "mean")`` on each tensor (the
    same sum, then the same division), in one collective instead of one per tensor. The flag
    rides in a buffer as a 0/1 number, so that it needs no collective of its own.

    Args:
        tensors: same-shaped on every process, in the same order.
        finite: 0-d bool, this process's.
        accelerator: Accelerate's (its process count; its ``reduce`` where torch.distributed is not
            initialised, as on XLA).
        bucket_bytes: the most bytes per buffer.

    Returns:
        The averaged tensors (views into the buffers; ``tensors`` themselves are left alone) and
        the 0-d bool flag, True where every process's ``finite`` was.
    """
    buckets: list[list[int]] = []
    open_buckets: dict[tuple, tuple[list[int], int]] = {}  # (dtype, device) -> (its open bucket, bytes in it)
    for i, t in enumerate(tensors):
        key, size = (t.dtype, t.device), t.numel() * t.element_size()
        bucket, used = open_buckets.get(key, (None, 0))
        if bucket is None or (used and used + size > bucket_bytes):
            bucket, used = [], 0
            buckets.append(bucket)
        bucket.append(i)
        open_buckets[key] = (bucket, used + size)
    # the flag goes into the last float32/float64 buffer, where a count of processes is exact (bf16's ends at 256);
    # only a model with no such parameters sends it alone
    exact = [n for n, bucket in enumerate(buckets) if tensors[bucket[0]].dtype in (torch.float32, torch.float64)]
    if not exact:
        buckets.append([])
    flag_in = exact[-1] if exact else len(buckets) - 1
    flats = []
    for n, bucket in enumerate(buckets):
        parts = [tensors[i].reshape(-1) for i in bucket]
        if n == flag_in:
            parts.append(finite.reshape(1).to(device=parts[0].device if parts else finite.device,
                                              dtype=parts[0].dtype if parts else torch.float32))
        flats.append(torch.cat(parts))
    processes = accelerator.num_processes
    if dist.is_available() and dist.is_initialized():
        for work in [dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True) for flat in flats]:
            work.wait()
    else:
        flats = [accelerator.reduce(flat, reduction="sum") for flat in flats]
    finite = flats[flag_in][-1] == processes  # a sum of 0s and 1s
    averaged: list[Tensor | None] = [None] * len(tensors)
    for bucket, flat in zip(buckets, flats):
        flat /= processes
        offset = 0
        for i in bucket:
            averaged[i] = flat[offset: offset + tensors[i].numel()].view_as(tensors[i])
            offset += tensors[i].numel()
    return averaged, finite
