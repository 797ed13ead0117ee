"""Crash-safe checkpoints of a run: ``RUN/checkpoints/step-00001234/``.

Each checkpoint is written to a hidden temporary folder and renamed into place only when complete
(``trainer_state.json`` last), so a crash mid-write leaves the previous checkpoint as the latest
good one. ``Accelerator.save_state`` stores model, optimiser, scheduler, EMA and RNG states; the
trainer's own counters (step, epoch, position in the epoch, guidance and skipped steps) go in
``trainer_state.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())


def resolve_resume(run_dir: str | Path, resume: str) -> Path:
    """``'latest'`` or a path -> a complete checkpoint folder, or a ``FileNotFoundError`` saying why."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"--resume latest: no complete checkpoint under {checkpoint_root(run_dir)}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE})")
    return path


def save_checkpoint(accelerator, run_dir: str | Path, state: dict, keep: int) -> Path:
    """Save the accelerator's state plus ``state`` as checkpoint ``step-<state['step']>``."""
    root = checkpoint_root(run_dir)
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path) -> dict:
    """Restore the accelerator's state from ``path``; returns the trainer state saved with it."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_encoder_weights(model, source: str | Path) -> int:
    """Copy the encoder of another run into ``model.encoder``; returns the number of tensors.

    ``source``: an export folder, a trainer checkpoint folder, or a ``.safetensors`` / ``.pth``
    file. Position embeddings are resampled when the image sizes differ.
    """
    import torch
    from safetensors.torch import load_file

    from ..gvit import checkpoint_filter_fn

    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"--init-encoder-from {source}: no weights file at {path}")
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    for prefix in ("module.", "model."):  # DDP, and the trainer's objective wrapper
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    encoder = {k: v for k, v in checkpoint_filter_fn(state, model).items() if k.startswith("encoder.")}
    if not encoder:
        raise ValueError(f"--init-encoder-from {source}: the file has no encoder weights")
    try:
        model.load_state_dict(encoder, strict=False)
        missing = set(model.encoder.state_dict()) - {k.removeprefix("encoder.") for k in encoder}
        if missing:
            raise RuntimeError(f"missing {sorted(missing)[:5]}")
    except RuntimeError as exc:
        raise ValueError(f"--init-encoder-from {source}: its encoder does not fit this model's ({exc})") from exc
    return len(encoder)
