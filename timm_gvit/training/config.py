"""The trainer's configuration: one dataclass, command-line flags generated from it, an optional
YAML file, and the built-in default run.

Precedence, lowest first: the dataclass defaults (the paper's recipe, gvit-method.md section 6),
the built-in preset (only when no dataset is given), the YAML file (``--config``), the flags.
With ``--resume``, the run's saved ``config.yaml`` takes the place of the defaults and the preset,
and the file and the flags may change only the options in ``CHANGEABLE_ON_RESUME``.

Values from a YAML file are checked like the flags' (types, choices), and every value is range
checked (:func:`validate`) before any data is loaded; errors exit with a message.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import re
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
    max_train_samples: int | None = _opt(None, "use only a random (seeded) subset of N >= 1 training items (quick runs)", type=int)
    max_val_samples: int | None = _opt(None, "use only a random (seeded) subset of N >= 1 validation items", type=int)
    workers: int = _opt(2, "data-loading worker processes per training process")
    streaming: bool = _opt(False, "read the dataset as a stream (datasets' IterableDataset): Hub datasets and tar shards without converting them first, any other dataset as a seeded permutation of its items; resumable (README: what is exact)")
    shuffle_buffer: int = _opt(1000, "with --streaming, items each loader worker shuffles through (tar shards and Hub streams; other sources are permuted whole)")
    hflip: float = _opt(0.5, "probability of a horizontal flip in training (the paper's only augmentation besides random-resized-crop scale 0.5-1)")
    skip_bad_images: int | None = _opt(None, "read every image of both splits before training and skip up to N unreadable ones (each logged, counted in metrics.json; a training image's place goes to the next readable one); default: no pre-check, an unreadable image is skipped where training or validation meets it (see --max-bad-images)", type=int)
    max_bad_images: float = _opt(0.001, "how many unreadable images a run skips before it stops: a count (>= 1), or a fraction of the training images (< 1); each skipped image is logged and listed under bad_images in metrics.json, its place in training taken by the next readable one")
    decode_on_device: bool = _opt(False, "decode training JPEGs on the GPU (nvJPEG through torchvision), with the crops and flips the CPU path draws; loader workers only read the files (docs/data.md); not with --streaming")
    decode_reduced: bool = _opt(True, "decode JPEGs at 1/2, 1/4 or 1/8 size (PIL's draft: the DCT's own downscaling, several times faster) where the crop still gets at least the training resolution from it")
    eval_crop_pct: float | None = _opt(None, "centre-crop fraction for validation (default: the model's, 0.9)", type=float)
    # model
    model: str = _opt("gvit_tiny", "timm model name (gvit_tiny, gvit_small, gvit_base)")
    img_size: int | None = _opt(None, "training resolution in pixels (default: the model's, 224)", type=int)
    patch_size: int | None = _opt(None, "encoder patch size (default: the model's, 16)", type=int)
    num_gaussians: int | None = _opt(None, "Gaussians per image, k (default: the model's, 256)", type=int)
    model_kwargs: dict = _opt(dict, "further create_model kwargs as KEY=VALUE, e.g. scale_bound=0.75 gaussian_init=queries", nargs="*", metavar="KEY=VALUE")
    init_from: str | None = _opt(None, "start the whole model (encoder and classifier) from another run's export folder, .safetensors/.pth file or checkpoint, e.g. to run joint-phase variants from one classifier-phase run", type=str)
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
    clip_grad: float | None = _opt(None, "clip the global gradient norm of each step to this value (the paper: no clipping)", type=float)
    mixed_precision: str = _opt("auto", "auto (bf16 on GPUs that have it, else none), no, bf16 or fp16", choices=("auto", "no", "bf16", "fp16"))
    compile: bool = _opt(False, "torch.compile the step's regions (encoder and Gaussian decode, classifier and cross-entropy, reconstruction losses; the rasteriser stays eager), as timm's train.py --torchcompile")
    ema_decay: float | None = _opt(None, "keep an EMA of the weights (timm ModelEmaV3) with this decay; evaluation and export then use it", type=float)
    max_nonfinite: int = _opt(20, "stop when this many consecutive steps have non-finite losses (each one is skipped on the device; checked at every --log-every)")
    seed: int = _opt(0, "random seed (data order, augmentation, initial Gaussians)")
    # output
    output_dir: str = _opt("runs/gvit", "run folder: config, checkpoints, metrics, figures, export")
    checkpoint_every: int = _opt(500, "save a checkpoint every N optimiser steps (and at the end of every epoch)")
    keep_checkpoints: int = _opt(2, "how many checkpoints to keep (0: all)")
    resume: str | None = _opt(None, "'latest' (the newest complete checkpoint) or a checkpoint folder to continue from; the run's saved config.yaml gives every option that the command line does not change safely", type=str)
    eval_every: int = _opt(1, "validate after every N-th epoch (and always after the last)")
    log_every: int = _opt(20, "log losses to the trackers every N steps")
    image_every: int = _opt(500, "write a PNG of originals, reconstructions and ellipses every N steps")
    report_to: str = _opt("tensorboard", "experiment tracker", choices=("tensorboard", "wandb", "none"))
    push_to_hub: bool = _opt(False, "upload the export folder to the Hugging Face Hub at the end")
    hub_model_id: str | None = _opt(None, "Hub repository ORG/NAME for --push-to-hub", type=str)
    hub_private: bool = _opt(False, "create the Hub repository as private")
    license: str | None = _opt(None, "licence of the exported weights, as a Hub licence id (e.g. apache-2.0, mit, cc-by-4.0, other); default: none stated, since the choice is the data owner's and yours", type=str)

    def model_create_kwargs(self) -> dict:
        """kwargs for ``timm.create_model`` beyond the model name and class count."""
        kwargs = {k: v for k, v in (("img_size", self.img_size), ("patch_size", self.patch_size), ("num_gaussians", self.num_gaussians)) if v is not None}
        return {**kwargs, **self.model_kwargs}


#: The built-in run: gvit_nano on scikit-learn's digits, under 3 minutes on a 2-core CPU.
DIGITS_PRESET = dict(
    model="gvit_nano",  # 128 wide, 6 deep: gvit_tiny (192 x 12) took 9 minutes for 59% here
    img_size=16,  # the digits are 8x8 scans: more pixels would add no information
    patch_size=4,
    num_gaussians=16,
    recon_epochs=3.0,
    dssim_from=2.0,
    classifier_epochs=5.0,  # the classifier, a ViT from scratch on 1,617 images, needs the most epochs
    joint_epochs=4.0,  # 2 left the classifier behind the still-changing encoder (95% -> 88%)
    guidance_epochs=1.0,
    batch_size=32,
    base_lr=8e-3,  # lr 1e-3 at batch 32 (3e-4 left the encoder at 14 dB and the classifier at 59%)
    clip_grad=1.0,
    warmup_epochs=0.5,
    workers=0,
    hflip=0.0,  # digits are not mirror-symmetric
    eval_crop_pct=1.0,
    checkpoint_every=200,
    image_every=200,
    output_dir="runs/gvit-digits",
)


#: Options that --resume lets the command line change: they do not touch the schedule, the data
#: or the model. Every other option must match the run's config.yaml.
CHANGEABLE_ON_RESUME = (
    "output_dir", "resume", "workers", "mixed_precision", "max_nonfinite", "checkpoint_every", "keep_checkpoints",
    "eval_every", "log_every", "image_every", "report_to", "push_to_hub", "hub_model_id", "hub_private", "license",
    "compile",  # issue 11's torch.compile switch, where present
    "decode_on_device",  # the same crops and flips, decoded elsewhere
    "skip_bad_images", "max_bad_images",  # the way past unreadable images that stop every resume
)

#: options that may name a local file or folder: a resumed run may reach it by another path (a symlink, a worktree)
PATH_OPTIONS = ("dataset", "init_from", "init_encoder_from")


#: create_model kwargs that the trainer sets itself, and the option that does it instead.
TRAINER_OWNED_KWARGS = {
    "num_classes": "the dataset's labels set the class count",
    **dict.fromkeys(("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "pretrained_strict", "cache_dir"),
                    "the trainer builds a new model; start from trained weights with --init-from or --init-encoder-from"),
    **dict.fromkeys(("features_only", "out_indices", "scriptable", "exportable", "no_jit"), "the trainer needs the plain classifier"),
}


def parse_kwargs(items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> kwargs, each value a Python literal (``False``, ``0.75``, ``(2, 2)``)
    or else the string; a ``ValueError`` for an item without ``=``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-kwargs: expected KEY=VALUE, got {item!r}")
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
        "--dataset it trains gvit_nano on scikit-learn's digits in under 3 minutes on a 2-core CPU.",
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


class Refusal(SystemExit, ValueError):
    """The trainer refuses to start (or resume): exit status 2, and one line that says why
    (``str()``), which the command prints on stderr. A ``ValueError`` too, for callers that
    catch bad input as such."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _fail(message: str):
    raise Refusal(f"train_gvit.py: error: {message}")


def _check_value(f: dataclasses.Field, value, where: str):
    """A YAML value for field ``f``, checked and converted as its flag would be; exits on a bad one."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = type(default) if default is not None else f.metadata["type"]
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                tuple: "a list of two numbers", dict: "a mapping of names to values"}[kind]

    def bad():
        _fail(f"{where}: {f.name} must be {expected}, got {value!r}")

    def number(v, as_type):
        if isinstance(v, str):  # as the flag parses it; YAML reads 1e-3 as a string
            try:
                return as_type(v)
            except ValueError:
                bad()
        if isinstance(v, bool) or not isinstance(v, int if as_type is int else (int, float)):
            bad()
        return as_type(v)

    if value is None:
        if default is not None:
            _fail(f"{where}: {f.name} cannot be empty (null)")
        return None
    if kind is bool:
        value = value if isinstance(value, bool) else bad()
    elif kind is dict:
        value = dict(value) if isinstance(value, dict) and all(isinstance(k, str) for k in value) else bad()
    elif kind is tuple:
        value = tuple(number(v, float) for v in value) if isinstance(value, (list, tuple)) and len(value) == len(default) else bad()
    elif kind in (int, float):
        value = number(value, kind)
    elif not isinstance(value, str):
        bad()
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        _fail(f"{where}: {f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
    return value


def read_config_file(path: str | Path, what: str = "--config") -> dict:
    """The options in a YAML file, each checked like its flag; exits with a message naming the file."""
    path = Path(path)
    if not path.is_file():
        _fail(f"{what}: no such file: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        _fail(f"{what} {path}: not valid YAML: {exc}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        _fail(f"{what} {path}: expected a mapping of option names to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - set(fields)
    if unknown:
        _fail(f"{what} {path}: unknown option(s) {sorted(unknown)}")
    return {key: _check_value(fields[key], value, f"{what} {path}") for key, value in data.items()}


def validate(config: TrainConfig) -> TrainConfig:
    """Range checks of every numeric option and the model name; exits with a message on the first bad one."""
    import timm

    import timm_gvit  # noqa: F401  (registers the models)

    def check(name: str, ok: bool, rule: str):
        if not ok:
            _fail(f"--{name.replace('_', '-')} must be {rule}, got {getattr(config, name)}")

    for name in ("batch_size", "grad_accum_steps", "guidance_every", "max_nonfinite", "checkpoint_every", "eval_every", "log_every", "image_every"):
        check(name, getattr(config, name) >= 1, ">= 1")
    for name in ("max_train_samples", "max_val_samples", "img_size", "patch_size", "num_gaussians"):
        check(name, getattr(config, name) is None or getattr(config, name) >= 1, ">= 1 (or left out)")
    check("skip_bad_images", config.skip_bad_images is None or config.skip_bad_images >= 0, ">= 0 (or left out)")
    check("max_bad_images", config.max_bad_images >= 0 and (config.max_bad_images < 1 or float(config.max_bad_images).is_integer()),
          "a count (a whole number >= 1), a fraction of the training images (< 1), or 0")
    for name in ("workers", "shuffle_buffer", "keep_checkpoints", "seed", "recon_epochs", "dssim_from", "classifier_epochs", "joint_epochs",
                 "guidance_epochs", "gamma", "lambda_perc", "cls_into_encoder", "min_lr", "warmup_epochs", "weight_decay"):
        check(name, getattr(config, name) >= 0, ">= 0")
    check("base_lr", config.base_lr > 0, "> 0")
    check("val_fraction", 0 < config.val_fraction < 1, "between 0 and 1")
    check("hflip", 0 <= config.hflip <= 1, "between 0 and 1")
    check("label_smoothing", 0 <= config.label_smoothing < 1, "in [0, 1)")
    check("eval_crop_pct", config.eval_crop_pct is None or 0 < config.eval_crop_pct <= 1, "in (0, 1]")
    check("ema_decay", config.ema_decay is None or 0 < config.ema_decay < 1, "in (0, 1)")
    check("clip_grad", config.clip_grad is None or config.clip_grad > 0, "> 0 (or left out)")
    check("betas", all(0 <= b < 1 for b in config.betas), "two numbers in [0, 1)")
    check("guidance_epochs", config.guidance_epochs <= config.joint_epochs, f"<= --joint-epochs ({config.joint_epochs})")
    check("joint_epochs", config.recon_epochs + config.classifier_epochs + config.joint_epochs > 0,
          "> 0 if --recon-epochs and --classifier-epochs are 0 (the schedule has no steps)")
    if config.streaming and config.decode_on_device:
        _fail("--decode-on-device reads a map-style dataset: leave out --streaming, or decode on the CPU")
    if config.streaming and config.skip_bad_images is not None:
        _fail("--skip-bad-images reads every image before training, which a stream does not allow: leave it out (a stream skips "
              "unreadable images where it meets them, up to --max-bad-images)")
    for key in config.model_kwargs:
        if key in TRAINER_OWNED_KWARGS:
            _fail(f"--model-kwargs {key}: not a model option here: {TRAINER_OWNED_KWARGS[key]}")
    if config.license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", config.license):
        _fail(f"--license must be a Hub licence id such as apache-2.0, mit or other, got {config.license!r}")
    if config.push_to_hub and (not config.hub_model_id or config.hub_model_id.count("/") != 1):
        _fail(f"--push-to-hub needs --hub-model-id ORG/NAME, got {config.hub_model_id!r}")
    if config.model.startswith(("local-dir:", "hf-hub:")):
        _fail(f"--model {config.model}: the trainer builds a new model from an architecture name (e.g. gvit_tiny) "
              f"and does not load weights; to start from a trained model's encoder use --model ARCH "
              f"--init-encoder-from {config.model.split(':', 1)[1]}")
    if not timm.is_model(config.model):
        _fail(f"--model {config.model}: no such timm model; GViT models: {', '.join(timm.list_models('gvit_*'))}")
    return config


def _same_option(key: str, new, saved) -> bool:
    """Whether option ``key`` keeps the run's value: equal, or (for a path option) naming the same existing file."""
    if new == saved:
        return True
    if key in PATH_OPTIONS and isinstance(new, str) and isinstance(saved, str):
        return os.path.exists(new) and os.path.exists(saved) and os.path.samefile(new, saved)
    return False


def _resume_config(explicit: dict) -> TrainConfig:
    """The config of the run that ``--resume`` continues, with the changes ``explicit`` may make."""
    resume = explicit["resume"]
    if resume != "latest" and Path(resume).parent.name == "checkpoints":
        run_dir = Path(resume).parent.parent
    else:
        preset = DIGITS_PRESET if explicit.get("dataset") is None else {}
        run_dir = Path(explicit.get("output_dir") or preset.get("output_dir") or TrainConfig.output_dir)
    saved = read_config_file(run_dir / "config.yaml", what="--resume")
    changed = {k: v for k, v in explicit.items()
               if k not in CHANGEABLE_ON_RESUME and k in saved and not _same_option(k, v, saved[k])}
    if changed:
        listed = ", ".join(f"--{k.replace('_', '-')} {v} (the run has {saved[k]})" for k, v in changed.items())
        _fail(f"--resume: {listed}. These options fix the run's data, schedule or model and cannot change in the "
              f"middle of it (its options are in {run_dir / 'config.yaml'}); leave them out to continue the run, "
              "or start a new run with another --output-dir.")
    return validate(TrainConfig(**{**saved, "output_dir": str(run_dir), **explicit}))


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Flags (and the YAML file they name) -> the resolved, validated :class:`TrainConfig`."""
    args = vars(build_parser().parse_args(argv))
    explicit = read_config_file(args.pop("config")) if "config" in args else {}
    if "model_kwargs" in args:
        try:
            args["model_kwargs"] = parse_kwargs(args["model_kwargs"])
        except ValueError as exc:
            _fail(str(exc))
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    explicit.update(args)
    if explicit.get("resume"):
        return _resume_config(explicit)
    preset = DIGITS_PRESET if explicit.get("dataset") is None else {}
    return validate(TrainConfig(**{**preset, **explicit}))


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run saved in ``RUN/config.yaml``."""
    return TrainConfig(**read_config_file(Path(run_dir) / "config.yaml", what="run config"))


def save_config(config: TrainConfig, path: str | Path) -> None:
    from .checkpoints import write_atomically

    data = dataclasses.asdict(config)
    data["betas"] = list(data["betas"])
    write_atomically(path, yaml.safe_dump(data, sort_keys=False))
