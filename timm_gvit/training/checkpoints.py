"""Crash-safe checkpoints of a run: ``RUN/checkpoints/step-00001234/``.

A checkpoint holds everything the trainer needs to continue bit for bit, in safetensors and JSON
(no pickle is written or read):

    model.safetensors       the training objective's weights (keys ``model.<GViT key>``)
    ema.safetensors         the EMA weights, with --ema-decay
    optimizer.safetensors   the optimiser's tensors (its hyper-parameters are in trainer_state.json)
    rng-<process>.json      each process's Python, NumPy and torch generator states
    trainer_state.json      the counters, the metrics history, the lr scheduler and grad scaler
                            states, and the size of every file above; written last, it marks the
                            checkpoint complete

A checkpoint is written to a hidden ``.tmp-step-N`` folder and renamed into place once complete.
Nothing is deleted in place: a checkpoint that is replaced (the end-of-epoch save repeats the step
of a ``--checkpoint-every`` save) or pruned is first renamed to ``.trash-...``. So at every instant
each checkpoint has a complete copy under some name, and :func:`recover_checkpoints` (run when a
trainer starts) finishes an interrupted save. Of a checkpoint folder from elsewhere, the file list
is checked (plain names inside the folder, no links, exact sizes) and nothing is unpickled; its
weights and states are still used as they are.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import os
import random
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data_utils import check_safetensors  # noqa: F401  (timm_gvit.training.checkpoints.check_safetensors, as before)

STATE_FILE = "trainer_state.json"
PAUSE_VARIABLE = "GVIT_PAUSE_AT"
LOCK_FILE = ".trainer.lock"


class RunInUse(RuntimeError):
    """Another trainer holds the run folder; the message names it."""


class DiskFull(OSError):
    """A checkpoint did not fit on its disk; the message says how much space one needs."""


@contextlib.contextmanager
def lock_run_dir(run_dir: str | Path, owner: bool = True):
    """Hold an exclusive ``fcntl.flock`` on ``RUN/.trainer.lock`` while the block runs, so that a
    second trainer on the folder fails with :class:`RunInUse` naming the first; the OS releases
    the lock when the process ends, however it ends. Only the ``owner`` (main) process locks."""
    if not owner:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RunInUse(f"{run_dir} is in use by another trainer ({f.read().strip() or 'its process id unknown'}); "
                           "wait for it to end, or choose another --output-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}")
        f.flush()
        yield


def pause_point(name: str) -> None:
    """Test hook for crash tests: with ``GVIT_PAUSE_AT=name`` in the environment, say so on
    stderr and wait here (to be killed)."""
    if os.environ.get(PAUSE_VARIABLE) == name:
        print(f"paused at {name}", file=sys.stderr, flush=True)
        time.sleep(600)


def write_atomically(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old or the new file, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` whose errors name the file."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------- finding checkpoints


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or ``None`` if it is."""
    folder = Path(folder)
    try:
        files = json.loads((folder / STATE_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"no {STATE_FILE}"
    except (ValueError, KeyError, TypeError):
        return f"{STATE_FILE} is unreadable or was written by an older timm-gvit (no file list)"
    if not isinstance(files, dict):
        return f"{STATE_FILE}'s file list is a {type(files).__name__}, expected a mapping of file names to sizes"
    if not {"model.safetensors", "optimizer.safetensors"} <= files.keys():
        return f"{STATE_FILE}'s file list lacks model.safetensors or optimizer.safetensors"
    for name, size in files.items():
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            return f"{STATE_FILE} lists {name!r}, which is not a plain file name inside the checkpoint folder"
        if isinstance(size, bool) or not isinstance(size, int):
            return f"{STATE_FILE} gives {name} the size {size!r}, expected a number of bytes"
        path = folder / name
        if path.is_symlink():
            return f"{name} is a symbolic link, not a file of the checkpoint"
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, expected {size}"
    return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first: ``step-N`` folders, and a complete ``.tmp-step-N`` whose
    ``step-N`` a crash left missing (until :func:`recover_checkpoints` renames it)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = {p.name: p for p in root.glob("step-*") if checkpoint_problem(p) is None}
    for tmp in root.glob(".tmp-step-*"):
        name = tmp.name.removeprefix(".tmp-")
        if not (root / name).exists() and checkpoint_problem(tmp) is None:
            found[name] = tmp
    return [found[name] for name in sorted(found)]


def recover_checkpoints(run_dir: str | Path) -> None:
    """Finish what a crash interrupted: promote a complete ``.tmp-step-N`` whose ``step-N`` is
    missing, and delete the rest of the hidden folders. Only for the process that owns the run."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return
    for tmp in sorted(root.glob(".tmp-step-*")):
        final = root / tmp.name.removeprefix(".tmp-")
        if not final.exists() and checkpoint_problem(tmp) is None:
            os.replace(tmp, final)
            print(f"recovered checkpoint {final.name} from an interrupted save", file=sys.stderr)
        else:
            shutil.rmtree(tmp)
    for trash in root.glob(".trash-*"):
        shutil.rmtree(trash)


def resolve_resume(run_dir: str | Path, resume: str) -> Path:
    """``'latest'`` or a path -> a complete checkpoint folder, or a ``FileNotFoundError`` saying why.

    ``latest`` is the newest complete checkpoint; newer incomplete ones are skipped with a note.
    """
    if resume == "latest":
        root = checkpoint_root(run_dir)
        found = list_checkpoints(run_dir)
        for skipped in sorted(root.glob("step-*")) if root.is_dir() else []:
            if found and skipped.name > found[-1].name.removeprefix(".tmp-"):
                print(f"--resume latest: skipping incomplete checkpoint {skipped} ({checkpoint_problem(skipped)})", file=sys.stderr)
        if not found:
            again = "in another --output-dir" if (Path(run_dir) / "metrics.json").exists() else "without --resume"
            raise FileNotFoundError(f"--resume latest: no complete checkpoint under {root}; start the run again {again}")
        return found[-1]
    path = Path(resume)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder ({problem})")
    newer = [p.name for p in list_checkpoints(run_dir) if p.name.removeprefix(".tmp-") > path.name]
    if newer:  # they would be taken for this continuation's checkpoints, and --resume latest would return to them
        raise FileExistsError(f"--resume {resume}: the run has newer checkpoints {newer}; move them out of "
                              f"{checkpoint_root(run_dir)} to continue from this one")
    return path


# ----------------------------------------------------------------------------- saving


def _encode_bytes(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _decode_bytes(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict:
    """This process's Python, NumPy, torch (and CUDA) generator states, as JSON values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": _encode_bytes(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_encode_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_decode_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_decode_bytes(s) for s in state["cuda"]])


def _split_optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's ``state_dict`` -> (its tensors by ``'<param>.<key>'``, the rest as JSON values)."""
    full = optimizer.state_dict()
    tensors, values = {}, {}
    for index, entries in full["state"].items():
        for key, value in entries.items():
            (tensors if torch.is_tensor(value) else values)[f"{index}.{key}"] = value
    return tensors, {"param_groups": full["param_groups"], "values": values}


def _join_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in {**tensors, **rest["values"]}.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = []
    for saved, current in zip(rest["param_groups"], optimizer.param_groups):  # JSON turned tuples (betas) into lists
        groups.append({k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()})
    return {"state": state, "param_groups": groups}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(folder: Path) -> None:
    """Delete a folder without ever leaving a half-deleted one under its name."""
    trash = folder.with_name(f".trash-{folder.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash)


def save_checkpoint(accelerator, run_dir: str | Path, state: dict, keep: int, *, objective, optimizer, scheduler, ema=None) -> Path:
    """Save the run as checkpoint ``step-<state['step']>`` and keep the newest ``keep`` (0: all).

    ``state`` is the trainer's JSON state (counters, metrics history); ``objective`` the unwrapped
    training module whose weights are saved.
    """
    root = checkpoint_root(run_dir)
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        if keep > 0:  # those the save would prune go first: the disk holds max(keep, 2) checkpoints, one of them complete
            others = [p for p in list_checkpoints(run_dir) if p.name.removeprefix(".tmp-") != final.name]
            for old in others[: len(others) - max(keep - 2 if final.exists() else keep - 1, 0 if final.exists() else 1)]:
                _discard(old)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    weights = {k: v.contiguous() for k, v in objective.state_dict().items()}
    ema_weights = {k: v.contiguous() for k, v in ema.state_dict().items()} if ema is not None else None
    tensors, optimizer_rest = _split_optimizer_state(optimizer)
    try:
        write_atomically(tmp / f"rng-{accelerator.process_index}.json", json.dumps(rng_state()))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_file(weights, str(tmp / "model.safetensors"))
            if ema_weights is not None:
                save_file(ema_weights, str(tmp / "ema.safetensors"))
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            files = {}
            for path in sorted(tmp.iterdir()):
                _fsync(path)
                files[path.name] = path.stat().st_size
            full = {**state, "optimizer": optimizer_rest, "scheduler": scheduler.state_dict(),
                    "grad_scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                    "accelerator_step": accelerator.step, "num_processes": accelerator.num_processes, "files": files}
            write_atomically(tmp / STATE_FILE, json.dumps(full, indent=1))  # last: the checkpoint is complete
    except (OSError, SafetensorError) as exc:  # safetensors' errors carry no errno: a full disk is known by its free space
        shutil.rmtree(tmp, ignore_errors=True)
        needed = sum(t.numel() * t.element_size() for part in (weights, ema_weights or {}, tensors) for t in part.values())
        full_disk = exc.errno in (errno.ENOSPC, errno.EDQUOT) if isinstance(exc, OSError) else shutil.disk_usage(root).free < needed
        if not full_disk:
            raise
        found = list_checkpoints(run_dir)
        raise DiskFull(
            f"no space left on the disk of {root} for checkpoint {final.name}: one checkpoint of this run takes about "
            f"{needed / 1e6:.1f} MB, and with --keep-checkpoints {keep} the run folder holds "
            f"{'every one' if keep == 0 else f'up to {max(keep, 2)}'} while the next is written "
            f"({shutil.disk_usage(root).free / 1e6:.1f} MB are free now). Free space, then continue with --resume latest"
            + (f" (from {found[-1].name})" if found else "; no checkpoint is complete yet, so start the run again")) from exc
    if accelerator.is_main_process:
        if final.exists():  # the end-of-epoch save of a step that --checkpoint-every saved
            trash = final.with_name(f".trash-{final.name}")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            pause_point("checkpoint-swap")
            os.replace(tmp, final)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, final)
        _fsync(root)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            _discard(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path, *, objective, optimizer, scheduler, ema=None) -> dict:
    """Restore weights, optimiser, scheduler, grad scaler and RNG states from checkpoint ``path``
    (made complete-checked by :func:`resolve_resume`); returns the trainer's state saved with it."""
    path = Path(path)
    full = json.loads((path / STATE_FILE).read_text())
    objective.load_state_dict(read_safetensors(path / "model.safetensors"))
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise ValueError(f"--resume {path}: the run had no EMA (--ema-decay), this one has")
        ema.load_state_dict(read_safetensors(path / "ema.safetensors"))
    tensors = read_safetensors(path / "optimizer.safetensors")
    optimizer.load_state_dict(_join_optimizer_state(optimizer, tensors, full.pop("optimizer")))
    scheduler.load_state_dict(full.pop("scheduler"))
    scaler = full.pop("grad_scaler")
    if scaler is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(scaler)
    accelerator.step = full.pop("accelerator_step")
    rng_file = path / f"rng-{accelerator.process_index}.json"
    if full.pop("num_processes") == accelerator.num_processes and rng_file.is_file():
        set_rng_state(json.loads(rng_file.read_text()))
    else:
        accelerator.print(f"--resume {path}: saved with another number of processes; random states start afresh (not bit-exact)")
    full.pop("files")
    return full


def load_encoder_weights(model, source: str | Path) -> int:
    """Copy the encoder of another run into ``model.encoder``; returns the number of tensors.

    ``source``: an export folder, a trainer checkpoint folder, or a ``.safetensors`` / ``.pth``
    file. Position embeddings are resampled when the image sizes differ.
    """
    return _load_part(model, source, "encoder", "--init-encoder-from")


def load_model_weights(model, source: str | Path) -> int:
    """Copy a whole GViT (encoder and classifier) from another run into ``model``; returns the
    number of tensors. ``source`` as for :func:`load_encoder_weights`; every weight of ``model``
    must be in it with the same shape (the class counts must agree)."""
    return _load_part(model, source, None, "--init-from")


def _load_part(model, source: str | Path, part: str | None, flag: str) -> int:
    from ..gvit import checkpoint_filter_fn

    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {source}: no weights file at {path}")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{flag} {path}: cannot read the weights ({type(exc).__name__}: {exc})") from exc
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    for prefix in ("module.", "model."):  # DDP, and the trainer's objective wrapper
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    _check_render_order(model, path.parent / "config.json", flag, source)
    state = checkpoint_filter_fn(state, model)
    if part is not None:
        state = {k: v for k, v in state.items() if k.startswith(f"{part}.")}
    if not state:
        raise ValueError(f"{flag} {source}: the file has no {part or 'model'} weights")
    own = getattr(model, part).state_dict() if part else model.state_dict()
    try:
        model.load_state_dict(state, strict=False)
        missing = set(own) - {k.removeprefix(f"{part}.") if part else k for k in state}
        if missing:
            raise RuntimeError(f"missing {sorted(missing)[:5]}")
    except RuntimeError as exc:
        raise ValueError(f"{flag} {source}: its {part or 'model'} does not fit this model's ({exc})") from exc
    return len(state)


def _check_render_order(model, config_path: Path, flag: str, source) -> None:
    """Refuse weights exported from a model that composites its Gaussians in the other order
    (``render_order``): its encoder placed them for that order, and would reconstruct wrongly."""
    try:
        args = json.loads(config_path.read_text()).get("model_args", {})
        theirs = args.get("render_order", "first_in_front") if isinstance(args, dict) else None
    except (OSError, ValueError, AttributeError):  # no config (a bare weights file, a checkpoint): nothing to check
        return
    ours = getattr(model, "render_order", "first_in_front")
    if isinstance(theirs, str) and theirs != ours:
        raise ValueError(f"{flag} {source}: those weights composite Gaussians with render_order={theirs!r} and this model "
                         f"with {ours!r}; give the same order (--model-kwargs render_order={theirs})")
