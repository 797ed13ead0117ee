#!/usr/bin/env python
"""What the Gaussian classifier needs to read an encoder's Gaussians: one row per change.

    python experiments/encoder_ablation.py --only patch8-lr1e-3-clip    # an encoder to read
    python experiments/classifier_ablation.py --encoder patch8-lr1e-3-clip
    python experiments/classifier_ablation.py --encoder runs/imagenette/encoder-k64/export   # a trainer run's encoder
    python experiments/classifier_ablation.py --encoder runs/imagenette/encoder-k64/export --gaussians sgd   # table 4

The encoder of an ``encoder_ablation.py`` row encodes every training and validation image once
(centre crops, eval mode), and classifiers 128 wide and 6 deep (gvit_nano's) train on those fixed
Gaussians for --epochs epochs with gaussian_study.py's recipe (AdamW at --lr, cosine, flips that
mirror the slots too).
Rows: the paper's linear embedding of the 9 numbers; plus the sine-cosine features of the centres
(``centre_features``); plus size and double-angle anisotropy in place of (sigma_x, sigma_y, phi)
(``shape_features``, with the centre features); a two-layer MLP embedding with the centre
features (``mlp_embed``); timm's PatchDropout over the Gaussian tokens, a quarter dropped per image
(``patch_drop``, with the centre features); no learned per-slot position embeddings, a set located
by its centre features alone (``no_slot_embed``); and, as the leakage control, timm's ViT/8 on the
renderings of the same Gaussians, without and with the same patch dropout. With ``--gaussians sgd``
the same crops are fitted by per-image SGD (``fit_gaussians``, grid start, --fit-steps Adam steps;
cached in runs/imagenette/cache like gaussian_study.py's) in place of the encoder's Gaussians: the
paper's table 4 under the same classifiers. Each row records its val and train top-1. Results go to experiments/results/classifier_ablation.json under the encoder's name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.data import create_transform, resolve_model_data_config

import timm_gvit  # noqa: F401
from encoder_ablation import ENCODERS, ROOT, ROWS, PAPER
from gaussian_study import WIDTH, accuracy, cached, encode_all, fit_all, load_crops, render_all, train_classifier, vit
from timm_gvit.classifier import GaussianClassifier
from timm_gvit.fitting import psnr
from timm_gvit.gaussians import hflip_gaussians

RESULTS = ROOT / "experiments" / "results" / "classifier_ablation.json"
#: GaussianClassifier options of each Gaussian-classifier row.
CLASSIFIER_ROWS = {
    "linear": {},
    "centre_features": {"centre_features": True},
    "shape_features": {"centre_features": True, "shape_features": True},
    "mlp_embed": {"centre_features": True, "mlp_embed": True},
    "patch_drop": {"centre_features": True, "patch_drop_rate": 0.25},
    "no_slot_embed": {"centre_features": True, "pos_embed": "none"},
}
#: timm ViT/8 options of each leakage-control row (the ViT reads the renderings of the same Gaussians).
VIT_ROWS = {
    "vit8_renderings": {},
    "vit8_renderings_patch_drop": {"patch_drop_rate": 0.25},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "runs" / "data" / "imagenette-80"), help="output of prepare_imagenette.py")
    parser.add_argument("--encoder", required=True, help="the encoder_ablation.py row whose encoder to read, or a train_gvit.py export folder")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of every classifier")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of every classifier (3e-4: the paper recipe's; the trainer's current recipe uses 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classifiers' initialisation and batches (not 0: results go to an entry named \"..., seed N\")")
    parser.add_argument("--gaussians", choices=["encoder", "sgd"], default="encoder",
                        help="which Gaussians of the encoder's crops the classifiers read: the encoder's, or per-image SGD fits")
    parser.add_argument("--fit-steps", type=int, default=25, help="Adam steps per image of the SGD fits (--gaussians sgd)")
    parser.add_argument("--rows", nargs="*", default=[*CLASSIFIER_ROWS, *VIT_ROWS],
                        choices=[*CLASSIFIER_ROWS, *VIT_ROWS], help="rows to run")
    args = parser.parse_args()
    export = Path(args.encoder)
    if (export / "config.json").is_file():  # a trainer export: its own architecture and weights
        model = timm.create_model(f"local-dir:{export.resolve()}", pretrained=True, num_classes=10)
        name = f"{export.resolve().parent.name} (trainer run)"
    elif args.encoder in ROWS:
        model = timm.create_model("gvit_nano", num_classes=10, **{**PAPER["model"], **ROWS[args.encoder][1].get("model", {})})
        model.encoder.load_state_dict(load_file(ENCODERS / f"{args.encoder}.safetensors"))
        name = args.encoder
    else:
        parser.error(f"--encoder {args.encoder!r} is neither an encoder_ablation.py row ({', '.join(ROWS)}) nor an export folder")
    if args.gaussians == "sgd":
        if model.num_gaussians != 64 or model.pretrained_cfg["input_size"][-1] != 64:
            parser.error("--gaussians sgd fits k = 64 Gaussians to 64 px crops (gaussian_study.py's cache): pick a k = 64, 64 px encoder")
        name = f"SGD fits, {args.fit_steps} steps (crops of {name})"
    name += "".join([f", {args.epochs} epochs" if args.epochs != 6 else "", f", lr {args.lr:g}" if args.lr != 3e-4 else "",
                     f", seed {args.seed}" if args.seed else ""])  # seed 0's entries keep their names
    config = resolve_model_data_config(model)
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    raw = create_transform(**{**config, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})  # resize 71, crop 64, [0, 1]
    data = Path(args.data)
    if args.gaussians == "sgd":  # the crops and their fits are cached: they do not depend on the encoder
        split = {s: cached(f"crops-{s}", lambda s=s: load_crops(data, s, raw)) for s in ("train", "val")}
        gaussians = {s: cached(f"sgd{args.fit_steps}-{s}", lambda s=s: fit_all(split[s]["images"].clamp(0, 1), args.fit_steps, f"sgd{args.fit_steps}-{s}"))
                     for s in split}
    else:
        split = {s: load_crops(data, s, raw) for s in ("train", "val")}
        gaussians = {s: encode_all(model, split[s]["images"].clamp(0, 1), mean, std) for s in split}
    labels = {s: split[s]["labels"] for s in split}
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    entry = results.setdefault(name, {})
    renders = None
    for row in args.rows:
        torch.manual_seed(args.seed)
        if row in VIT_ROWS:
            if renders is None:  # rendered and normalised once, for every ViT row
                renders = {s: render_all(gaussians[s]) for s in split}
                entry["val_psnr"] = psnr(renders["val"], split["val"]["images"].clamp(0, 1)).mean().item()
                renders = {s: (renders[s] - mean) / std for s in split}
            inputs = renders
            clf = train_classifier(vit(8, **VIT_ROWS[row]), inputs["train"], labels["train"], args.epochs, lambda x: x.flip(-1), row, args.seed, lr=args.lr)
        else:
            inputs = gaussians
            clf = GaussianClassifier(num_gaussians=gaussians["train"].shape[1], num_classes=10, **CLASSIFIER_ROWS[row], **WIDTH)
            clf = train_classifier(clf, inputs["train"], labels["train"], args.epochs, hflip_gaussians, row, args.seed, lr=args.lr)
        acc = accuracy(clf, inputs["val"], labels["val"])
        # train accuracy (unflipped training inputs, eval mode): how much of the gap is fitting, how much generalising
        entry[row] = {"val_top1": acc, "train_top1": accuracy(clf, inputs["train"], labels["train"]), "epochs": args.epochs, "lr": args.lr, "seed": args.seed}
        print(f"{name} / {row}: {acc:.2f}% top-1 (train {entry[row]['train_top1']:.2f}%)", flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
