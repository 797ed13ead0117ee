"""Train GViT: reconstruction warm-up, classifier pre-training, joint training with guidance.

    gvit-train                                    # built-in run: gvit_nano on scikit-learn's digits (2-core CPU, < 3 min)
    accelerate launch -m timm_gvit.train --dataset PATH_OR_HUB_ID --model gvit_small ...
    gvit-train --help                             # every option; --config FILE.yaml takes them from a file

``gvit-train`` is this module's console script; in a checkout, ``python train_gvit.py`` and
``accelerate launch train_gvit.py`` run it too.

A run folder (``--output-dir``) collects the resolved config, checkpoints (``--resume latest``
continues a stopped run with its saved config, bit for bit), ``metrics.json``, PNG figures,
tracker logs and, at the end, the export folder that
``timm.create_model('local-dir:RUN/export', pretrained=True)`` loads and ``--push-to-hub``
uploads. The method is docs/method.md sections 5 and 6; what survives a crash is in docs/training.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import math
import sys
import time
from pathlib import Path

import timm
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, parse_flag_from_env, set_seed
from timm.data import resolve_model_data_config
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import timm_gvit  # noqa: F401  (registers the models)
from timm_gvit.data_utils import normalize, rgb_targets
from timm_gvit.fitting import psnr
from timm_gvit.hub import PushError, export_model, push_folder
from timm_gvit.training.budgets import eval_budgets, guidance_budgets, step_budgets
from timm_gvit.training.checkpoints import (DiskFull, RunInUse, list_checkpoints, load_checkpoint, load_encoder_weights, load_model_weights, lock_run_dir,
                                            pause_point, recover_checkpoints, resolve_resume, save_checkpoint, write_atomically)
from timm_gvit.training.config import Refusal, TrainConfig, parse_config, save_config
from timm_gvit.training.data import (DataInfo, ImageClassificationDataset, TooManyUnreadable, check_images, decode_sizes, eval_transform, load_splits,
                                     training_transform)
from timm_gvit.training.guidance import guidance_step
from timm_gvit.training.monitor import StepMonitor
from timm_gvit.training.objective import GViTObjective
from timm_gvit.training.optim import create_adamw, step_if_finite
from timm_gvit.training.schedule import PHASES, Schedule
from timm_gvit.training.streaming import StreamingImageDataset, agreed_batches, nominal_batches, stream_shards, stream_splits
from timm_gvit.training.teacher import load_teacher
from timm_gvit.visualize import save_reconstruction_grid


def main(argv: list[str] | None = None) -> int:
    """Parse the options, lock the run folder, train; the exit status. A refusal (bad options,
    data, checkpoint or run folder) is one line on stderr and a :class:`Refusal` (exit status 2)."""
    try:
        config: TrainConfig = parse_config(argv)  # validated; with --resume, the run's own config
        try:
            # the process group as Accelerator will see it (on CPUs too, with ACCELERATE_USE_CPU): the main process holds the lock
            processes = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
            with lock_run_dir(config.output_dir, owner=processes.is_main_process):
                return train(config)
        except (RunInUse, DiskFull) as exc:
            raise Refusal(f"train_gvit.py: error: {exc}") from None
        except TooManyUnreadable as exc:  # from a loader worker, its message ends with the original one
            message = str(exc).strip().splitlines()[-1].removeprefix(f"{TooManyUnreadable.__module__}.{TooManyUnreadable.__name__}: ")
            raise Refusal(f"train_gvit.py: error: {message}") from None
    except Refusal as exc:
        print(exc, file=sys.stderr)
        raise


def train(config: TrainConfig) -> int:
    """The run of ``config``, in its folder, which the caller has locked: every epoch, then the export."""
    try:
        run = setup(config)
    except Refusal:
        raise
    except (ValueError, OSError) as exc:  # the data, the checkpoint or the weights to start from
        raise Refusal(f"train_gvit.py: error: {exc}") from exc
    announce(run)
    for epoch in itertools.count(run.state["epoch"]):  # until the schedule's last step (a stream's epoch may end early)
        record = train_one_epoch(run, epoch)
        last_epoch = run.state["step"] >= run.schedule.total_steps
        if last_epoch or (epoch + 1) % config.eval_every == 0:
            record.update(validate(run))
        end_epoch(run, epoch, record)
        if last_epoch:
            break
    return finish(run)


@dataclasses.dataclass
class Run:
    """What a run's functions share: its options and folder, Accelerate, the data, the model and its
    optimisation, and the trainer's own state (saved in every checkpoint)."""

    config: TrainConfig
    run_dir: Path
    accelerator: Accelerator
    info: DataInfo
    train_dataset: ImageClassificationDataset
    train_loader: DataLoader
    val_loader: DataLoader
    max_bad_images: int  # unreadable images skipped before the run stops
    model: torch.nn.Module  # the plain GViT, for evaluation, guidance and export
    objective: torch.nn.Module  # as Accelerate prepared it
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    ema: ModelEmaV3 | None
    schedule: Schedule
    steps_per_epoch: int
    mean: torch.Tensor  # [C] the data config's, on the device
    std: torch.Tensor
    run_info: dict
    state: dict
    monitor: StepMonitor
    budgets: list[int] | None = None  # a flex model's (--budgets): each step trains one of them
    eval_budgets: list[int] | None = None  # those of them validation reports (--eval-budgets)
    teacher: torch.nn.Module | None = None  # --distill-from's frozen classifier
    phase: str | None = None

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def save_checkpoint(self) -> None:
        if self.config.streaming:  # where every process's loader workers are in their shards
            from accelerate.utils import gather_object

            self.state["loader_states"] = gather_object([self.train_loader.state_dict()])
        save_checkpoint(self.accelerator, self.run_dir, self.state, self.config.keep_checkpoints,
                        objective=self.accelerator.unwrap_model(self.objective), optimizer=self.optimizer,
                        scheduler=self.scheduler, ema=self.ema)

    def note_bad_images(self, reasons: list[str]) -> None:
        """Record the unreadable images that this process's batches met since the last call, as
        every process has met them (a collective: every process calls it at the same step), and
        stop the run with a one-line error past ``--max-bad-images``."""
        local = [why for text in reasons if text for why in text.split("\n")]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            local = gather_object([local])
            local = [why for part in local for why in part]
        known = self.state["bad_images"]
        known.extend(why for why in dict.fromkeys(local) if why not in known)
        if len(known) > self.max_bad_images:
            raise Refusal(f"train_gvit.py: error: {len(known)} unreadable images, more than --max-bad-images "
                          f"{self.config.max_bad_images:g} allows ({self.max_bad_images}): {'; '.join(known[:3])}")

    def write_metrics(self, final: dict | None = None) -> None:
        if self.accelerator.is_main_process:
            record = {"epochs": self.state["history"], "total_steps": self.state["step"], "guidance_steps": self.state["guidance_steps"],
                      "skipped_steps": self.state["skipped_steps"],
                      "bad_images": {"count": len(self.state["bad_images"]), "images": self.state["bad_images"]},
                      **({"final": final} if final is not None else {})}
            write_atomically(self.run_dir / "metrics.json", json.dumps(record, indent=2))


def setup(config: TrainConfig) -> Run:
    """Accelerate, the checked data and its loaders, the model, the optimiser and schedules, and the
    trainer's state (from the checkpoint with --resume)."""
    run_dir = Path(config.output_dir)
    if not config.resume and ((run_dir / "metrics.json").exists() or list_checkpoints(run_dir)):
        raise Refusal(f"train_gvit.py: error: {run_dir} holds a run already: continue it with --resume latest, "
                      "or choose another --output-dir")
    if config.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise Refusal("train_gvit.py: error: --report-to wandb: wandb is not installed (pip install wandb), or use tensorboard / none")
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        # pinned batches copied without blocking the host (the loaders pin where there is a GPU)
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=torch.cuda.is_available()),
        # phases leave the encoder or the classifier without gradients
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(config.seed)

    # ---------------------------------------------------------------- data and model
    world, rank = accelerator.num_processes, accelerator.process_index
    with accelerator.local_main_process_first():  # the first indexes a folder and caches it, the others read the cache
        if config.streaming:
            train_data, val_data, class_names, split_names = stream_splits(config, stream_shards(world, config.workers),
                                                                           accelerator.is_local_main_process)
            info = DataInfo(config.dataset or "sklearn-digits", len(class_names), class_names, train_data.length, val_data.length, split_names)
        else:
            train_data, val_data, info = load_splits(config, write_cache=accelerator.is_local_main_process)
    model = timm.create_model(config.model, num_classes=info.num_classes, **config.model_create_kwargs())
    if config.prefix_loss and model.render_order == "first_in_front":
        accelerator.print("note: --prefix-loss with render_order=first_in_front: each prefix is drawn in front of the Gaussians after it "
                          "and hides them (on Imagenette the full 64 reached 16.5 dB, about its first 8); --model-kwargs "
                          "render_order=last_in_front lets them refine it (18.6 dB, docs/flex.md)")
    if config.init_from and not config.resume:  # a resumed run has its weights in the checkpoint
        count = load_model_weights(model, config.init_from)
        accelerator.print(f"model initialised from {config.init_from} ({count} tensors)")
    if config.init_encoder_from and not config.resume:
        count = load_encoder_weights(model, config.init_encoder_from)
        accelerator.print(f"encoder initialised from {config.init_encoder_from} ({count} tensors)")
    data_config = resolve_model_data_config(model)
    teacher = None  # --distill-from: a frozen classifier whose predictions the classification losses learn from
    if config.distill_from:
        teacher = load_teacher(config.distill_from, model, info.num_classes).to(accelerator.device)
        accelerator.print(f"distilling from {config.distill_from} (weight {config.distill_weight}) in the classifier and joint phases")
    train_dataset, train_loader, val_loader, checked_bad = make_loaders(config, accelerator, data_config, model.in_chans, info,
                                                                        train_data, val_data)
    batches_per_epoch = (nominal_batches(info.train_size, config.batch_size, world, config.workers) if config.streaming
                         else len(train_loader))
    if batches_per_epoch < config.grad_accum_steps:
        raise ValueError(f"dataset '{info.name}' has {info.train_size} training images: too few for one step of "
                         f"{config.batch_size} x {config.grad_accum_steps} per process")
    max_bad = int(config.max_bad_images) if config.max_bad_images >= 1 else math.ceil(config.max_bad_images * info.train_size)
    max_bad += len(checked_bad)  # --skip-bad-images has its own bound

    # ---------------------------------------------------------------- optimisation
    global_batch = config.batch_size * accelerator.num_processes * config.grad_accum_steps
    lr = config.base_lr * global_batch / 256
    objective = GViTObjective(model, config.pixel_loss, config.lambda_perc, config.cls_into_encoder, config.label_smoothing,
                              config.budget_distill, config.budget_weights, config.distill_weight if teacher is not None else 0.0)
    if config.compile:  # the encoder, decode, classifier and losses; the rasteriser stays eager
        objective.compile_regions()
    optimizer = create_adamw(model, lr, config.weight_decay, config.betas)
    if config.streaming:  # the loaders are this process's already: Accelerate would have every process read every shard
        objective, optimizer = accelerator.prepare(objective, optimizer)
        steps_per_epoch = batches_per_epoch // config.grad_accum_steps
    else:
        objective, optimizer, train_loader, val_loader = accelerator.prepare(objective, optimizer, train_loader, val_loader)
        steps_per_epoch = len(train_loader) // config.grad_accum_steps
    model = accelerator.unwrap_model(objective).model
    schedule = Schedule.from_config(config, steps_per_epoch)
    warmup_steps = round(config.warmup_epochs * (steps_per_epoch if config.phase_unit == "epochs" else 1))
    scheduler = CosineLRScheduler(optimizer, t_initial=schedule.total_steps, lr_min=config.min_lr,
                                  warmup_t=warmup_steps, warmup_lr_init=config.min_lr, t_in_epochs=False)
    ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema_decay else None

    # the trainer's own state, all of it in every checkpoint: counters, this epoch's running loss sums, the metrics history
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "guidance_steps": 0, "skipped_steps": 0, "nonfinite_in_a_row": 0,
             "sums": {}, "counts": {}, "history": [], "bad_images": checked_bad, "hardware": []}
    if config.resume:
        if accelerator.is_main_process:
            recover_checkpoints(run_dir)
        accelerator.wait_for_everyone()
        path = resolve_resume(run_dir, config.resume)
        state = load_checkpoint(accelerator, path, objective=accelerator.unwrap_model(objective), optimizer=optimizer,
                                scheduler=scheduler, ema=ema)
        state.setdefault("bad_images", [])  # a checkpoint of an earlier version
        saved = state.get("hardware")  # none in a checkpoint of an earlier version; kept only as the list of dicts it should be
        state["hardware"] = [h for h in saved if isinstance(h, dict)] if isinstance(saved, list) else []
        if config.streaming and state["batch_in_epoch"]:  # in the middle of an epoch: the loader goes on where it was
            resume_stream(train_dataset, train_loader, state, world, rank)
        state["bad_images"] += [why for why in checked_bad if why not in state["bad_images"]]
        accelerator.print(f"resumed from {path}: step {state['step']}, epoch {state['epoch']}, batch {state['batch_in_epoch']}")
    # every machine the run has trained on, in order: trainings of one recipe on two CPUs (AVX2, AVX-512) differed by up to
    # 3.5 points of top-1
    if (hardware := training_hardware(accelerator)) not in state["hardware"]:
        state["hardware"].append(hardware)
    run_info = {
        "dataset": info.name, "class_names": info.class_names, "train_size": info.train_size, "val_size": info.val_size,
        "steps_per_epoch": steps_per_epoch, "schedule": dataclasses.asdict(schedule), "global_batch": global_batch,
        "lr": lr, "warmup_steps": warmup_steps, "mixed_precision": mixed, "hardware": state["hardware"],
    }
    return Run(config, run_dir, accelerator, info, train_dataset, train_loader, val_loader, max_bad, model, objective,
               optimizer, scheduler, ema, schedule, steps_per_epoch,
               mean=torch.tensor(data_config["mean"], device=accelerator.device),  # one value per input channel
               std=torch.tensor(data_config["std"], device=accelerator.device),
               run_info=run_info, state=state, monitor=StepMonitor(state, config.max_nonfinite),
               budgets=list(model.budgets) if model.budgets else None,
               eval_budgets=eval_budgets(list(model.budgets), config.eval_budgets) if model.budgets else None, teacher=teacher)


def make_loaders(config: TrainConfig, accelerator, data_config: dict, in_chans: int, info: DataInfo, train_data, val_data):
    """The training dataset and the two loaders, and the unreadable images ``--skip-bad-images``
    found first. Workers send 8-bit images (a quarter of float32's bytes through shared and pinned
    memory), normalised on the device. Augmentation is seeded per item and epoch (the dataset's
    set_epoch reaches the workers, which start afresh every epoch), and the loaders draw their worker
    seeds from their own generators: together, a resumed run sees the same crops as an uninterrupted
    one, and the global random state is the model's alone."""
    train_transform = training_transform(data_config, config.hflip, uint8=True)
    val_transform = eval_transform(data_config, config.eval_crop_pct, uint8=True)
    train_min, val_min = decode_sizes(data_config, config.eval_crop_pct) if config.decode_reduced else (None, None)
    pin, world = torch.cuda.is_available(), accelerator.num_processes
    generator = lambda: torch.Generator().manual_seed(config.seed)  # noqa: E731
    if config.streaming:  # this process's share of the shards; the loader saves where its workers are
        from torchdata.stateful_dataloader import StatefulDataLoader

        shards = train_data.make(0).n_shards
        if world > 1 and shards % world:
            raise ValueError(f"dataset '{info.name}': --streaming over {world} processes needs a shard count that divides by {world}, "
                             f"the training split has {shards} (datasets would have every process read every shard); write the "
                             "shards again with python -m timm_gvit.tools.make_shards --per-shard N")
        stream = dict(seed=config.seed, rank=accelerator.process_index, world_size=world, shuffle_buffer=config.shuffle_buffer,
                      in_chans=in_chans)
        train_dataset = StreamingImageDataset(train_data, info.name, info.splits[0], info.num_classes, train_transform, **stream,
                                              min_size=train_min, train=True)
        val_dataset = StreamingImageDataset(val_data, info.name, info.splits[1], info.num_classes, val_transform, **stream,
                                            min_size=val_min, train=False)
        train_loader = StatefulDataLoader(train_dataset, batch_size=config.batch_size, drop_last=True, num_workers=config.workers,
                                          pin_memory=pin, generator=generator())
        val_loader = DataLoader(val_dataset, batch_size=config.batch_size, num_workers=config.workers, pin_memory=pin,
                                generator=generator())
        return train_dataset, train_loader, val_loader, []
    train_dataset = ImageClassificationDataset(train_data, info.name, info.num_classes, train_transform, config.seed, info.splits[0],
                                               in_chans, train_min, replace_bad=True)
    val_dataset = ImageClassificationDataset(val_data, info.name, info.num_classes, val_transform, None, info.splits[1],
                                             in_chans, val_min, replace_bad=False)
    checked_bad = [] if config.skip_bad_images is None else check_images(train_dataset, val_dataset, config.skip_bad_images,
                                                                           config.workers, accelerator.print)
    info.val_size = len(val_dataset)
    if config.decode_on_device:  # the workers send JPEG bytes and crop boxes; the batch is decoded on the device
        from timm_gvit.training.device_decode import DeviceDecodeDataset

        train_dataset = DeviceDecodeDataset(train_dataset)
    train_loader = DataLoader(train_dataset, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=config.workers,
                              pin_memory=pin, generator=generator(), collate_fn=train_dataset.collate if config.decode_on_device else None)
    val_loader = DataLoader(val_dataset, batch_size=config.batch_size, num_workers=config.workers, pin_memory=pin, generator=generator())
    return train_dataset, train_loader, val_loader, checked_bad


def resume_stream(dataset, loader, state: dict, world: int, rank: int) -> None:
    """Put this process's stream loader where the checkpoint's ``state`` says it was."""
    states = state.get("loader_states")
    if not isinstance(states, list) or len(states) != world:
        raise Refusal(f"train_gvit.py: error: --resume: the checkpoint holds the stream positions of "
                      f"{len(states) if isinstance(states, list) else 'no'} processes, this run has {world}: a --streaming run "
                      "continues on as many processes as it was saved with")
    dataset.set_epoch(state["epoch"])
    try:
        loader.load_state_dict(states[rank])
    except Exception as exc:  # a checkpoint from a stranger: its loader state is whatever it says
        raise Refusal(f"train_gvit.py: error: --resume: the checkpoint's stream position is not one this stream can continue "
                      f"from ({type(exc).__name__}: {exc})") from None


def training_hardware(accelerator) -> dict:
    """What this start of a run trains on: the device, the CPU's vector instructions that torch's CPU kernels use
    (``AVX2``, ``AVX512``, ...), the number of processes and the torch version."""
    device = accelerator.device
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "processes": accelerator.num_processes,
            "torch": torch.__version__}


def announce(run: Run) -> None:
    """Write the run's config and facts into its folder (only now, with data, model and checkpoint
    checked), start the trackers and say what will happen."""
    config, accelerator, schedule, info = run.config, run.accelerator, run.schedule, run.info
    if accelerator.is_main_process:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run.run_dir / "config.yaml")
        write_atomically(run.run_dir / "run_info.json", json.dumps(run.run_info, indent=2))
        if config.resume:
            run.write_metrics()  # the history as the checkpoint has it
    accelerator.init_trackers("gvit", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in dataclasses.asdict(config).items()})
    accelerator.print(
        f"{config.model} on '{info.name}' ({info.train_size} train / {info.val_size} val images, {info.num_classes} classes); "
        f"batch {config.batch_size} per process x {accelerator.num_processes} processes x {config.grad_accum_steps} accumulation "
        f"= global batch {run.run_info['global_batch']}, lr {run.run_info['lr']:.3g}; {schedule.total_steps} steps in "
        f"{schedule.epochs(run.steps_per_epoch)} epochs: reconstruction {schedule.recon_steps}, classifier {schedule.classifier_steps}, "
        f"joint {schedule.joint_steps} (guidance {schedule.guidance_steps}, gamma {schedule.gamma}); mixed precision {run.run_info['mixed_precision']}"
    )


def train_one_epoch(run: Run, epoch: int) -> dict:
    """The optimiser steps of one epoch (from the batch a resumed run stopped at), with guidance
    steps, logging, figures and checkpoints at their intervals; returns the epoch's record.

    Nothing in a step waits for the device: a non-finite loss skips the optimiser step on the
    device (:func:`step_if_finite`), and the monitor's counts are read at the logging interval.
    """
    config, accelerator, state, schedule = run.config, run.accelerator, run.state, run.schedule
    objective, optimizer, model, monitor = run.objective, run.optimizer, run.model, run.monitor
    plain = accelerator.unwrap_model(objective)  # its (compiled) regions, which DDP's wrapper does not expose
    run.train_dataset.set_epoch(epoch)
    skip = state["batch_in_epoch"]
    if config.streaming:  # resumed in the middle of an epoch, the loader is where the checkpoint left it
        batches = run.steps_per_epoch * config.grad_accum_steps
        loader = itertools.islice(agreed_batches(run.train_loader, accelerator, stop_at_first=True), batches - skip)
    else:
        run.train_loader.set_epoch(epoch)
        batches = len(run.train_loader)
        loader = accelerator.skip_first_batches(run.train_loader, skip) if skip else run.train_loader
    bar = tqdm(total=batches, initial=skip, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process)
    objective.train()
    serving = model.num_gaussians
    seen, started, step_finite, guided = 0, time.perf_counter(), None, {}
    first_batch_at = None  # when the loader's workers delivered this epoch's first batch
    unreadable = []  # the unreadable images this process's batches met since the last log
    for batch_index, (images, labels, bad) in enumerate(loader, start=skip):
        first_batch_at = first_batch_at or time.perf_counter()
        if state["step"] >= schedule.total_steps:
            break
        if config.streaming:
            images, labels = images.to(accelerator.device, non_blocking=True), labels.to(accelerator.device, non_blocking=True)
        if config.decode_on_device:
            images, labels, bad = run.train_dataset.decode(images, labels, bad, accelerator.device)
        images = normalize(images, run.mean, run.std)  # uint8 -> the model's float input, on the device
        unreadable += [b for b in bad if b]
        step = state["step"]
        state["batch_in_epoch"] = batch_index + 1  # consumed, whether it ends in a step or not
        if schedule.phase(step) != run.phase:
            run.phase = schedule.phase(step)
            accelerator.print(f"step {step}: phase '{run.phase}'")
            accelerator.log({"phase": PHASES.index(run.phase)}, step=step)
        targets = rgb_targets(images, run.mean, run.std)  # [B, 3, H, W] in [0, 1]; grey images as grey RGB
        budgets = None  # a flex model's: the step's (k, prefix) pairs, for the encoder and the classifier alike
        if run.budgets:
            budgets = step_budgets(run.budgets, config.seed, step, config.prefix_loss, config.budget_sampling)
        with accelerator.accumulate(objective):
            with accelerator.autocast():
                teacher_logits = None
                if run.teacher is not None and run.phase != "reconstruction":
                    with torch.no_grad():
                        teacher_logits = run.teacher(images)
                loss, parts = objective(images, targets, labels, run.phase, schedule.dssim_on(step), budgets, teacher_logits)
            finite = accelerator.gather(torch.isfinite(loss.detach())[None]).all()
            step_finite = finite if step_finite is None else step_finite & finite  # over the accumulated batches
            accelerator.backward(loss)
            if config.clip_grad is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(objective.parameters(), config.clip_grad)
            step_if_finite(optimizer, step_finite)  # a no-op until the last micro-batch
            optimizer.zero_grad(set_to_none=True)
        monitor.step(parts, finite)
        seen += images.shape[0] * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        step_finite = None
        state["step"] = step = step + 1
        run.scheduler.step_update(step)
        if run.ema is not None:
            run.ema.update(model, step=step)
        if schedule.guidance_due(step - 1):
            guided_at = guidance_budgets(run.budgets, config.guidance_budgets, config.seed, step - 1, config.budget_sampling) if run.budgets else None
            guided = guidance_step(model, optimizer, images, targets, labels, gamma=schedule.gamma, label_smoothing=config.label_smoothing,
                                   budgets=guided_at,
                                   accelerator=accelerator, encode=plain.encode, classify=plain.classification,
                                   reconstruction=lambda r, t: plain.reconstruction(r, t, schedule.dssim_on(step - 1)))
            monitor.guidance(guided.pop("guidance/finite"))
        model.set_num_gaussians(serving)  # figures, checkpoints and validation at the k the model serves
        bar.update(config.grad_accum_steps)
        if step % config.log_every == 0 or step % config.checkpoint_every == 0:
            run.note_bad_images(unreadable)
            unreadable = []
        if step % config.log_every == 0:
            monitor.flush(step, run.phase, accelerator.print)
            current_lr, rate = optimizer.param_groups[0]["lr"], seen / (time.perf_counter() - started)
            bar.set_postfix(phase=run.phase, loss=f"{loss.item():.4f}", lr=f"{current_lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
            accelerator.log({**{k: v.item() for k, v in parts.items()}, "lr": current_lr, "images_per_s": rate,
                             "guidance_steps": state["guidance_steps"], **{k: v.item() for k, v in guided.items()}}, step=step)
            guided = {}  # the last guidance step's losses, logged once
        if step % config.image_every == 0 and accelerator.is_main_process:
            with torch.no_grad():
                gaussians = model.encode(images[:4])
                save_reconstruction_grid(targets[:4], model.render(gaussians, tuple(images.shape[-2:])), gaussians,
                                         run.run_dir / "figures" / f"step-{step:08d}.png")
        if step % config.checkpoint_every == 0:
            monitor.flush(step, run.phase, accelerator.print)
            run.save_checkpoint()
    model.set_num_gaussians(serving)  # an epoch may end in the middle of an accumulated step
    monitor.flush(state["step"], run.phase, accelerator.print)  # waits for the device: the timing below is complete
    run.note_bad_images(unreadable)
    bar.close()
    if seen:
        accelerator.print(f"epoch {epoch}: {seen / (time.perf_counter() - first_batch_at):.0f} img/s from its first batch on "
                          f"(which took {first_batch_at - started:.1f} s to arrive)")
    sums, counts = state["sums"], state["counts"]  # of the losses of this epoch's finite batches
    return {"epoch": epoch, "step": state["step"], "phase": schedule.phase(max(state["step"] - 1, 0)),
            **{k if k.startswith("train") else f"train_{k}": sums[k] / counts[k] for k in sums if counts[k]}}


def validate(run: Run) -> dict[str, float]:
    """Validation top-1/top-5 and PSNR of the model (its EMA where there is one), printed and logged;
    a flex model's at each of its budgets too."""
    results = evaluate(run.eval_model, run.val_loader, run.accelerator, run.mean, run.std, run.note_bad_images, run.config.streaming,
                       budgets=run.eval_budgets)
    run.accelerator.print(f"epoch {run.state['epoch']}: top-1 {results['top1']:.2f}%, top-5 {results['top5']:.2f}%, "
                          f"PSNR {results['psnr']:.2f} dB")
    if run.budgets:
        run.accelerator.print(f"epoch {run.state['epoch']} by budget k: " + "; ".join(
            f"{k}: {results[f'top1@{k}']:.2f}%, {results[f'psnr@{k}']:.2f} dB (prefix {results[f'prefix_psnr@{k}']:.2f} dB)"
            for k in run.eval_budgets))
    run.accelerator.log({f"val/{k}": v for k, v in results.items()}, step=run.state["step"])
    return results


def _scores(logits: Tensor, rendered: Tensor, targets: Tensor, labels: Tensor) -> list[Tensor]:
    """Per image ``[B]``: top-1 hit, top-5 hit, PSNR of the rendering."""
    top5 = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
    hits = top5 == labels[:, None]
    return [hits[:, 0], hits.any(1), psnr(rendered, targets)]


@torch.no_grad()
def evaluate(model, loader, accelerator, mean, std, note_bad_images=None, streaming: bool = False,
             budgets: list[int] | None = None) -> dict[str, float]:
    """Top-1/top-5 (%) and reconstruction PSNR (dB) over a validation loader of uint8 images;
    unreadable images (label -1) count nowhere, and their reasons go to ``note_bad_images``. The
    counts stay on the device until the end. ``streaming``: the loader is this process's share of
    a stream, which may hold fewer batches than another process's.

    With ``budgets`` (a flex model's) also, for each k, ``top1@k``, ``top5@k`` and ``psnr@k`` of
    the model serving k Gaussians, and ``prefix_psnr@k``: the PSNR of the first k of the Gaussians
    it gives at its own k (one encoding, level of detail)."""
    was_training, serving = model.training, model.num_gaussians
    model.eval()
    names = ["top1", "top5", "psnr"] + [f"{name}@{k}" for k in budgets or [] for name in ("top1", "top5", "psnr", "prefix_psnr")]
    totals, count = [0] * len(names), 0
    unreadable = []
    for batch in agreed_batches(loader, accelerator, stop_at_first=False) if streaming else loader:
        if batch is None:  # this process's share has ended before another's: it takes part with nothing
            empty = torch.zeros(0, dtype=torch.bool, device=accelerator.device)
            values = [empty if name.startswith("top") else torch.zeros(0, device=accelerator.device) for name in names]
            readable = empty
        else:
            images, labels, bad = batch
            images, labels = images.to(accelerator.device), labels.to(accelerator.device)
            images = normalize(images, mean, std)
            unreadable += [b for b in bad if b]
            targets, size = rgb_targets(images, mean, std), tuple(images.shape[-2:])
            with accelerator.autocast():
                gaussians = model.encode(images)
                logits = model.classify(gaussians)
            values = _scores(logits, model.render(gaussians, size), targets, labels)
            for k in budgets or []:
                if k == serving:
                    scores = values[:3]
                else:
                    model.set_num_gaussians(k)
                    with accelerator.autocast():
                        at_k = model.encode(images)
                        scores = _scores(model.classify(at_k), model.render(at_k, size), targets, labels)
                    model.set_num_gaussians(serving)
                values = values + scores + [psnr(model.render(gaussians[:, :k], size), targets)]
            readable = labels >= 0
        if streaming:  # batches of different lengths: padded with unreadable rows, which count nowhere
            *values, readable = accelerator.gather(accelerator.pad_across_processes((*values, readable)))
        else:
            *values, readable = accelerator.gather_for_metrics((*values, readable))
        totals = [total + ((value & readable).sum() if name.startswith("top") else torch.where(readable, value.double(), 0).sum())
                  for total, name, value in zip(totals, names, values)]
        count = count + readable.sum()
    if note_bad_images is not None:
        note_bad_images(unreadable)
    count = max(int(count), 1)
    model.train(was_training)
    return {name: (100 if name.startswith("top") else 1) * float(total) / count for name, total in zip(names, totals)}


def end_epoch(run: Run, epoch: int, record: dict) -> None:
    """The epoch's record into the history, then a checkpoint (which holds the history) and metrics.json."""
    run.state["history"].append(record)
    run.state.update(epoch=epoch + 1, batch_in_epoch=0)
    run.monitor.reset_epoch()
    run.save_checkpoint()
    pause_point("before-metrics")
    run.write_metrics()


def finish(run: Run) -> int:
    """Final metrics, the export folder and, with --push-to-hub, the upload; the exit status."""
    config, accelerator, history = run.config, run.accelerator, run.state["history"]
    final = history[-1] if history and "top1" in history[-1] else evaluate(run.eval_model, run.val_loader, accelerator, run.mean, run.std,
                                                                           run.note_bad_images, config.streaming)
    run.write_metrics(final)
    accelerator.end_training()
    status = 0
    if accelerator.is_main_process:
        export_dir = run.run_dir / "export"
        record = {"config": {**dataclasses.asdict(config), "betas": list(config.betas)}, **run.run_info, "metrics": final}
        export_model(run.eval_model, export_dir, run=record, repo_name=config.hub_model_id)
        print(f"exported {export_dir} (top-1 {final['top1']:.2f}%); load it with timm.create_model('local-dir:{export_dir}', pretrained=True)")
        if config.push_to_hub:
            try:
                print(f"pushed to {push_folder(export_dir, config.hub_model_id, private=config.hub_private)}")
            except PushError as exc:
                print(f"push to the Hub failed: {exc}\nthe export folder {export_dir} is intact.", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
