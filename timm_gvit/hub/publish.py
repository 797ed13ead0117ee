"""Publish a finished or interrupted GViT run to the Hugging Face Hub.

    gvit-publish RUN_DIR --hub-model-id ORG/NAME [--dry-run]
    gvit-publish RUN_DIR/checkpoints/step-00001234 --hub-model-id ORG/NAME
    gvit-publish RUN_DIR/export --hub-model-id ORG/NAME

From a run folder or one of its checkpoints it rebuilds the model from the run's config.yaml,
loads the checkpoint's weights and builds the export folder (config.json, model.safetensors,
README.md model card); an existing export folder is uploaded as it is. ``--dry-run`` only builds
and checks the folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import timm
import torch

from .export import PushError, export_model, push_folder


def _run_dir_and_checkpoint(source: Path) -> tuple[Path, Path]:
    from timm_gvit.training.checkpoints import STATE_FILE, checkpoint_problem, list_checkpoints

    if (source / STATE_FILE).is_file():
        problem = checkpoint_problem(source)
        if problem is not None:
            raise SystemExit(f"{source}: an incomplete checkpoint ({problem}); publish the run folder to take its newest complete one")
        return source.parent.parent, source
    found = list_checkpoints(source)
    if not found:
        raise SystemExit(f"{source}: neither an export folder, a run folder with a complete checkpoint, nor a checkpoint")
    return source, found[-1]


def build_export_from_checkpoint(source: Path, out: Path, repo_name: str | None) -> Path:
    """Rebuild the model of a run's checkpoint and write its export folder to ``out``."""
    import timm_gvit  # noqa: F401
    from timm_gvit.training.checkpoints import STATE_FILE, read_safetensors
    from timm_gvit.training.config import load_run_config

    run_dir, checkpoint = _run_dir_and_checkpoint(source)
    config = load_run_config(run_dir)
    # the validation metrics of the checkpoint's own weights, from the history it holds (none in the middle of an epoch)
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    evaluated = [epoch for epoch in saved["history"] if "top1" in epoch and epoch["step"] == saved["step"]]
    final = evaluated[-1] if evaluated else {"top1": float("nan"), "top5": float("nan"), "psnr": float("nan")}
    state = {k.removeprefix("model."): v for k, v in read_safetensors(checkpoint / "model.safetensors").items()}
    num_classes = state["classifier.head.weight"].shape[0]
    model = timm.create_model(config.model, num_classes=num_classes, **config.model_create_kwargs())
    model.load_state_dict(state)
    run_info = json.loads((run_dir / "run_info.json").read_text())
    run = {"config": {**dataclasses.asdict(config), "betas": list(config.betas)}, **run_info, "metrics": final}
    return export_model(model.eval(), out, run=run, repo_name=repo_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gvit-publish", description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("source", type=Path, help="a run folder, one of its checkpoints, or an export folder")
    parser.add_argument("--hub-model-id", required=True, help="Hub repository ORG/NAME")
    parser.add_argument("--out", type=Path, help="where to build the export folder (default: RUN/export-step-N)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry-run", action="store_true", help="build and check the export folder, upload nothing")
    args = parser.parse_args(argv)

    if (args.source / "config.json").is_file() and (args.source / "model.safetensors").is_file():
        folder = args.source
    else:
        run_dir, checkpoint = _run_dir_and_checkpoint(args.source)
        folder = build_export_from_checkpoint(checkpoint, args.out or run_dir / f"export-{checkpoint.name.removeprefix('.tmp-')}", args.hub_model_id)
    import timm_gvit  # noqa: F401

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        model(torch.zeros(1, *model.pretrained_cfg["input_size"]))
    print(f"export folder {folder} loads with timm ({model.num_classes} classes)")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return 0
    try:
        print(f"pushed to {push_folder(folder, args.hub_model_id, private=args.private)}")
    except PushError as exc:
        print(f"push failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
