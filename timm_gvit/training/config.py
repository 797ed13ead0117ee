"""The trainer's configuration: one dataclass, command-line flags generated from it, an optional
YAML file, and the built-in default run.

Precedence, lowest first: the dataclass defaults (the paper's recipe, gvit-method.md section 6),
the built-in preset (only when no dataset is given), the YAML file (``--config``), the flags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def _opt(default, help: str, **kwargs):
    if default is dict:  # a fresh dict per config
        return field(default_factory=dict, metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    # data
    dataset: str | None = _opt(None, "Hugging Face Hub dataset id, a local imagefolder directory (class sub-folders), or a save_to_disk folder; default: the built-in run on scikit-learn's 8x8 digits", type=str)
    train_split: str = _opt("train", "split to train on")
    val_split: str | None = _opt(None, "split to validate on (default: the first of validation/val/test that exists, else --val-fraction of the training split)", type=str)
    val_fraction: float = _opt(0.1, "fraction of the training split held out for validation when there is no validation split")
    image_column: str = _opt("image", "dataset column holding the images")
    label_column: str = _opt("label", "dataset column holding integer class labels")
    max_train_samples: int | None = _opt(None, "use only a random (seeded) subset of N training items (quick runs)", type=int)
    max_val_samples: int | None = _opt(None, "use only a random (seeded) subset of N validation items", type=int)
    workers: int = _opt(2, "data-loading worker processes per training process")
    hflip: float = _opt(0.5, "probability of a horizontal flip in training (the paper's only augmentation besides random-resized-crop scale 0.5-1)")
    eval_crop_pct: float | None = _opt(None, "centre-crop fraction for validation (default: the model's, 0.9)", type=float)
    # model
    model: str = _opt("gvit_tiny", "timm model name (gvit_tiny, gvit_small, gvit_base)")
    img_size: int | None = _opt(None, "training resolution in pixels (default: the model's, 224)", type=int)
    patch_size: int | None = _opt(None, "encoder patch size (default: the model's, 16)", type=int)
    num_gaussians: int | None = _opt(None, "Gaussians per image, k (default: the model's, 256)", type=int)
    model_kwargs: dict = _opt(dict, "further create_model kwargs as KEY=VALUE, e.g. scale_bound=0.75 gaussian_init=queries", nargs="*", metavar="KEY=VALUE")
    init_encoder_from: str | None = _opt(None, "start the encoder from another run's export folder, .safetensors/.pth file or checkpoint (the paper starts GViT-B from GViT-S's encoder)", type=str)
    # schedule: phase lengths in --phase-unit
    phase_unit: str = _opt("epochs", "unit of the phase lengths below", choices=("epochs", "steps"))
    recon_epochs: float = _opt(200.0, "phase 1: reconstruction warm-up, encoder only")
    dssim_from: float = _opt(150.0, "D-SSIM joins the pixel loss from this point on (paper: epoch 150)")
    classifier_epochs: float = _opt(50.0, "phase 2: classifier pre-training, encoder frozen")
    joint_epochs: float = _opt(150.0, "phase 3: joint training of encoder and classifier")
    guidance_epochs: float = _opt(50.0, "gradient guidance during the last part of phase 3")
    guidance_every: int = _opt(10, "a guidance step after every N-th joint step")
    gamma: float = _opt(0.1, "guidance weight gamma: encoder steps with grad(L_rec) + gamma * grad(L_cls); 0 = no guidance")
    pixel_loss: str = _opt("bce", "pixel reconstruction loss", choices=("bce", "mse"))
    lambda_perc: float = _opt(0.1, "weight of the D-SSIM loss once it is on")
    cls_into_encoder: float = _opt(0.0, "weight of the classification loss in the encoder's normal joint steps (0: Gaussians are detached before the classifier; > 0 is the end-to-end variant)")
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing")
    # optimisation
    batch_size: int = _opt(256, "images per process per step")
    grad_accum_steps: int = _opt(1, "gradient accumulation steps")
    base_lr: float = _opt(1e-4, "learning rate for a global batch of 256; lr = base_lr * global_batch / 256")
    min_lr: float = _opt(1e-6, "final learning rate of the cosine schedule")
    warmup_epochs: float = _opt(10.0, "linear learning-rate warm-up, in --phase-unit")
    weight_decay: float = _opt(0.05, "AdamW weight decay (none on norms, biases, position embeddings)")
    betas: tuple = _opt((0.9, 0.95), "AdamW betas", nargs=2, type=float)
    mixed_precision: str = _opt("auto", "auto (bf16 on GPUs that have it, else none), no, bf16 or fp16", choices=("auto", "no", "bf16", "fp16"))
    compile: bool = _opt(False, "torch.compile the encoder and the classifier (the renderer stays eager), as timm's train.py --torchcompile")
    ema_decay: float | None = _opt(None, "keep an EMA of the weights (timm ModelEmaV3) with this decay; evaluation and export then use it", type=float)
    max_nonfinite: int = _opt(20, "stop when this many consecutive steps have non-finite losses (each one is skipped)")
    seed: int = _opt(0, "random seed (data order, augmentation, initial Gaussians)")
    # output
    output_dir: str = _opt("runs/gvit", "run folder: config, checkpoints, metrics, figures, export")
    checkpoint_every: int = _opt(500, "save a checkpoint every N optimiser steps (and at the end of every epoch)")
    keep_checkpoints: int = _opt(2, "how many checkpoints to keep")
    resume: str | None = _opt(None, "'latest' or a checkpoint folder to continue from", type=str)
    eval_every: int = _opt(1, "validate after every N-th epoch (and always after the last)")
    log_every: int = _opt(20, "log losses to the trackers every N steps")
    image_every: int = _opt(500, "write a PNG of originals, reconstructions and ellipses every N steps")
    report_to: str = _opt("tensorboard", "experiment tracker", choices=("tensorboard", "wandb", "none"))
    push_to_hub: bool = _opt(False, "upload the export folder to the Hugging Face Hub at the end")
    hub_model_id: str | None = _opt(None, "Hub repository ORG/NAME for --push-to-hub", type=str)
    hub_private: bool = _opt(False, "create the Hub repository as private")

    def model_create_kwargs(self) -> dict:
        """kwargs for ``timm.create_model`` beyond the model name and class count."""
        kwargs = {k: v for k, v in (("img_size", self.img_size), ("patch_size", self.patch_size), ("num_gaussians", self.num_gaussians)) if v is not None}
        return {**kwargs, **self.model_kwargs}


#: The built-in run: gvit_tiny on scikit-learn's digits, a few minutes on a 2-core CPU.
DIGITS_PRESET = dict(
    img_size=16,  # the digits are 8x8 scans: more pixels would add no information
    patch_size=4,
    num_gaussians=16,
    recon_epochs=3.0,
    dssim_from=2.0,
    classifier_epochs=4.0,
    joint_epochs=5.0,
    guidance_epochs=2.0,
    batch_size=32,
    base_lr=2.4e-3,  # lr 3e-4 at batch 32; 1e-3 and above do not train from scratch here
    warmup_epochs=1.0,
    workers=0,
    hflip=0.0,  # digits are not mirror-symmetric
    eval_crop_pct=1.0,
    checkpoint_every=200,
    image_every=200,
    output_dir="runs/gvit-digits",
)


def _parse_kwargs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--model-kwargs: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_gvit.py",
        description="Train a GViT model with the paper's three-phase schedule (reconstruction warm-up, "
        "classifier pre-training, joint training with classifier-gradient guidance). Run with "
        "`accelerate launch train_gvit.py ...` for several GPUs or `python train_gvit.py ...`. With no "
        "--dataset it trains gvit_tiny on scikit-learn's digits in a few minutes on a CPU.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML file of options (keys as the flags, with underscores); flags override it")
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta["help"] = f"{meta['help']} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **meta)
        elif f.name == "model_kwargs":
            parser.add_argument(flag, **meta)
        else:
            kind = meta.pop("type", None) or type(default)
            parser.add_argument(flag, type=kind, **meta)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Flags (and the YAML file they name) -> the resolved :class:`TrainConfig`."""
    args = vars(build_parser().parse_args(argv))
    from_file = {}
    if "config" in args:
        path = Path(args.pop("config"))
        if not path.is_file():
            raise SystemExit(f"--config: no such file: {path}")
        from_file = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = set(from_file) - known
        if unknown:
            raise SystemExit(f"--config {path}: unknown option(s) {sorted(unknown)}")
    if "model_kwargs" in args:
        args["model_kwargs"] = _parse_kwargs(args["model_kwargs"])
    chosen = {**from_file, **args}
    preset = DIGITS_PRESET if chosen.get("dataset") is None else {}
    values = {**preset, **chosen}
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return TrainConfig(**values)


def save_config(config: TrainConfig, path: str | Path) -> None:
    data = dataclasses.asdict(config)
    data["betas"] = list(data["betas"])
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
