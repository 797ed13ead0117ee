"""Running sums of the training step's losses and counts of skipped steps, kept on the device
so that a step never waits for it; the trainer reads them (one sync) at its logging interval."""

from __future__ import annotations

import torch
from torch import Tensor


class StepMonitor:
    """Accumulates each step's loss parts and whether it was finite; :meth:`flush` folds them
    into the trainer's JSON ``state`` (``sums``, ``counts``, ``skipped_steps``,
    ``nonfinite_in_a_row``, ``guidance_steps``) and raises once too many steps in a row were not
    finite."""

    def __init__(self, state: dict, max_nonfinite: int):
        self.state, self.max_nonfinite = state, max_nonfinite
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.skipped: Tensor | int = 0
        self.guided: Tensor | int = 0
        self.in_a_row: Tensor | int = state["nonfinite_in_a_row"]

    def step(self, parts: dict[str, Tensor], finite: Tensor) -> None:
        """A normal step: its 0-d loss ``parts`` count only if ``finite`` (0-d bool)."""
        for key, value in parts.items():
            # float64: float32 values add up exactly, so a resumed run's sums match an uninterrupted one's
            self.sums[key] = self.sums.get(key, 0) + torch.where(finite, value.detach().double(), 0.0)
            self.counts[key] = self.counts.get(key, 0) + finite.long()
        self.skipped = self.skipped + (~finite).long()
        self.in_a_row = torch.where(finite, 0, self.in_a_row + 1)

    def guidance(self, finite: Tensor) -> None:
        """A guidance step, taken if ``finite``."""
        self.guided = self.guided + finite.long()
        self.skipped = self.skipped + (~finite).long()

    def flush(self, step: int, phase: str, printer=print) -> None:
        """Read the device's counts into ``state`` (one host-device sync); raises RuntimeError
        after ``max_nonfinite`` non-finite steps in a row."""
        state = self.state
        for key in self.sums:
            state["sums"][key] = state["sums"].get(key, 0.0) + float(self.sums[key])
            state["counts"][key] = state["counts"].get(key, 0) + int(self.counts[key])
        skipped, in_a_row = int(self.skipped), int(self.in_a_row)
        state["skipped_steps"] += skipped
        state["guidance_steps"] += int(self.guided)
        state["nonfinite_in_a_row"] = in_a_row
        self.sums, self.counts, self.skipped, self.guided = {}, {}, 0, 0
        if skipped:
            printer(f"step {step}: {skipped} step(s) skipped for non-finite losses since the last report ({in_a_row} in a row)")
        if in_a_row >= self.max_nonfinite:
            raise RuntimeError(f"{in_a_row} non-finite losses in a row (up to step {step}, phase '{phase}'); "
                               "lower the learning rate or gamma, or resume from an earlier checkpoint")

    def reset_epoch(self) -> None:
        """A new epoch: its loss sums start at zero (skip counts carry on)."""
        self.state["sums"], self.state["counts"] = {}, {}
