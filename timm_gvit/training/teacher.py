"""A trained classifier the model learns from (``--distill-from``): knowledge distillation, as
FlexiViT trains every patch size of one ViT from a strong teacher's predictions (docs/flex.md)."""

from __future__ import annotations

import timm
from timm.data import resolve_model_data_config
from torch import nn


def load_teacher(name: str, student: nn.Module, num_classes: int) -> nn.Module:
    """``timm.create_model(name, pretrained=True)`` (a tag such as ``gvit_nano.imagenette_64_v2``,
    ``local-dir:FOLDER``, ``hf-hub:ORG/NAME``), frozen in eval mode. Its input (size, mean, std)
    must be the student's and it must predict ``num_classes`` classes, in the dataset's order (which
    no config can check); a ValueError names what differs."""
    try:
        teacher = timm.create_model(name, pretrained=True)
    except Exception as err:  # timm raises RuntimeError, ValueError, OSError or the Hub's errors for a name it cannot load
        raise ValueError(f"--distill-from {name}: timm.create_model({name!r}, pretrained=True) failed: {err}") from err
    ours, theirs = resolve_model_data_config(student), resolve_model_data_config(teacher)
    differ = [f"{key} {tuple(theirs[key])} where the model's is {tuple(ours[key])}" for key in ("input_size", "mean", "std")
              if [round(float(v), 6) for v in theirs[key]] != [round(float(v), 6) for v in ours[key]]]
    if teacher.num_classes != num_classes:
        differ.append(f"{teacher.num_classes} classes where the dataset has {num_classes}")
    if differ:
        raise ValueError(f"--distill-from {name}: the teacher must take the model's input and predict the dataset's classes; it has "
                         + "; ".join(differ))
    return teacher.eval().requires_grad_(False)
