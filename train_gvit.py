#!/usr/bin/env python
"""Train GViT: reconstruction warm-up, classifier pre-training, joint training with guidance.

    python train_gvit.py                          # built-in run: gvit_nano on scikit-learn's digits (2-core CPU, < 3 min)
    accelerate launch train_gvit.py --dataset PATH_OR_HUB_ID --model gvit_small ...
    python train_gvit.py --help                   # every option; --config FILE.yaml takes them from a file

A run folder (``--output-dir``) collects the resolved config, checkpoints (``--resume latest``
continues a stopped run with its saved config, bit for bit), ``metrics.json``, PNG figures,
tracker logs and, at the end, the export folder that
``timm.create_model('local-dir:RUN/export', pretrained=True)`` loads and ``--push-to-hub``
uploads. The method is gvit-method.md sections 5 and 6; what survives a crash is in the README.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import timm
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from timm.data import create_transform, resolve_model_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import timm_gvit  # noqa: F401  (registers the models)
from hub import PushError, export_model, push_folder
from timm_gvit.data_utils import rgb_targets
from timm_gvit.fitting import psnr
from timm_gvit.training.checkpoints import (checkpoint_root, load_checkpoint, load_encoder_weights, load_model_weights, pause_point, recover_checkpoints,
                                            resolve_resume, save_checkpoint, write_atomically)
from timm_gvit.training.config import TrainConfig, parse_config, save_config
from timm_gvit.training.data import ImageClassificationDataset, load_splits, training_transform
from timm_gvit.training.guidance import guidance_step
from timm_gvit.training.objective import GViTObjective
from timm_gvit.training.schedule import PHASES, Schedule
from timm_gvit.visualize import save_reconstruction_grid


@torch.no_grad()
def evaluate(model, loader, accelerator, mean, std) -> dict[str, float]:
    """Top-1/top-5 (%) and reconstruction PSNR (dB) over a validation loader."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = psnr_sum = count = 0.0
    for images, labels in loader:
        with accelerator.autocast():
            gaussians = model.encode(images)
            logits = model.classify(gaussians)
        rendered = model.render(gaussians, tuple(images.shape[-2:]))
        top5 = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        quality = psnr(rendered, rgb_targets(images, mean, std))
        hit1, hit5, quality = accelerator.gather_for_metrics((hits[:, 0], hits.any(1), quality))
        correct1, correct5 = correct1 + hit1.sum().item(), correct5 + hit5.sum().item()
        psnr_sum, count = psnr_sum + quality.sum().item(), count + hit1.numel()
    model.train(was_training)
    return {"top1": 100 * correct1 / count, "top5": 100 * correct5 / count, "psnr": psnr_sum / count}


def main(argv: list[str] | None = None) -> int:
    config: TrainConfig = parse_config(argv)  # validated; with --resume, the run's own config
    run_dir = Path(config.output_dir)
    if not config.resume and ((run_dir / "metrics.json").exists() or any(checkpoint_root(run_dir).glob("*"))):
        raise SystemExit(f"train_gvit.py: error: {run_dir} holds a run already: continue it with --resume latest, "
                         "or choose another --output-dir")

    # ---------------------------------------------------------------- accelerator
    if config.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise SystemExit("--report-to wandb: wandb is not installed (pip install wandb), or use tensorboard / none")
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # phases leave the encoder or the classifier without gradients
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(config.seed)

    # ---------------------------------------------------------------- data and model
    train_data, val_data, info = load_splits(config)
    model = timm.create_model(config.model, num_classes=info.num_classes, **config.model_create_kwargs())
    if config.init_from and not config.resume:  # a resumed run has its weights in the checkpoint
        count = load_model_weights(model, config.init_from)
        accelerator.print(f"model initialised from {config.init_from} ({count} tensors)")
    if config.init_encoder_from and not config.resume:
        count = load_encoder_weights(model, config.init_encoder_from)
        accelerator.print(f"encoder initialised from {config.init_encoder_from} ({count} tensors)")
    if config.compile:
        model.compile_networks()
    data_config = resolve_model_data_config(model)
    train_transform = training_transform(data_config, config.hflip)
    val_transform = create_transform(**{**data_config, "crop_pct": config.eval_crop_pct or data_config["crop_pct"]})
    dataset = lambda data, transform, seed=None: ImageClassificationDataset(  # noqa: E731
        data, info.name, config.image_column, config.label_column, info.num_classes, transform, seed, model.in_chans
    )
    # augmentation is seeded per item and epoch (the dataset's set_epoch reaches the workers, which start afresh
    # every epoch), and the loaders draw their worker seeds from their own generators: together, a resumed
    # run sees the same crops as an uninterrupted one, and the global random state is the model's alone
    train_dataset = dataset(train_data, train_transform, seed=config.seed)
    train_loader = DataLoader(train_dataset, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=config.workers,
                              generator=torch.Generator().manual_seed(config.seed))
    val_loader = DataLoader(dataset(val_data, val_transform), batch_size=config.batch_size, num_workers=config.workers,
                            generator=torch.Generator().manual_seed(config.seed))
    if len(train_loader) < config.grad_accum_steps:
        raise ValueError(f"dataset '{info.name}' has {info.train_size} training images: too few for one step of "
                         f"{config.batch_size} x {config.grad_accum_steps} per process")

    # ---------------------------------------------------------------- optimisation
    global_batch = config.batch_size * accelerator.num_processes * config.grad_accum_steps
    lr = config.base_lr * global_batch / 256
    objective = GViTObjective(model, config.pixel_loss, config.lambda_perc, config.cls_into_encoder, config.label_smoothing)
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=config.weight_decay, betas=config.betas)
    objective, optimizer, train_loader, val_loader = accelerator.prepare(objective, optimizer, train_loader, val_loader)
    model = accelerator.unwrap_model(objective).model  # the plain GViT, for eval, guidance and export
    steps_per_epoch = len(train_loader) // config.grad_accum_steps
    schedule = Schedule.from_config(config, steps_per_epoch)
    warmup_steps = round(config.warmup_epochs * (steps_per_epoch if config.phase_unit == "epochs" else 1))
    scheduler = CosineLRScheduler(optimizer, t_initial=schedule.total_steps, lr_min=config.min_lr,
                                  warmup_t=warmup_steps, warmup_lr_init=config.min_lr, t_in_epochs=False)
    ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema_decay else None
    mean = torch.tensor(data_config["mean"], device=accelerator.device)  # one value per input channel
    std = torch.tensor(data_config["std"], device=accelerator.device)
    training_state = dict(objective=accelerator.unwrap_model(objective), optimizer=optimizer, scheduler=scheduler, ema=ema)

    # the trainer's own state, all of it in every checkpoint: counters, this epoch's running loss sums, the metrics history
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "guidance_steps": 0, "skipped_steps": 0, "nonfinite_in_a_row": 0,
             "sums": {}, "counts": {}, "history": []}
    if config.resume:
        if accelerator.is_main_process:
            recover_checkpoints(run_dir)
        accelerator.wait_for_everyone()
        path = resolve_resume(run_dir, config.resume)
        state = load_checkpoint(accelerator, path, **training_state)
        accelerator.print(f"resumed from {path}: step {state['step']}, epoch {state['epoch']}, batch {state['batch_in_epoch']}")

    run_info = {
        "dataset": info.name, "class_names": info.class_names, "train_size": info.train_size, "val_size": info.val_size,
        "steps_per_epoch": steps_per_epoch, "schedule": dataclasses.asdict(schedule), "global_batch": global_batch,
        "lr": lr, "warmup_steps": warmup_steps, "mixed_precision": mixed,
    }

    def write_metrics(final: dict | None = None) -> None:
        if accelerator.is_main_process:
            record = {"epochs": state["history"], "total_steps": state["step"], "guidance_steps": state["guidance_steps"],
                      "skipped_steps": state["skipped_steps"], **({"final": final} if final is not None else {})}
            write_atomically(run_dir / "metrics.json", json.dumps(record, indent=2))

    if accelerator.is_main_process:  # only now, with data, model and checkpoint checked
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        write_atomically(run_dir / "run_info.json", json.dumps(run_info, indent=2))
        if config.resume:
            write_metrics()  # the history as the checkpoint has it
    accelerator.init_trackers("gvit", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in dataclasses.asdict(config).items()})
    accelerator.print(
        f"{config.model} on '{info.name}' ({info.train_size} train / {info.val_size} val images, {info.num_classes} classes); "
        f"batch {config.batch_size} per process x {accelerator.num_processes} processes x {config.grad_accum_steps} accumulation "
        f"= global batch {global_batch}, lr {lr:.3g}; {schedule.total_steps} steps in {schedule.epochs(steps_per_epoch)} epochs: "
        f"reconstruction {schedule.recon_steps}, classifier {schedule.classifier_steps}, joint {schedule.joint_steps} "
        f"(guidance {schedule.guidance_steps if config.gamma else 0}, gamma {config.gamma}); mixed precision {mixed}"
    )

    # ---------------------------------------------------------------- training
    phase = None
    for epoch in range(state["epoch"], schedule.epochs(steps_per_epoch)):
        train_loader.set_epoch(epoch)
        train_dataset.set_epoch(epoch)
        skip = state["batch_in_epoch"]
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        bar = tqdm(total=len(train_loader), initial=skip, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process)
        objective.train()
        seen, started = 0, time.perf_counter()
        sums, counts = state["sums"], state["counts"]  # of the losses of this epoch's finite batches
        for batch_index, (images, labels) in enumerate(loader, start=skip):
            if state["step"] >= schedule.total_steps:
                break
            step = state["step"]
            state["batch_in_epoch"] = batch_index + 1  # consumed, whether it ends in a step or not
            if schedule.phase(step) != phase:
                phase = schedule.phase(step)
                accelerator.print(f"step {step}: phase '{phase}'")
                accelerator.log({"phase": PHASES.index(phase)}, step=step)
            targets = rgb_targets(images, mean, std)
            with accelerator.accumulate(objective):
                with accelerator.autocast():
                    loss, parts = objective(images, targets, labels, phase, schedule.dssim_on(step))
                finite = accelerator.gather(torch.isfinite(loss.detach())[None]).all()
                if finite:
                    accelerator.backward(loss)
                    if config.clip_grad is not None and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(objective.parameters(), config.clip_grad)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not finite:
                state["skipped_steps"] += 1
                state["nonfinite_in_a_row"] += 1
                accelerator.print(f"step {step}: non-finite loss, step skipped ({state['nonfinite_in_a_row']} in a row)")
                if state["nonfinite_in_a_row"] >= config.max_nonfinite:
                    raise RuntimeError(f"{state['nonfinite_in_a_row']} non-finite losses in a row (last at step {step}, phase '{phase}'); "
                                       "lower the learning rate or gamma, or resume from an earlier checkpoint")
                continue
            state["nonfinite_in_a_row"] = 0
            seen += images.shape[0] * accelerator.num_processes
            for key, value in parts.items():
                sums[key], counts[key] = sums.get(key, 0.0) + value.item(), counts.get(key, 0) + 1
            if not accelerator.sync_gradients:
                continue
            state["step"] = step = step + 1
            scheduler.step_update(step)
            if ema is not None:
                ema.update(model, step=step)
            if schedule.guidance_due(step - 1):
                guided = guidance_step(model, optimizer, images, targets, labels, gamma=config.gamma, pixel_loss=config.pixel_loss,
                                       lambda_perc=config.lambda_perc, with_dssim=schedule.dssim_on(step - 1), accelerator=accelerator)
                state["guidance_steps" if guided else "skipped_steps"] += 1
                accelerator.log(guided, step=step)
            current_lr = optimizer.param_groups[0]["lr"]
            rate = seen / (time.perf_counter() - started)
            bar.update(config.grad_accum_steps)
            bar.set_postfix(phase=phase, loss=f"{loss.item():.4f}", lr=f"{current_lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
            if step % config.log_every == 0:
                accelerator.log({**{k: v.item() for k, v in parts.items()}, "lr": current_lr, "images_per_s": rate,
                                 "guidance_steps": state["guidance_steps"]}, step=step)
            if step % config.image_every == 0 and accelerator.is_main_process:
                with torch.no_grad():
                    gaussians = model.encode(images[:4])
                    save_reconstruction_grid(targets[:4], model.render(gaussians, tuple(images.shape[-2:])), gaussians,
                                             run_dir / "figures" / f"step-{step:08d}.png")
            if step % config.checkpoint_every == 0:
                save_checkpoint(accelerator, run_dir, state, config.keep_checkpoints, **training_state)
        bar.close()
        last_epoch = state["step"] >= schedule.total_steps
        epoch_record = {"epoch": epoch, "step": state["step"], "phase": schedule.phase(max(state["step"] - 1, 0)),
                        **{k if k.startswith("train") else f"train_{k}": sums[k] / counts[k] for k in sums}}
        if last_epoch or (epoch + 1) % config.eval_every == 0:
            results = evaluate(ema.module if ema is not None else model, val_loader, accelerator, mean, std)
            epoch_record.update(results)
            accelerator.print(f"epoch {epoch}: top-1 {results['top1']:.2f}%, top-5 {results['top5']:.2f}%, PSNR {results['psnr']:.2f} dB")
            accelerator.log({f"val/{k}": v for k, v in results.items()}, step=state["step"])
        state["history"].append(epoch_record)
        state.update(epoch=epoch + 1, batch_in_epoch=0, sums={}, counts={})
        save_checkpoint(accelerator, run_dir, state, config.keep_checkpoints, **training_state)  # holds the history too
        pause_point("before-metrics")
        write_metrics()
        if last_epoch:
            break

    # ---------------------------------------------------------------- results and export
    history = state["history"]
    final = history[-1] if history and "top1" in history[-1] else evaluate(ema.module if ema is not None else model, val_loader, accelerator, mean, std)
    write_metrics(final)
    accelerator.end_training()
    status = 0
    if accelerator.is_main_process:
        export_dir = run_dir / "export"
        run = {"config": {**dataclasses.asdict(config), "betas": list(config.betas)}, **run_info, "metrics": final}
        export_model(ema.module if ema is not None else model, export_dir, run=run, repo_name=config.hub_model_id)
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
