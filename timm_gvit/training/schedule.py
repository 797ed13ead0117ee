"""The three-phase schedule (docs/method.md section 6) in optimiser steps.

    [ reconstruction | classifier | joint ............ guidance ]
      encoder only     encoder     both trained;     ... plus a guidance step
      (D-SSIM on from  frozen      classifier loss   after every guidance_every-th
       dssim_from)                 kept out of the   step, encoder only
                                   encoder
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PHASES = ("reconstruction", "classifier", "joint", "guidance")


@dataclass(frozen=True)
class Schedule:
    recon_steps: int
    dssim_from: int
    classifier_steps: int
    joint_steps: int
    guidance_steps: int
    guidance_every: int
    gamma: float

    @classmethod
    def from_config(cls, config, steps_per_epoch: int) -> "Schedule":
        per_unit = steps_per_epoch if config.phase_unit == "epochs" else 1

        def steps(value: float, name: str) -> int:
            if value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
            return int(round(value * per_unit))

        schedule = cls(
            recon_steps=steps(config.recon_epochs, "recon_epochs"),
            dssim_from=steps(config.dssim_from, "dssim_from"),
            classifier_steps=steps(config.classifier_epochs, "classifier_epochs"),
            joint_steps=steps(config.joint_epochs, "joint_epochs"),
            # gamma 0 means no guidance, decided here once: the schedule then has no guidance steps
            guidance_steps=steps(config.guidance_epochs, "guidance_epochs") if config.gamma > 0 else 0,
            guidance_every=config.guidance_every,
            gamma=config.gamma,
        )
        if steps(config.guidance_epochs, "guidance_epochs") > schedule.joint_steps:
            raise ValueError(f"--guidance-epochs ({config.guidance_epochs}) cannot exceed --joint-epochs ({config.joint_epochs})")
        if schedule.total_steps == 0:
            raise ValueError("the schedule has no steps: set --recon-epochs, --classifier-epochs or --joint-epochs")
        if config.guidance_every < 1:
            raise ValueError(f"--guidance-every must be >= 1, got {config.guidance_every}")
        return schedule

    @property
    def total_steps(self) -> int:
        return self.recon_steps + self.classifier_steps + self.joint_steps

    def epochs(self, steps_per_epoch: int) -> int:
        return math.ceil(self.total_steps / steps_per_epoch)

    def phase(self, step: int) -> str:
        """The phase of optimiser step ``step`` (0-based)."""
        if step < self.recon_steps:
            return "reconstruction"
        if step < self.recon_steps + self.classifier_steps:
            return "classifier"
        if step < self.total_steps - self.guidance_steps:
            return "joint"
        return "guidance"

    def dssim_on(self, step: int) -> bool:
        return step >= self.dssim_from

    def guidance_due(self, step: int) -> bool:
        """Whether a guidance step follows normal step ``step``."""
        return self.phase(step) == "guidance" and (step + 1) % self.guidance_every == 0
