"""The loss of one normal training step, as a module so that DDP wraps and synchronises it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import reconstruction_loss


class GViTObjective(nn.Module):
    """``forward(images, targets, labels, phase, with_dssim) -> (loss, parts)`` for a GViT ``model``.

    - ``reconstruction``: the encoder on L_pix (+ lambda_perc * D-SSIM once it is on).
    - ``classifier``: the classifier on cross-entropy; the encoder is frozen (no gradients, eval
      mode: fixed g0).
    - ``joint`` / ``guidance``: both. The encoder learns reconstruction from its denoising
      Gaussians (random g0). The classifier's loss reaches the encoder only with weight
      ``cls_into_encoder``. At 0, the default, the classifier trains on the encoder's test-time
      Gaussians (fixed g0, no gradient; one extra encoder pass without backward): on short
      runs, training the classifier on the random-g0 Gaussians instead cost most of what it
      had learned in the classifier phase (digits preset: 35% -> 21-28% top-1).

    ``images`` are normalised, ``targets`` the same images in [0, 1]; ``parts`` are detached
    scalars for logging.
    """

    def __init__(self, model: nn.Module, pixel_loss: str = "bce", lambda_perc: float = 0.1,
                 cls_into_encoder: float = 0.0, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.pixel_loss, self.lambda_perc = pixel_loss, lambda_perc
        self.cls_into_encoder, self.label_smoothing = cls_into_encoder, label_smoothing

    def _reconstruction(self, gaussians: Tensor, targets: Tensor, with_dssim: bool) -> Tensor:
        if not torch.isfinite(gaussians).all():  # diverged weights: a non-finite loss, which the trainer skips
            return gaussians.sum() * float("nan")
        rendered = self.model.render(gaussians, tuple(targets.shape[-2:]))
        return reconstruction_loss(rendered, targets, self.pixel_loss, self.lambda_perc, with_dssim)

    def _classification(self, gaussians: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model.classify(gaussians, check_values=False)  # non-finite losses are skipped, not raised
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return loss, (logits.argmax(1) == labels).float().mean()

    def _test_time_gaussians(self, images: Tensor) -> Tensor:
        """The encoder's Gaussians as at test time (eval mode: fixed g0), without gradients."""
        encoder = self.model.encoder
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            gaussians = self.model.encode(images)
        encoder.train(was_training)
        return gaussians

    def forward(self, images: Tensor, targets: Tensor, labels: Tensor, phase: str, with_dssim: bool):
        if phase == "reconstruction":
            rec = self._reconstruction(self.model.encode(images), targets, with_dssim)
            return rec, {"rec_loss": rec.detach()}
        if phase == "classifier":
            ce, acc = self._classification(self._test_time_gaussians(images), labels)
            return ce, {"ce_loss": ce.detach(), "train_acc": acc}
        gaussians = self.model.encode(images)
        w = self.cls_into_encoder
        if w == 0:
            to_classifier = self._test_time_gaussians(images)
        else:
            to_classifier = gaussians.detach() + w * (gaussians - gaussians.detach())
        ce, acc = self._classification(to_classifier, labels)
        rec = self._reconstruction(gaussians, targets, with_dssim)
        return rec + ce, {"rec_loss": rec.detach(), "ce_loss": ce.detach(), "train_acc": acc}
