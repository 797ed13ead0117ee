"""The loss of one normal training step, as a module so that DDP wraps and synchronises it."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .budgets import budget_loss_weights, parse_budget_weights
from .losses import reconstruction_loss


class GViTObjective(nn.Module):
    """``forward(images, targets, labels, phase, with_dssim, prefix) -> (loss, parts)`` for a GViT ``model``.

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
    0-d tensors for logging (nothing here waits for the device). The model serves its
    ``num_gaussians``; a flex model's step names its ``budgets``, (k, prefix) pairs
    (:func:`~timm_gvit.training.budgets.step_budgets`): the loss and parts are the mean of each
    budget's, the model left at the last k. With a ``prefix`` (a smaller k, docs/flex.md) a
    budget's reconstruction loss is the mean of the k Gaussians' and of their first ``prefix``'s.
    With ``budget_distill`` w > 0 and several budgets in a step, the largest is classified first
    and each smaller budget's classification loss is ``(1 - w) * CE + w * KL(p_largest || p_k)``,
    the largest budget's predictions detached (in-place distillation, docs/flex.md). Given a
    trained teacher's ``teacher_logits`` ``[B, classes]`` (``--distill-from``), every budget's
    classification loss is ``(1 - teacher_weight) * CE + teacher_weight * KL(p_teacher || p_k)``
    instead (knowledge distillation, as FlexiViT trains; a model of one k too). With
    ``budget_weights`` 'sqrt', 'linear', 'inverse-sqrt' or 'inverse' the step's loss weights each
    budget's in proportion to sqrt(k), k, 1/sqrt(k) or 1/k instead of taking their mean (:func:`~timm_gvit.training.budgets.budget_loss_weights`);
    two schemes, ``'RECONSTRUCTION,CLASSIFICATION'`` ('linear,equal'), weight each budget's
    reconstruction and classification losses each by its own. The logged parts stay each budget's mean.

    The step runs through three functions, :attr:`encode`, :attr:`classification` and
    :attr:`reconstruction`, which :meth:`compile_regions` replaces with compiled ones: everything
    but the rasteriser (a custom kernel with its own backward), which stays eager between them.
    The guidance step takes the same three.
    """

    def __init__(self, model: nn.Module, pixel_loss: str = "bce", lambda_perc: float = 0.1,
                 cls_into_encoder: float = 0.0, label_smoothing: float = 0.0, budget_distill: float = 0.0,
                 budget_weights: str = "equal", teacher_weight: float = 0.0):
        super().__init__()
        for name, weight in (("budget_distill", budget_distill), ("teacher_weight", teacher_weight)):
            if not 0 <= weight <= 1:
                raise ValueError(f"{name} is the weight of the distillation term, in [0, 1]; got {weight}")
        self.rec_weights, self.cls_weights = parse_budget_weights(budget_weights)  # refuses an unknown scheme now
        self.model = model
        self.pixel_loss, self.lambda_perc = pixel_loss, lambda_perc
        self.cls_into_encoder, self.label_smoothing, self.budget_distill = cls_into_encoder, label_smoothing, budget_distill
        self.teacher_weight = teacher_weight
        self.encode: Callable[[Tensor], Tensor] = self._encode
        self.classification: Callable[..., tuple[Tensor, Tensor, Tensor]] = self._classification
        self.reconstruction: Callable[[Tensor, Tensor, bool], Tensor] = self._reconstruction_loss

    # ----------------------------------------------------------------- the compiled regions
    def _encode(self, images: Tensor) -> Tensor:
        """Normalised images ``[B, C, H, W]`` -> decoded Gaussians ``[B, k, 9]`` (encoder + decode)."""
        return self.model.encode(images, check_values=False)  # non-finite losses are skipped, not raised

    def _classification(self, gaussians: Tensor, labels: Tensor, teacher: Tensor | None = None,
                        weight: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gaussians ``[B, k, 9]``, labels ``[B]`` -> (loss, detached cross-entropy, accuracy, detached
        logits ``[B, classes]``), float32: the loss the cross-entropy, or with a ``teacher`` (logits
        ``[B, classes]``) ``(1 - weight) * CE + weight * KL(softmax(teacher) || softmax(logits))``."""
        logits = self.model.classify(gaussians, check_values=False).float()
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        loss = ce
        if teacher is not None:
            kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher.float(), -1), log_target=True, reduction="batchmean")
            loss = (1 - weight) * ce + weight * kl
        return loss, ce.detach(), (logits.argmax(1) == labels).float().mean(), logits.detach()

    def _reconstruction_loss(self, rendered: Tensor, targets: Tensor, with_dssim: bool) -> Tensor:
        """Renderings and targets ``[B, 3, H, W]`` in [0, 1] -> L_pix (+ lambda_perc * D-SSIM)."""
        return reconstruction_loss(rendered, targets, self.pixel_loss, self.lambda_perc, with_dssim)

    def compile_regions(self, **compile_kwargs) -> "GViTObjective":
        """``torch.compile`` the step's three regions (``compile_kwargs`` go to ``torch.compile``);
        the rasteriser stays eager. Each region compiles once per mode it runs in (the encoder in
        training and in eval mode, with and without D-SSIM): a handful of graphs per run."""
        self.encode = torch.compile(self._encode, **compile_kwargs)
        self.classification = torch.compile(self._classification, **compile_kwargs)
        self.reconstruction = torch.compile(self._reconstruction_loss, **compile_kwargs)
        return self

    # ----------------------------------------------------------------- the step
    def _rendered_loss(self, gaussians: Tensor, targets: Tensor, with_dssim: bool) -> Tensor:
        if gaussians.device.type == "cpu" and not torch.isfinite(gaussians).all():
            # diverged weights: a non-finite loss, which the trainer skips (the CPU renderer refuses
            # them; on a GPU the renderer returns NaN images and nothing waits for the device)
            return gaussians.sum() * float("nan")
        return self.reconstruction(self.model.render(gaussians, tuple(targets.shape[-2:])), targets, with_dssim)

    def _reconstruction(self, gaussians: Tensor, targets: Tensor, with_dssim: bool, prefix: int | None) -> Tensor:
        rec = self._rendered_loss(gaussians, targets, with_dssim)
        if prefix is None:
            return rec
        return (rec + self._rendered_loss(gaussians[:, :prefix], targets, with_dssim)) / 2

    def _test_time_gaussians(self, images: Tensor) -> Tensor:
        """The encoder's Gaussians as at test time (eval mode: fixed g0), without gradients."""
        encoder = self.model.encoder
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            gaussians = self.encode(images)
        encoder.train(was_training)
        return gaussians

    def forward(self, images: Tensor, targets: Tensor, labels: Tensor, phase: str, with_dssim: bool,
                budgets: list[tuple[int, int | None]] | None = None, teacher_logits: Tensor | None = None):
        """The step's (loss, logged parts): ``images`` ``[B, C, H, W]`` normalised, ``targets`` ``[B, 3, H, W]``
        in [0, 1], ``labels`` ``[B]``; ``budgets`` a flex model's (k, prefix) pairs; ``teacher_logits``
        ``[B, classes]`` a trained teacher's predictions on ``images`` (used outside phase 1)."""
        teacher = (teacher_logits, self.teacher_weight) if teacher_logits is not None and phase != "reconstruction" else (None, 0.0)
        if not budgets:
            rec, ce, parts, _ = self._step(images, targets, labels, phase, with_dssim, None, teacher)
            return _total(rec, ce), parts
        distill = teacher[0] is None and self.budget_distill > 0 and len(budgets) > 1 and phase != "reconstruction"
        if distill:  # the largest budget first: its predictions teach the others
            budgets = sorted(budgets, key=lambda pair: -pair[0])
        recs, ces, parts = [], [], []
        for k, prefix in budgets:  # a flex model: each budget's loss, the step's their (weighted) mean (one backward: DDP's contract)
            self.model.set_num_gaussians(k)
            rec, ce, part, logits = self._step(images, targets, labels, phase, with_dssim, prefix, teacher)
            if distill and teacher[0] is None:
                teacher = (logits, self.budget_distill)
            recs.append(rec)
            ces.append(ce)
            parts.append(part)
        if len(parts) == 1:
            return _total(recs[0], ces[0]), parts[0]
        part_means = {name: torch.stack([p[name] for p in parts]).mean() for name in parts[0]}
        ks = [k for k, _ in budgets]  # in the order the budgets ran
        if self.rec_weights == self.cls_weights:  # one scheme: each budget's whole loss weighted (or their plain mean)
            return _weighted([_total(rec, ce) for rec, ce in zip(recs, ces)], ks, self.rec_weights), part_means
        terms = [_weighted(losses, ks, scheme) for losses, scheme in ((recs, self.rec_weights), (ces, self.cls_weights)) if losses[0] is not None]
        return sum(terms[1:], terms[0]), part_means

    def _step(self, images: Tensor, targets: Tensor, labels: Tensor, phase: str, with_dssim: bool, prefix: int | None,
              teacher: tuple[Tensor | None, float] = (None, 0.0)):
        """One budget's (reconstruction loss or None, classification loss or None, parts, detached logits or None);
        ``teacher`` the logits its classification loss learns from and their weight."""
        if phase == "reconstruction":
            rec = self._reconstruction(self.encode(images), targets, with_dssim, prefix)
            return rec, None, {"rec_loss": rec.detach()}, None
        if phase == "classifier":
            loss, ce, acc, logits = self.classification(self._test_time_gaussians(images), labels, *teacher)
            return None, loss, self._classification_parts(loss, ce, acc), logits
        gaussians = self.encode(images)
        w = self.cls_into_encoder
        if w == 0:
            to_classifier = self._test_time_gaussians(images)
        else:
            to_classifier = gaussians.detach() + w * (gaussians - gaussians.detach())
        loss, ce, acc, logits = self.classification(to_classifier, labels, *teacher)
        rec = self._reconstruction(gaussians, targets, with_dssim, prefix)
        return rec, loss, {"rec_loss": rec.detach(), **self._classification_parts(loss, ce, acc)}, logits

    def _classification_parts(self, loss: Tensor, ce: Tensor, acc: Tensor) -> dict[str, Tensor]:
        """The logged parts of one budget's classification: ``ce_loss`` the cross-entropy with the
        labels; where the objective distils (a teacher or ``budget_distill``), ``cls_loss`` the loss
        optimised as well, so that ``ce_loss`` means the same with and without a teacher."""
        distils = self.teacher_weight > 0 or self.budget_distill > 0
        return {"ce_loss": ce, "train_acc": acc, **({"cls_loss": loss.detach()} if distils else {})}


def _total(rec: Tensor | None, ce: Tensor | None) -> Tensor:
    """One budget's loss: its reconstruction and classification losses, whichever the phase has."""
    return ce if rec is None else rec if ce is None else rec + ce


def _weighted(losses: list[Tensor], ks: list[int], scheme: str) -> Tensor:
    """The budgets' losses (0-d) combined as ``scheme`` weights budgets ``ks``: 'equal' their mean."""
    if scheme == "equal":
        return torch.stack(losses).mean()
    return sum(w * loss for w, loss in zip(budget_loss_weights(ks, scheme), losses))
