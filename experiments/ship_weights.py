#!/usr/bin/env python
"""Put the study's gvit_nano run for shipping into the package as ``gvit_nano.imagenette_64_v2``
(or, with ``--tag gvit_nano.imagenette_64_flex``, the flex model as that tag).

    python experiments/ship_weights.py                 # shipped-dose-g0.1, else final-k64-g0, else the best long-protocol run
    python experiments/ship_weights.py --run long-g0.1-s1
    python experiments/ship_weights.py --tag gvit_nano.imagenette_64_flex    # shipped-flex-dose-all-g0.1, else ...

Writes the run's export, in the Hub folder format, to timm_gvit/weights/gvit_nano.imagenette_64_v2/
(config.json, README.md model card, model.safetensors in float16: half the size; the model
computes in float32), then checks it the way a user loads it, ``timm.create_model(
'gvit_nano.imagenette_64_v2', pretrained=True)`` with timm's own eval transform, on the whole
validation split and on the few validation images bundled with the tests
(tests/data/imagenette-val, the first --per-class files of each class). The numbers go to
experiments/results/shipped_weights.json, from where report.py puts them in MODEL_CARD.md, and
the explain figures of three bundled photographs to docs/results/explain_*.png. The flex tag is
measured at each of its budgets (experiments/results/shipped_flex_weights.json), keeps the bundled
images as they are, and draws one photograph at each budget to docs/results/flex_lod.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import timm
import torch
import yaml
from safetensors.torch import load_file, save_file
from timm.data import create_transform, resolve_model_data_config
from torchvision.datasets import ImageFolder
from tqdm import tqdm

import timm_gvit  # noqa: F401
from timm_gvit.explain import main as explain_main
from timm_gvit.fitting import psnr
from timm_gvit.data_utils import rgb_targets
from timm_gvit.gvit import IMAGENETTE_CLASSES, WEIGHTS_DIR
from timm_gvit.hub import export_model, model_card_values, render_model_card

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "imagenette"
BUNDLED = ROOT / "tests" / "data" / "imagenette-val"
TAG = "gvit_nano.imagenette_64_v2"
FLEX_TAG = "gvit_nano.imagenette_64_flex"
#: The runs each tag ships, the first finished one
SHIPPED_RUNS = {TAG: ("shipped-dose-g0.1", "final-k64-g0", "final-k64"), FLEX_TAG: ("shipped-flex-dose-all-gall-g0.1", "shipped-flex-dose-all-g0.1", "shipped-flex-dose-g0.1", "final-flex-g0")}
RESULTS = {TAG: ROOT / "experiments" / "results" / "shipped_weights.json",
           FLEX_TAG: ROOT / "experiments" / "results" / "shipped_flex_weights.json"}
FIGURES = ROOT / "docs" / "results"
PREVIOUS = Path("experiments/checkpoints/final-k64-g0")  # the weights the tag shipped before the guidance dose
EXPLAINED = ("n03028079", "n03888257", "n02102040")  # church, parachute, English springer
LOD_PHOTO = "n03888257"  # the flex tag's level-of-detail figure: a parachute, the photo of the README's snippet


@torch.no_grad()
def evaluate(model, folder: ImageFolder, mean: torch.Tensor, std: torch.Tensor, prefixes=()) -> dict:
    """Top-1, top-5 and PSNR over ``folder``, and for each k of ``prefixes`` the PSNR of the first k of the
    model's Gaussians (``prefix_psnr@k``: a flex model's level of detail)."""
    loader = torch.utils.data.DataLoader(folder, batch_size=128)
    correct = correct5 = quality = 0.0
    prefix_quality = dict.fromkeys(prefixes, 0.0)
    predictions = []
    for images, labels in tqdm(loader, desc=f"evaluating on {len(folder)} images"):
        gaussians = model.encode(images)
        logits = model.classify(gaussians)
        top5 = logits.topk(5, dim=1).indices
        predictions += top5[:, 0].tolist()
        correct += (top5[:, 0] == labels).sum().item()
        correct5 += (top5 == labels[:, None]).any(1).sum().item()
        targets = rgb_targets(images, mean, std)
        quality += psnr(model.render(gaussians), targets).sum().item()
        for k in prefix_quality:
            prefix_quality[k] += psnr(model.render(gaussians[:, :k]), targets).sum().item()
    n = len(folder)
    return {"images": n, "correct": int(correct), "top1": 100 * correct / n, "top5": 100 * correct5 / n, "psnr": quality / n,
            **{f"prefix_psnr@{k}": value / n for k, value in prefix_quality.items()}, "predictions": predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default=TAG, choices=sorted(SHIPPED_RUNS), help=f"the tag to ship (default {TAG})")
    parser.add_argument("--run", help="run folder name under runs/imagenette (default: the tag's, " + "; ".join(
        f"{tag}: {', else '.join(names)}" for tag, names in SHIPPED_RUNS.items()) + f"; for {TAG}, else the best finished long-g* run)")
    parser.add_argument("--data", default=str(ROOT / "runs" / "data" / "imagenette-80"), help="the prepared imagefolder")
    parser.add_argument("--per-class", type=int, default=2, help="validation images per class to bundle with the tests")
    parser.add_argument("--evaluate-only", action="store_true", help="only evaluate the weights already in the package")
    args = parser.parse_args()
    runs = json.loads((ROOT / "experiments" / "results" / "trainer_runs.json").read_text())
    # shipped-dose-g0.1: final-k64-g0's weights and 400 joint steps with a guidance step each (gamma 0.1), 57.7 % against
    # final-k64-g0's 51.8 (its unguided twin shipped-dose-g0: 52.5). final-k64-g0 before final-k64: in the paired final
    # runs the long protocol's 37 guidance steps cost 0.9 dB for -0.4 points of top-1 (51.85 vs 51.49)
    args.run = args.run or next((n for n in SHIPPED_RUNS[args.tag] if runs.get(n, {}).get("finished")), None)
    if args.run is None and args.tag == TAG:
        finished = {n: r for n, r in runs.items() if n.startswith("long-") and r["finished"]}
        args.run = max(finished, key=lambda n: finished[n]["final"]["top1"]) if finished else None
    if args.run is None:
        raise SystemExit(f"no finished run for {args.tag} ({', '.join(SHIPPED_RUNS[args.tag])}) in experiments/results/trainer_runs.json")
    if args.tag not in timm.list_pretrained("gvit_nano*"):
        raise SystemExit(f"{args.tag} has no pretrained cfg: add one to default_cfgs in timm_gvit/gvit.py (its file, "
                         "num_classes, input_size and label_names), then run this again")
    if args.evaluate_only:
        evaluate_shipped(args, runs)
        return
    run_dir = RUNS / args.run
    trained = timm.create_model(f"local-dir:{run_dir / 'export'}", pretrained=True)
    info = json.loads((run_dir / "run_info.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    if args.run.startswith("shipped-dose-") and Path(config.get("init_from") or "").name == TAG:
        # the first shipped-dose runs started from this tag's weights before they were replaced: final-k64-g0's, kept
        config["init_from"] = str(PREVIOUS)
    config["license"] = timm.models.get_pretrained_cfg(args.tag).license  # 'other': ImageNet's terms, as the tag's cfg says
    run = {**info, "config": config, "metrics": runs[args.run]["final"],
           "dataset": "imagenette", "class_names": list(IMAGENETTE_CLASSES)}
    folder = WEIGHTS_DIR / args.tag
    if folder.exists():
        shutil.rmtree(folder)
    export_model(trained, folder, run=run, repo_name=args.tag)  # the Hub folder format; its card is rewritten below
    target = folder / "model.safetensors"
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(target).items()}
    save_file(state, target, metadata={"format": "pt", "source_run": args.run})
    print(f"{run_dir / 'export'} -> {folder} ({target.stat().st_size / 1e6:.1f} MB of float16 weights)")
    shipped = evaluate_shipped(args, runs)
    (folder / "README.md").write_text(packaged_card(trained, run, args.run, runs, shipped, args.tag))


def packaged_card(model, run: dict, name: str, runs: dict, shipped: dict, tag: str) -> str:
    """The model card of the packaged weights: the Hub card of run ``name`` with the float16 weights' accuracy
    ``shipped`` (a flex tag's at each budget too), loaded by its tag, under ImageNet's terms."""
    final = run["metrics"]
    card = {
        "license_line": "license: other\nlicense_name: imagenet-terms-of-access\n",
        "package": "timm-gvit, the package these weights ship in",
        "results_intro": f"Measured on the validation split with these float16 weights (in float32 at the end of training: "
                         f"{final['top1']:.2f} % top-1):",
        "create_model": f'timm.create_model("{tag}", pretrained=True).eval()   # the weights ship with timm-gvit',
        "licence_text": ("The code is Apache-2.0; these weights are not. They were trained on Imagenette, a subset of\n"
                         "ImageNet (ILSVRC-2012), and come under ImageNet's terms of access: non-commercial research and\n"
                         "education only (hence `license: other`)."),
    }
    twin = name.rsplit("-g", 1)[0] + "-g0"
    if Path(run["config"].get("init_from") or "") == PREVIOUS and twin != name and runs.get(twin, {}).get("finished"):
        before, guided, unguided = runs[PREVIOUS.name]["final"], final["top1"], runs[twin]["final"]["top1"]
        steps = run["schedule"]["guidance_steps"]
        card["encoder_origin"] = (
            f"The model started from the weights this tag shipped before (`--init-from`): run `{PREVIOUS.name}`, "
            f"{before['top1']:.2f} % top-1 and {before['psnr']:.2f} dB; timm-gvit keeps them in `{PREVIOUS}`. Their "
            f"training is not counted in the steps above; these {steps} guided steps took them to {guided:.2f} %, and "
            f"the same {steps} steps without guidance (run `{twin}`) to {unguided:.2f} %.")
    elif run["config"].get("init_from") and runs.get(name, {}).get("starts_from") in runs:
        origin = runs[name]["starts_from"]
        card["encoder_origin"] = (f"The model started from the weights of run `{origin}` (`--init-from`, "
                                  f"{runs[origin]['final']['top1']:.2f} % top-1), whose own training is not counted in the steps above.")
    by_budget = {f"{metric}@{k}": values[metric] for k, values in shipped.get("val_by_budget", {}).items() for metric in ("top1", "psnr")}
    return render_model_card({**model_card_values(model, {**run, "metrics": {**shipped["val"], **by_budget}}, tag), **card})


def evaluate_shipped(args, runs: dict) -> dict:
    """Load the shipped tag as a user does and record its accuracy (a flex tag's at each budget), bundled images and
    figures; returns the record."""
    target = WEIGHTS_DIR / args.tag / "model.safetensors"
    model = timm.create_model(args.tag, pretrained=True).eval()
    config = resolve_model_data_config(model)
    transform = create_transform(**config)
    mean, std = config["mean"], config["std"]
    val = ImageFolder(str(Path(args.data) / "val"), transform=transform)
    full = evaluate(model, val, mean, std, prefixes=model.budgets or ())
    result = {"run": args.run, "file": str(target.relative_to(ROOT)), "megabytes": round(target.stat().st_size / 1e6, 2),
              "run_final": runs[args.run]["final"], "val": {k: v for k, v in full.items() if k != "predictions"}}
    if model.budgets:  # the flex tag at each budget, loaded as a user chooses k
        result["val_by_budget"] = {}
        for k in model.budgets:
            if k == model.num_gaussians:  # the k it serves by default: measured above
                result["val_by_budget"][k] = dict(result["val"])
                continue
            served = timm.create_model(args.tag, pretrained=True, num_gaussians=k).eval()
            result["val_by_budget"][k] = {m: v for m, v in evaluate(served, val, mean, std).items() if m != "predictions"}
        for k in model.budgets:  # the level of detail: the first k of the Gaussians at the k it serves by default
            result["val_by_budget"][k]["prefix_psnr"] = full[f"prefix_psnr@{k}"]
        result["bundled"] = evaluate(model, ImageFolder(str(BUNDLED), transform=transform), mean, std)
        FIGURES.mkdir(parents=True, exist_ok=True)
        photo = sorted((BUNDLED / LOD_PHOTO).iterdir())[0]
        explain_main([str(photo), "--model", args.tag, "--num-gaussians", ",".join(map(str, model.budgets)),
                      "--out", str(FIGURES / "flex_lod.png")])
    else:
        if BUNDLED.exists():
            shutil.rmtree(BUNDLED)
        for wnid in val.classes:
            files = sorted((Path(args.data) / "val" / wnid).iterdir())[: args.per_class]
            (BUNDLED / wnid).mkdir(parents=True)
            for f in files:
                shutil.copy(f, BUNDLED / wnid / f.name)
        result["bundled"] = evaluate(model, ImageFolder(str(BUNDLED), transform=transform), mean, std)
        # the explain figures of the README and the card, for one bundled photo of three classes
        FIGURES.mkdir(parents=True, exist_ok=True)
        for wnid in EXPLAINED:
            photo = sorted((BUNDLED / wnid).iterdir())[0]
            explain_main([str(photo), "--model", args.tag, "--out", str(FIGURES / f"explain_{wnid}.png")])
    RESULTS[args.tag].write_text(json.dumps(result, indent=2))
    bundled = result["bundled"]
    print(f"{args.tag}: val top-1 {full['top1']:.2f}% (run: {runs[args.run]['final']['top1']:.2f}%), top-5 {full['top5']:.2f}%, "
          f"PSNR {full['psnr']:.2f} dB; bundled {bundled['correct']}/{bundled['images']}")
    for k, values in result.get("val_by_budget", {}).items():
        print(f"  k={k}: top-1 {values['top1']:.2f}%, PSNR {values['psnr']:.2f} dB (the first {k} of one encoding: {values['prefix_psnr']:.2f} dB)")
    return result


if __name__ == "__main__":
    main()
