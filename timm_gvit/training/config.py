"""The trainer's configuration: one dataclass, command-line flags generated from it, an optional
YAML file, and the built-in default run.

Precedence, lowest first: the dataclass defaults (the paper's recipe, docs/method.md section 6),
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
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .budgets import BUDGET_SAMPLINGS, GUIDANCE_BUDGETS, MAX_BUDGETS_EVERY_STEP, eval_budgets, parse_budget_weights, parse_budgets


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
    max_train_samples: int | None = _opt(None, "use only a random (seeded) subset of N >= 1 training items (quick runs; default: all)", type=int)
    max_val_samples: int | None = _opt(None, "use only a random (seeded) subset of N >= 1 validation items (default: all)", type=int)
    workers: int = _opt(2, "data-loading worker processes per training process")
    streaming: bool = _opt(False, "read the dataset as a stream (datasets' IterableDataset): Hub datasets and tar shards without converting them first, any other dataset as a seeded permutation of its items; resumable (docs/data.md says what is exact)")
    shuffle_buffer: int = _opt(1000, "with --streaming, items each loader worker shuffles through (tar shards and Hub streams; other sources are permuted whole)")
    hflip: float = _opt(0.5, "probability of a horizontal flip in training (the paper's only augmentation besides random-resized-crop scale 0.5-1)")
    skip_bad_images: int | None = _opt(None, "read every image of both splits before training and skip up to N unreadable ones (each logged, counted in metrics.json; a training image's place goes to the next readable one); default: no pre-check, an unreadable image is skipped where training or validation meets it (see --max-bad-images)", type=int)
    max_bad_images: float = _opt(0.001, "how many unreadable images a run skips before it stops: a count (>= 1), or a fraction of the training images (< 1); each skipped image is logged and listed under bad_images in metrics.json, its place in training taken by the next readable one")
    decode_on_device: bool = _opt(False, "decode training JPEGs on the GPU (nvJPEG through torchvision), with the crops and flips the CPU path draws; loader workers only read the files (docs/data.md); not with --streaming")
    decode_reduced: bool = _opt(True, "decode JPEGs at 1/2, 1/4 or 1/8 size (PIL's draft: the DCT's own downscaling, several times faster) where the crop still gets at least the training resolution from it")
    eval_crop_pct: float | None = _opt(None, "centre-crop fraction for validation (default: the model's, 0.9)", type=float)
    # model
    model: str = _opt("gvit_tiny", "the GViT model to train (a timm model name)")
    img_size: int | None = _opt(None, "training resolution in pixels (default: the model's, 224)", type=int)
    patch_size: int | None = _opt(None, "encoder patch size (default: the model's: 16, gvit_nano's 8)", type=int)
    num_gaussians: int | None = _opt(None, "Gaussians per image, k (default: the model's: 256, gvit_nano's 64; with --budgets the largest budget)", type=int)
    budgets: str | None = _opt(None, "train one flex model for several Gaussian budgets: a list (8,16,32,64) or a range (8-64: every k from 8 to 64, for --budget-sampling linear or uniform); each step trains the encoder and the classifier at the budgets --budget-sampling says, validation reports each budget, and the model serves any k from the smallest to the largest (docs/flex.md; default: one k, --num-gaussians)", type=str)
    budget_sampling: str = _opt("all", "with --budgets, which budgets a step trains: all (every budget every step, the loss their mean, as Matryoshka representations train: on Imagenette 3.5 to 8 points of top-1 better at each k than linear, for 1.3x (phase 1) and 1.6x (classifier phase) the CPU time), linear (one drawn per step, a budget's chance proportional to its k) or uniform (one per step, each equally often) (docs/flex.md)", choices=BUDGET_SAMPLINGS)
    guidance_budgets: str | None = _opt(None, "with --budgets, the budgets a guidance step guides the encoder at: drawn (one per guidance step, drawn as --budget-sampling draws; with all, in proportion to k, so that k = 64 of 8,16,32,64 is guided on about half of them), largest (the largest budget on every guidance step) or all (every budget, the step's loss their mean; about 1.9x a guidance step's compute at 8,16,32,64); on Imagenette, after the flex tag's 400-step dose, all was 1.4 to 3.8 points of top-1 ahead of drawn at every k, for the same wall time on the CPU (docs/flex.md; default: the budgets the normal steps train, all under --budget-sampling all, drawn under linear or uniform)", type=str, choices=GUIDANCE_BUDGETS)
    budget_weights: str = _opt("equal", "with --budgets and --budget-sampling all, how each budget's loss counts in the step's loss: equal (their mean, as Matryoshka representations train), sqrt or linear (in proportion to sqrt(k) or to k, normalised to sum to 1: 8,16,32,64 linear is 1/15, 2/15, 4/15, 8/15), which moves the shared weights' effort towards the larger budgets, inverse-sqrt or inverse (1/sqrt(k), 1/k: towards the smaller ones); or two, RECONSTRUCTION,CLASSIFICATION, each for its own loss (linear,equal: the reconstruction loss in proportion to k in every phase, the classification loss the mean); guidance steps keep the mean. On Imagenette, linear in phase 1 only (the classifier phase unweighted) left the flex model 0.9-1.6 points of top-1 behind fixed-k models (two runs; unweighted, 1.9-3.3 over three); linear in the classifier phase lost 4.1 points at k = 8 for 1.6 at 64 (docs/flex.md)", type=str, metavar="SCHEME[,SCHEME]")
    budget_distill: float = _opt(0.0, "with --budgets and --budget-sampling all, in-place distillation in the classifier and joint phases: the largest budget is classified first and each smaller budget's classification loss is (1 - W) * cross-entropy + W * KL from the largest budget's predictions (detached), as slimmable networks train their narrow widths; 0 is cross-entropy alone. On Imagenette's 8-epoch classifier phase, trained from scratch, W = 0.5 cost 0.7 to 2.4 points of top-1 and W = 1 6.7 to 10 (docs/flex.md)", type=float, metavar="W")
    distill_from: str | None = _opt(None, "knowledge distillation in the classifier and joint phases, as FlexiViT trains: a trained classifier, as timm.create_model(MODEL, pretrained=True) loads it (a tag such as gvit_nano.imagenette_64_v2, local-dir:FOLDER or hf-hub:ORG/NAME), with the model's input size, mean and std and the dataset's classes in its order; each budget's classification loss becomes (1 - W) * cross-entropy + W * KL from the teacher's predictions on the same images, W = --distill-weight. It costs a forward of the teacher per step (default: none, the labels alone)", type=str, metavar="MODEL")
    distill_weight: float = _opt(0.5, "with --distill-from, W above: the weight of the teacher's term, in (0, 1]")
    eval_budgets: str | None = _opt(None, "with --budgets, the budgets validation reports (top1@k, psnr@k, prefix_psnr@k; a validation pass each): a list or a range within --budgets (default: every budget when there are at most 8, else 8 of them spread evenly in log k, the smallest and the largest included)", type=str)
    prefix_loss: bool = _opt(False, "with --budgets, each step also reconstructs the image from a shorter budget's prefix of its Gaussians (the mean of the two losses), so that every prefix of one encoding renders a coarse image (the level of detail); give it with --model-kwargs render_order=last_in_front, so that later Gaussians refine the prefix instead of hiding behind it: on Imagenette the first 8 of 64 then render at 16.3 dB instead of 7.4 and the full 64 at 18.6 instead of 19.5, where the paper's order left the full 64 at 16.5 (docs/flex.md)")
    model_kwargs: dict = _opt(dict, "further create_model kwargs as KEY=VALUE, e.g. scale_bound=0.75 gaussian_init=queries", nargs="*", metavar="KEY=VALUE")
    init_from: str | None = _opt(None, "start the whole model (encoder and classifier) from another run's export folder, .safetensors/.pth file or checkpoint, e.g. to run joint-phase variants from one classifier-phase run (default: a random initialisation)", type=str)
    init_encoder_from: str | None = _opt(None, "start the encoder from another run's export folder, .safetensors/.pth file or checkpoint (the paper starts GViT-B from GViT-S's encoder; default: a random initialisation)", type=str)
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
    clip_grad: float | None = _opt(None, "clip the global gradient norm of each step to this value (default: no clipping, as the paper)", type=float)
    mixed_precision: str = _opt("auto", "auto (bf16 on GPUs that have it, else none), no, bf16 or fp16", choices=("auto", "no", "bf16", "fp16"))
    compile: bool = _opt(False, "torch.compile the step's regions (encoder and Gaussian decode, classifier and cross-entropy, reconstruction losses; the rasteriser stays eager), as timm's train.py --torchcompile")
    ema_decay: float | None = _opt(None, "keep an EMA of the weights (timm ModelEmaV3) with this decay; evaluation and export then use it (default: no EMA)", type=float)
    max_nonfinite: int = _opt(20, "stop when this many consecutive steps have non-finite losses (each one is skipped on the device; checked at every --log-every)")
    seed: int = _opt(0, "random seed (data order, augmentation, initial Gaussians)")
    # output
    output_dir: str = _opt("runs/gvit", "run folder: config, checkpoints, metrics, figures, export")
    checkpoint_every: int = _opt(500, "save a checkpoint every N optimiser steps (and at the end of every epoch)")
    keep_checkpoints: int = _opt(2, "how many checkpoints to keep (0: all)")
    resume: str | None = _opt(None, "'latest' (the newest complete checkpoint) or a checkpoint folder to continue from; the run's saved config.yaml gives every option that the command line does not change safely (default: a new run)", type=str)
    eval_every: int = _opt(1, "validate after every N-th epoch (and always after the last)")
    log_every: int = _opt(20, "log losses to the trackers every N steps")
    image_every: int = _opt(500, "write a PNG of originals, reconstructions and ellipses every N steps")
    report_to: str = _opt("tensorboard", "experiment tracker", choices=("tensorboard", "wandb", "none"))
    push_to_hub: bool = _opt(False, "upload the export folder to the Hugging Face Hub at the end")
    hub_model_id: str | None = _opt(None, "Hub repository ORG/NAME for --push-to-hub (default: none)", type=str)
    hub_private: bool = _opt(False, "create the Hub repository as private")
    license: str | None = _opt(None, "licence of the exported weights, as a Hub licence id (e.g. apache-2.0, mit, cc-by-4.0, other); default: none stated, since the choice is the data owner's and yours", type=str)

    def model_create_kwargs(self) -> dict:
        """kwargs for ``timm.create_model`` beyond the model name and class count."""
        kwargs = {k: v for k, v in (("img_size", self.img_size), ("patch_size", self.patch_size), ("num_gaussians", self.num_gaussians)) if v is not None}
        if self.budgets is not None:
            budgets = parse_budgets(self.budgets)
            kwargs.update(budgets=budgets, num_gaussians=self.num_gaussians or budgets[-1])
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
    "budgets": "give --budgets (e.g. 8,16,32,64): the trainer trains every budget at every step (--budget-sampling)",
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


#: timm train.py's flags that mean what one of ours means: timm's flag -> (our option, a note for --help).
TIMM_ALIASES = {
    "--data-dir": ("dataset", ""),
    "--input-key": ("image_column", ""),
    "--target-key": ("label_column", ""),
    "--initial-checkpoint": ("init_from", ""),
    "--crop-pct": ("eval_crop_pct", ""),
    "--smoothing": ("label_smoothing", ""),
    "--opt-betas": ("betas", ""),
    "--lr-base": ("base_lr", "; scaled linearly by global batch / 256, as timm's --lr-base-scale linear"),
    "--model-ema-decay": ("ema_decay", ", which alone turns the EMA on here (timm also needs --model-ema)"),
    "--log-interval": ("log_every", ""),
    "--output": ("output_dir", ": the run folder itself (timm's is a parent folder that gets a new sub-folder per run); "
                               "a folder that holds another run is refused"),
}
#: timm's short flags, as further names of ours.
TIMM_SHORT = {"batch_size": "-b", "workers": "-j"}

#: timm's default EMA decay, which --model-ema turns on when no decay is given.
TIMM_EMA_DECAY = 0.9998
#: the options that --epochs N sets, scaled from the paper's schedule (or the built-in run's); --lr sets base_lr.
EPOCHS_SET = ("recon_epochs", "dssim_from", "classifier_epochs", "joint_epochs", "guidance_epochs")

#: timm flags taken only with the value that this trainer always uses: flag -> (that value, why only it).
TIMM_FIXED = {
    "--opt": ("adamw", "the optimiser is timm's AdamW (no weight decay on norms, biases and position embeddings), "
                       "as the paper: set --weight-decay and --betas (--opt-betas)"),
    "--sched": ("cosine", "the learning rate follows one cosine schedule per optimiser step over all three phases, "
                          "after a linear warm-up from --min-lr over --warmup-epochs"),
    "--clip-mode": ("norm", "--clip-grad clips the global gradient norm"),
    "--torchcompile": ("inductor", "--compile (--torchcompile) compiles with torch.compile's default backend, inductor"),
}

_AUG = "the paper trains with random-resized crops (scale 0.5-1) and horizontal flips (--hflip) only"
_SCHED = TIMM_FIXED["--sched"][1] + "; --epochs N scales the phases"
_DEVICE = "Accelerate places the processes and devices: use accelerate launch (accelerate config) for them"
_NO_BN = "GViT has no BatchNorm layers"
_BCE = "the classifier's loss is cross-entropy with --label-smoothing (--pixel-loss bce is the reconstruction's)"
_LOADER = "the trainer's loader has no such switch (it pins memory on GPUs, and augmentation is seeded per image and epoch; docs/data.md)"
_INIT = ("the trainer builds a new model: start from trained weights with --init-from (the whole model) or "
         "--init-encoder-from (a run's export folder, a .safetensors/.pth file or a checkpoint)")
#: timm train.py flags that cannot mean here what they mean there: flag -> what to use instead, or why there is none.
TIMM_REFUSED = {
    "--no-aug": "--hflip 0 turns the flips off; the random-resized crop (scale 0.5-1) stays, as in the paper's recipe",
    **dict.fromkeys(("--scale", "--ratio", "--vflip", "--color-jitter", "--color-jitter-prob", "--grayscale-prob",
                     "--gaussian-blur-prob", "--aa", "--aug-repeats", "--aug-splits", "--jsd-loss", "--reprob", "--remode",
                     "--recount", "--resplit", "--mixup", "--cutmix", "--cutmix-minmax", "--mixup-prob", "--mixup-switch-prob",
                     "--mixup-mode", "--mixup-off-epoch", "--train-interpolation", "--train-crop-mode"), _AUG),
    **dict.fromkeys(("--opt-eps", "--momentum", "--layer-decay", "--opt-kwargs"), TIMM_FIXED["--opt"][1]),
    **dict.fromkeys(("--lr-noise", "--lr-noise-pct", "--lr-noise-std", "--lr-cycle-mul", "--lr-cycle-decay", "--lr-cycle-limit",
                     "--lr-k-decay", "--warmup-prefix", "--cooldown-epochs", "--decay-milestones", "--decay-epochs", "--decay-rate",
                     "--dr", "--patience-epochs", "--epoch-repeats"), _SCHED),
    "--warmup-lr": "the warm-up starts at --min-lr",
    "--lr-base-size": "--base-lr (--lr-base) is for a global batch of 256; --lr gives the learning rate itself",
    "--lr-base-scale": "the learning rate scales linearly: base_lr x global batch / 256; --lr gives the learning rate itself",
    "--start-epoch": "--resume latest continues a run from its newest checkpoint, at the step it saved",
    "--no-resume-opt": "--resume continues the whole run (optimiser included); --init-from starts a new run from a run's weights",
    **dict.fromkeys(("--bce-loss", "--bce-sum", "--bce-target-thresh", "--bce-pos-weight"), _BCE),
    "--drop": "use --model-kwargs drop_rate=P",
    "--drop-path": "use --model-kwargs drop_path_rate=P",
    "--drop-connect": "use --model-kwargs drop_path_rate=P",
    "--drop-block": "GViT has no convolutional blocks; --model-kwargs drop_path_rate=P is its stochastic depth",
    "--gp": "use --model-kwargs global_pool=token or global_pool=avg",
    "--in-chans": "use --model-kwargs in_chans=1 (greyscale) or 3",
    "--input-size": "use --img-size N (square) and --model-kwargs in_chans=C",
    "--num-classes": "the dataset's labels set the class count",
    **dict.fromkeys(("--pretrained", "--pretrained-path"), _INIT),
    **dict.fromkeys(("--head-init-scale", "--head-init-bias", "--grad-checkpointing", "--channels-last", "--fuser",
                     "--torchscript", "--fast-norm", "--tta", "--dataset-trust-remote-code"), "this trainer has no such option"),
    "--torchcompile-mode": "--compile uses torch.compile's default mode",
    **dict.fromkeys(("--mean", "--std", "--interpolation"), "the model's data config (timm's resolve_model_data_config) sets them"),
    **dict.fromkeys(("--bn-momentum", "--bn-eps", "--sync-bn", "--dist-bn", "--split-bn"), _NO_BN),
    "--amp": "mixed precision is --mixed-precision: auto (the default: bf16 on GPUs that have it, else none), bf16, fp16 or no",
    "--amp-dtype": "use --mixed-precision bf16 or --mixed-precision fp16",
    "--amp-impl": "use --mixed-precision (Accelerate's autocast)",
    "--model-dtype": "use --mixed-precision (the weights stay float32)",
    **dict.fromkeys(("--device", "--local_rank", "--local-rank", "--no-ddp-bb", "--synchronize-step", "--device-modules"), _DEVICE),
    **dict.fromkeys(("--pin-mem", "--no-prefetcher", "--use-multi-epochs-loader", "--worker-seeding"), _LOADER),
    **dict.fromkeys(("-vb", "--validation-batch-size"), "validation uses --batch-size"),
    "--dataset-download": "--dataset ORG/NAME downloads a Hub dataset; a local folder is read where it is",
    "--class-map": "the labels are the dataset's --label-column (an imagefolder's sorted class folders)",
    "--input-img-mode": "images are read as RGB, or grey for --model-kwargs in_chans=1",
    **dict.fromkeys(("--train-num-samples", "--val-num-samples"),
                    "use --max-train-samples / --max-val-samples for a subset; a stream's length is counted from the dataset"),
    "--checkpoint-hist": "use --keep-checkpoints N, which keeps the newest N checkpoints (timm's keeps the best N); the export is the last weights",
    "--recovery-interval": "use --checkpoint-every N (optimiser steps)",
    "--eval-metric": "the export is the final weights (metrics.json has top-1 and top-5 after every evaluation)",
    "--experiment": "use --output-dir PARENT/NAME, which names the run folder itself",
    "--save-images": "use --image-every N, which writes originals, reconstructions and Gaussian ellipses",
    **dict.fromkeys(("--model-ema-force-cpu", "--model-ema-warmup"), "the EMA (--ema-decay) stays on the training device, without a warm-up"),
    **dict.fromkeys(("--wandb-project", "--wandb-tags", "--wandb-resume-id"), "--report-to wandb is the trainer's only W&B option"),
}

#: timm's dataset type prefixes (its --dataset TYPE/NAME), which our --dataset does not take.
TIMM_DATASET_TYPES = {"hfds/": "--dataset NAME", "hfids/": "--dataset NAME --streaming", "tfds/": None, "wds/": None, "torch/": None}


def gvit_models() -> list[str]:
    """The GViT architectures that timm knows (the plugin registers them)."""
    import timm

    import timm_gvit  # noqa: F401  (registers the models)

    return timm.list_models("gvit_*")


def _field_default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Refuse(argparse.Action):
    """A timm flag that has no counterpart here: refused, naming what to use instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        _fail(f"{option_string} is a timm train.py flag that this trainer does not take: {TIMM_REFUSED[option_string]}")


class _Fixed(argparse.Action):
    """A timm flag taken only with the value this trainer always uses (a no-op then)."""

    def __call__(self, parser, namespace, values, option_string=None):
        value, why = TIMM_FIXED[option_string]
        if str(values).lower() != value:
            _fail(f"{option_string} {values}: this trainer has only {option_string} {value}: {why}")


def program() -> str:
    """The trainer's name as the user ran it: ``gvit-train`` when installed (also for ``python -m timm_gvit.train``,
    whose argv[0] is the package's train.py), else ``train_gvit.py``, the checkout's entry point."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    installed = argv0.name == "gvit-train" or argv0.parts[-2:] == ("timm_gvit", "train.py")
    return "gvit-train" if installed else "train_gvit.py"


def build_parser() -> argparse.ArgumentParser:
    models = gvit_models()
    parser = argparse.ArgumentParser(
        prog=program(),
        description="Train a GViT model with the paper's three-phase schedule (reconstruction warm-up, "
        "classifier pre-training, joint training with classifier-gradient guidance). Run with "
        "`accelerate launch train_gvit.py ...` for several GPUs or `python train_gvit.py ...`. With no "
        "--dataset it trains gvit_nano on scikit-learn's digits in under 3 minutes on a 2-core CPU: that "
        "built-in run sets some options to other values than the defaults below (it says which when it "
        "starts), and flags and --config win over them.",
        epilog="timm train.py's other flags are refused with what to use instead (the table in README.md, timm's flags).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("-c", "--config", help="YAML file of options (keys as the flags, with underscores; timm's names are not "
                        "taken there); flags override it")
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        flags = [_flag(f.name), *([TIMM_SHORT[f.name]] if f.name in TIMM_SHORT else [])]
        default = _field_default(f)
        if f.name == "model":
            meta["help"] = f"{meta['help']}: {', '.join(models)}"
        if "default:" not in meta["help"]:  # a help that explains its default says it once
            assert default is not None, f"{f.name}: say what the default None means"
            meta["help"] = f"{meta['help']} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **meta)
        elif f.name == "model_kwargs":
            parser.add_argument(*flags, **meta)
        else:
            kind = meta.pop("type", None) or type(default)
            parser.add_argument(*flags, type=kind, **meta)

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    group = parser.add_argument_group(
        "timm train.py's names", "timm's flags that mean what ours do (and -b, -j, -c above). Each is refused together "
        "with the option it sets; a --config file takes only our names.")
    for flag, (name, note) in TIMM_ALIASES.items():
        meta = {k: v for k, v in fields[name].metadata.items() if k in ("nargs", "choices")}
        kind = fields[name].metadata.get("type") or type(_field_default(fields[name]))
        group.add_argument(flag, dest=f"timm:{flag}", type=kind, metavar=name.upper(), help=f"{_flag(name)}{note}", **meta)
    group.add_argument("--epochs", dest="timm:--epochs", type=float, metavar="N",
                       help="the whole run in N epochs: the paper's schedule (200 reconstruction epochs, D-SSIM from the 150th; "
                            "50 classifier; 150 joint, the last 50 with guidance; the built-in digits run: its own 3/5/4) "
                            "scaled to N, and its warm-up (10 epochs of 400: N/40) too unless --warmup-epochs is given; "
                            f"not with {', '.join(map(_flag, EPOCHS_SET))} or --phase-unit steps")
    group.add_argument("--lr", dest="timm:--lr", type=float, metavar="LR",
                       help="the learning rate itself, in place of --base-lr (which is for a global batch of 256): "
                            "base_lr = LR x 256 / global batch, with the process count Accelerate gives this launch")
    group.add_argument("--model-ema", dest="timm:--model-ema", action="store_true",
                       help=f"keep an EMA of the weights, with timm's decay {TIMM_EMA_DECAY} unless --ema-decay "
                            "(--model-ema-decay) gives one; that decay averages over about 5,000 steps, too many for a short run")
    group.add_argument("--torchcompile", dest="timm:--torchcompile", nargs="?", const="inductor", metavar="inductor",
                       help="--compile (timm's backend argument: inductor only)")
    group.add_argument("--log-wandb", dest="timm:--log-wandb", action="store_true", help="--report-to wandb")
    group.add_argument("--sched-on-updates", dest="timm:--sched-on-updates", action="store_true", help=argparse.SUPPRESS)
    for flag in TIMM_FIXED:
        if flag != "--torchcompile":
            group.add_argument(flag, action=_Fixed, metavar=TIMM_FIXED[flag][0],
                               help=f"only {TIMM_FIXED[flag][0]}, which is what this trainer does")
    for flag in TIMM_REFUSED:
        parser.add_argument(flag, action=_Refuse, nargs="*", help=argparse.SUPPRESS)
    return parser


def _unrecognized(items: list[str], parser: argparse.ArgumentParser):
    """A message for arguments that are neither ours nor timm's: the closest option, if any."""
    import difflib

    flags = [item for item in items if item.startswith("-")]
    if not flags:
        _fail(f"unrecognized argument {items[0]!r}: this trainer takes no positional arguments; the data is "
              f"--dataset {items[0]} (timm's positional data directory is --data-dir there too)")
    flag = flags[0].split("=", 1)[0]
    known = [s for action in parser._actions for s in action.option_strings if not isinstance(action, _Refuse)]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.7)
    hint = f"did you mean {close[0]}?" if close else "it is not an option of this trainer, nor a timm train.py flag it knows"
    _fail(f"unrecognized argument {flag}: {hint} (train_gvit.py --help lists every option)")


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
    raise Refusal(f"{program()}: error: {message}")


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


def _key_hint(key, fields) -> str:
    """Why a YAML key is not an option, and the option it may be."""
    import difflib

    flag = _flag(str(key))
    if flag in TIMM_ALIASES:
        return f"{key} is timm's name for {TIMM_ALIASES[flag][0]}, the name a file takes"
    special = {"--epochs": ", ".join(EPOCHS_SET) + " and warmup_epochs", "--lr": "base_lr (for a global batch of 256)",
               "--model-ema": "ema_decay", "--torchcompile": "compile", "--log-wandb": "report_to: wandb"}
    if flag in special:
        return f"{key} is timm's; a file gives {special[flag]}"
    if flag in TIMM_REFUSED:
        return f"{key} is timm's, not taken here: {TIMM_REFUSED[flag]}"
    close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.7)
    return f"{key}: did you mean {close[0]}?" if close else f"{key}: no such option"


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
        _fail(f"{what} {path}: unknown option(s) {sorted(unknown)} ({'; '.join(_key_hint(key, fields) for key in sorted(unknown, key=str))})")
    return {key: _check_value(fields[key], value, f"{what} {path}") for key, value in data.items()}


def validate(config: TrainConfig) -> TrainConfig:
    """Range checks of every numeric option and the model name; exits with a message on the first bad one."""
    import timm

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
    if config.prefix_loss and config.budgets is None:
        _fail("--prefix-loss needs --budgets: it trains the prefixes of a flex model's Gaussians")
    if config.guidance_budgets not in (None, "drawn") and config.budgets is None:
        _fail(f"--guidance-budgets {config.guidance_budgets} needs --budgets: a model of one k is guided at that k")
    check("budget_distill", 0 <= config.budget_distill <= 1, "in [0, 1]")
    if config.budget_distill > 0 and (config.budgets is None or config.budget_sampling != "all"):
        _fail(f"--budget-distill {config.budget_distill} needs --budgets with --budget-sampling all: the smaller budgets learn from the "
              "largest one's predictions in the same step, which a step of one budget does not have")
    check("distill_weight", 0 < config.distill_weight <= 1, "in (0, 1]")
    if config.distill_from is not None and config.budget_distill > 0:
        _fail(f"--distill-from and --budget-distill {config.budget_distill} both say what the budgets learn from: give one "
              "(--distill-from: a trained teacher for every budget; --budget-distill: the step's largest budget for the others)")
    try:
        weighted = parse_budget_weights(config.budget_weights) != ("equal", "equal")
    except ValueError as err:
        _fail(f"--budget-weights: {err}")
    if weighted and (config.budgets is None or config.budget_sampling != "all"):
        _fail(f"--budget-weights {config.budget_weights} needs --budgets with --budget-sampling all: it weights the budgets of one step, "
              "and a step of one budget has no others")
    if config.eval_budgets is not None and config.budgets is None:
        _fail(f"--eval-budgets {config.eval_budgets} needs --budgets: a model of one k is validated at that k")
    if config.budgets is not None:
        try:
            budgets = parse_budgets(config.budgets)
        except ValueError as exc:
            _fail(str(exc))
        check("num_gaussians", config.num_gaussians is None or budgets[0] <= config.num_gaussians <= budgets[-1],
              f"within --budgets ({budgets[0]} to {budgets[-1]}: the k the flex model serves by default), or left out (the largest)")
        try:
            eval_budgets(budgets, config.eval_budgets)
        except ValueError as exc:
            _fail(str(exc))
        if config.budget_sampling == "all" and len(budgets) > MAX_BUDGETS_EVERY_STEP:
            _fail(f"--budgets {config.budgets} gives {len(budgets)} budgets, and --budget-sampling all (the default) would train every one "
                  f"at every step, about {sum(budgets) / budgets[-1]:.0f}x a step's compute: list at most {MAX_BUDGETS_EVERY_STEP} "
                  "(e.g. 8,16,32,64), or draw one per step from a range with --budget-sampling linear or uniform")
        if config.guidance_budgets == "all" and len(budgets) > MAX_BUDGETS_EVERY_STEP:
            _fail(f"--budgets {config.budgets} gives {len(budgets)} budgets, and --guidance-budgets all would guide every one at every "
                  f"guidance step: list at most {MAX_BUDGETS_EVERY_STEP}, or guide one with --guidance-budgets drawn or largest")
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
    if config.dataset is not None and not os.path.exists(config.dataset):
        for prefix, instead in TIMM_DATASET_TYPES.items():
            if config.dataset.startswith(prefix):
                _fail(f"--dataset {config.dataset}: {prefix} is a timm dataset type; here --dataset is a Hub dataset id or a "
                      "local folder" + (f": {instead}" if instead else ""))
    if config.license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", config.license):
        _fail(f"--license must be a Hub licence id such as apache-2.0, mit or other, got {config.license!r}")
    if config.push_to_hub and (not config.hub_model_id or config.hub_model_id.count("/") != 1):
        _fail(f"--push-to-hub needs --hub-model-id ORG/NAME, got {config.hub_model_id!r}")
    if config.model.startswith(("local-dir:", "hf-hub:")):
        _fail(f"--model {config.model}: the trainer builds a new model from an architecture name (e.g. gvit_tiny) "
              f"and does not load weights; to start from a trained model's encoder use --model ARCH "
              f"--init-encoder-from {config.model.split(':', 1)[1]}")
    models = gvit_models()
    if not timm.is_model(config.model):
        _fail(f"--model {config.model}: no such timm model; GViT models: {', '.join(models)}")
    if config.model.split(".", 1)[0] not in models:
        _fail(f"--model {config.model}: not a GViT model; this trainer trains the GViT models {', '.join(models)}")
    check_model(config)
    return config


def model_options() -> list[str]:
    """The keyword arguments that a GViT model's constructor takes (those the trainer sets itself aside)."""
    import inspect

    from ..gvit import GViT

    return [name for name, p in inspect.signature(GViT.__init__).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in TRAINER_OWNED_KWARGS]


def check_model(config: TrainConfig) -> None:
    """Refuse a model that its options cannot build, before any data loads: an unknown ``--model-kwargs``
    key (with the closest one), or a value the constructor refuses, found by building it with no memory
    for its weights."""
    import difflib

    import timm
    from accelerate import init_empty_weights

    accepted = model_options()
    for key in config.model_kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"it takes {', '.join(accepted)}"
            _fail(f"--model-kwargs {key}: {config.model} has no such option; {hint}")
    kwargs = config.model_create_kwargs()

    def refuse(exc: Exception):
        given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
        _fail(f"--model {config.model} cannot be built with {given or 'its defaults'}: {type(exc).__name__}: {exc}")

    try:
        with init_empty_weights():  # the constructor's checks, without allocating or initialising the weights
            timm.create_model(config.model, num_classes=2, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:  # the constructor's own refusals
        refuse(exc)
    except Exception:  # a part that computes with its weights while it is built (a conv stem sizes its output): build it whole
        try:
            timm.create_model(config.model, num_classes=2, **kwargs)
        except Exception as exc:
            refuse(exc)


def _same_option(key: str, new, saved) -> bool:
    """Whether option ``key`` keeps the run's value: equal, or (for a path option) naming the same existing file."""
    if new == saved:
        return True
    if key in PATH_OPTIONS and isinstance(new, str) and isinstance(saved, str):
        return os.path.exists(new) and os.path.exists(saved) and os.path.samefile(new, saved)
    return False


def _num_processes() -> int:
    """The processes of this launch, as the trainer's Accelerate state will count them."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).num_processes


def _timm_options(timm_flags: dict, flags: dict, explicit: dict, origin: dict, base: dict | None = None) -> None:
    """Turn timm's flags in ``timm_flags`` (flag -> value) into our options in ``explicit``, each refused
    together with one of ours that it names or sets (in ``flags``, the command line's), and note in
    ``origin`` which flag set each. Without ``base``, the plain aliases; with it (the values under
    ``explicit``: the defaults and the built-in preset, or a resumed run's config), ``--epochs``,
    ``--lr`` and ``--model-ema``, which depend on other options."""

    def set_from(flag: str, name: str, value, shown=None):
        this = flag if shown is None else f"{flag} {shown}"
        if name in flags:
            _fail(f"{this} sets {_flag(name)}, which is given too: give one of them")
        if name in origin:  # another timm flag set it
            _fail(f"{this} and {origin[name]} both set {_flag(name)}: give one of them")
        explicit[name], origin[name] = value, this

    if base is None:
        for flag, value in timm_flags.items():
            if flag in TIMM_ALIASES:
                set_from(flag, TIMM_ALIASES[flag][0], tuple(value) if isinstance(value, list) else value,
                         shown=" ".join(map(str, value)) if isinstance(value, list) else value)
        if "--torchcompile" in timm_flags:
            if str(timm_flags["--torchcompile"]).lower() != "inductor":
                _fail(f"--torchcompile {timm_flags['--torchcompile']}: this trainer has only --torchcompile inductor: "
                      f"{TIMM_FIXED['--torchcompile'][1]}")
            set_from("--torchcompile", "compile", True)
        if timm_flags.get("--log-wandb"):
            set_from("--log-wandb", "report_to", "wandb")
        return
    if timm_flags.get("--model-ema") and "ema_decay" not in explicit:  # a decay given anywhere is kept
        set_from("--model-ema", "ema_decay", base.get("ema_decay") or TIMM_EMA_DECAY)
    if "--epochs" in timm_flags:
        epochs = timm_flags["--epochs"]
        if not epochs > 0:
            _fail(f"--epochs must be > 0, got {epochs:g}")
        if flags.get("phase_unit") == "steps":
            _fail("--epochs counts epochs: leave out --phase-unit steps, or give the phase lengths in steps instead of --epochs")
        schedule = DIGITS_PRESET if base.get("dataset") is None else {}  # the built-in run scales its own schedule
        paper = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        lengths = {name: schedule.get(name, paper[name]) for name in (*EPOCHS_SET, "warmup_epochs")}
        scale = epochs / (lengths["recon_epochs"] + lengths["classifier_epochs"] + lengths["joint_epochs"])
        for name in EPOCHS_SET:
            set_from("--epochs", name, lengths[name] * scale, shown=f"{epochs:g}")
        explicit["phase_unit"] = "epochs"  # over a file's steps, as any flag over the file
        if "warmup_epochs" not in explicit:
            explicit["warmup_epochs"], origin["warmup_epochs"] = lengths["warmup_epochs"] * scale, f"--epochs {epochs:g}"
    if "--lr" in timm_flags:
        lr = timm_flags["--lr"]
        if not lr > 0:
            _fail(f"--lr must be > 0, got {lr}")
        batch, accumulation = (explicit.get(name, base[name]) for name in ("batch_size", "grad_accum_steps"))
        set_from("--lr", "base_lr", lr * 256 / (batch * accumulation * _num_processes()), shown=lr)


def _defaults() -> dict:
    return {f.name: _field_default(f) for f in dataclasses.fields(TrainConfig)}


def _resume_config(explicit: dict, flags: dict, timm_flags: dict, origin: dict) -> TrainConfig:
    """The config of the run that ``--resume`` continues, with the changes ``explicit`` may make."""
    resume = explicit["resume"]
    if resume != "latest" and Path(resume).parent.name == "checkpoints":
        run_dir = Path(resume).parent.parent
    else:
        preset = DIGITS_PRESET if explicit.get("dataset") is None else {}
        run_dir = Path(explicit.get("output_dir") or preset.get("output_dir") or TrainConfig.output_dir)
    saved = read_config_file(run_dir / "config.yaml", what="--resume")
    _timm_options(timm_flags, flags, explicit, origin, base={**_defaults(), **saved})
    changed = {k: v for k, v in explicit.items()
               if k not in CHANGEABLE_ON_RESUME and k in saved and not _same_option(k, v, saved[k])}
    if changed:
        listed = ", ".join(f"{_flag(k)} {v} ({'from ' + origin[k] + '; ' if k in origin else ''}the run has {saved[k]})"
                           for k, v in changed.items())
        _fail(f"--resume: {listed}. These options fix the run's data, schedule or model and cannot change in the "
              f"middle of it (its options are in {run_dir / 'config.yaml'}); leave them out to continue the run, "
              "or start a new run with another --output-dir.")
    return validate(TrainConfig(**{**saved, "output_dir": str(run_dir), **explicit}))


def _announce_preset(preset: dict, explicit: dict, origin: dict) -> None:
    """One line on stderr (from the first process) saying what the built-in run sets, and what the user's options replaced."""
    if os.environ.get("RANK", "0") != "0":
        return
    kept = " ".join(f"{_flag(k)} {v}" for k, v in preset.items() if k not in explicit)
    replaced = " ".join(dict.fromkeys(origin.get(k) or f"{_flag(k)} {explicit[k]}" for k in preset if k in explicit))
    print(f"{program()}: no --dataset: the built-in run on scikit-learn's 8x8 digits sets {kept or 'nothing'}"
          f"{f' (yours: {replaced})' if replaced else ''}; flags and --config win over these", file=sys.stderr)


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Flags (and the YAML file they name) -> the resolved, validated :class:`TrainConfig`.

    timm train.py's flags that mean what ours do are taken under their names (:data:`TIMM_ALIASES`,
    ``--epochs``, ``--lr``, ``--model-ema``, ``--torchcompile``); the others are refused with what to
    use instead (:data:`TIMM_REFUSED`). With no dataset, a line on stderr lists what the built-in
    digits run sets."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unrecognized(unknown, parser)
    args = vars(args)
    timm_flags = {key.removeprefix("timm:"): args.pop(key) for key in list(args) if key.startswith("timm:")}
    from_file = read_config_file(args.pop("config")) if "config" in args else {}
    if "model_kwargs" in args:
        try:
            args["model_kwargs"] = parse_kwargs(args["model_kwargs"])
        except ValueError as exc:
            _fail(str(exc))
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    explicit, origin = {**from_file, **args}, {}
    _timm_options(timm_flags, args, explicit, origin)
    if explicit.get("resume"):
        return _resume_config(explicit, args, timm_flags, origin)
    preset = DIGITS_PRESET if explicit.get("dataset") is None else {}
    if explicit.get("budgets") is not None:  # the budgets set k: the largest, unless --num-gaussians names another
        preset = {k: v for k, v in preset.items() if k != "num_gaussians"}
    _timm_options(timm_flags, args, explicit, origin, base={**_defaults(), **preset, **explicit})
    config = validate(TrainConfig(**{**preset, **explicit}))
    if preset:  # once the options are good: a refusal stays the only line
        _announce_preset(preset, explicit, origin)
    return config


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run saved in ``RUN/config.yaml``."""
    return TrainConfig(**read_config_file(Path(run_dir) / "config.yaml", what="run config"))


def save_config(config: TrainConfig, path: str | Path) -> None:
    from .checkpoints import write_atomically

    data = dataclasses.asdict(config)
    data["betas"] = list(data["betas"])
    write_atomically(path, yaml.safe_dump(data, sort_keys=False))
