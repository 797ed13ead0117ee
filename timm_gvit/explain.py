"""Interpretability for GViT (paper section 4, docs/method.md section 7), as functions and a command.

    python -m timm_gvit.explain photo.jpg                       # the shipped gvit_nano.imagenette_64_v2 weights
    python -m timm_gvit.explain photo.jpg --checkpoint run/export --out fig.png
    python -m timm_gvit.explain photo.jpg --model local-dir:FLEX --num-gaussians 16,32,64

The figure shows, side by side: the input, the reconstruction from the model's Gaussians, their
2-sigma ellipses, the det(Sigma) map (small determinants, bright, tend to cluster on
class-relevant regions), and the CDAM grid for the predicted or a chosen class. With several
``--num-gaussians`` (a flex model, docs/flex.md) it shows one column per budget instead: the
reconstruction and prediction of the model serving k, its ellipses, and the first k of the
Gaussians of one encoding at the largest k (the level of detail).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .data_utils import check_safetensors, rgb_targets
from .images import read_image, to_channels
from .rendering import render_gaussians
from .training.config import parse_kwargs
from .visualize import draw_ellipses, output_problem, save_columns, save_panels, to_pil

# Colour ramps as (position, rgb) anchors: a dark-to-bright sequential one and a diverging one.
SEQUENTIAL = ((0.0, (0.0, 0.0, 0.02)), (0.35, (0.45, 0.1, 0.5)), (0.7, (0.95, 0.4, 0.3)), (1.0, (1.0, 0.98, 0.75)))
DIVERGING = ((0.0, (0.15, 0.3, 0.8)), (0.5, (1.0, 1.0, 1.0)), (1.0, (0.8, 0.1, 0.1)))


def colormap(values: Tensor, ramp=SEQUENTIAL) -> Tensor:
    """Values in [0, 1], any shape ``[...]`` -> colours ``[..., 3]`` by linear interpolation."""
    positions = torch.tensor([p for p, _ in ramp], dtype=values.dtype, device=values.device)
    colours = torch.tensor([c for _, c in ramp], dtype=values.dtype, device=values.device)
    v = values.clamp(0, 1)
    i = torch.searchsorted(positions, v.contiguous(), right=True).clamp(1, len(ramp) - 1)
    t = ((v - positions[i - 1]) / (positions[i] - positions[i - 1]))[..., None]
    return colours[i - 1] * (1 - t) + colours[i] * t


def covariance_determinants(gaussians: Tensor) -> Tensor:
    """det(Sigma) = (sigma_x sigma_y)^2 per Gaussian: ``[B, k, 9]`` -> ``[B, k]``."""
    return (gaussians[..., 2] * gaussians[..., 3]).pow(2)


def determinant_map(gaussians: Tensor, size: tuple[int, int], backend: str = "auto") -> Tensor:
    """Render the Gaussians coloured by log det(Sigma), smallest brightest -> ``[B, 3, H, W]``."""
    log_det = covariance_determinants(gaussians).clamp_min(1e-20).log()
    lo, hi = log_det.amin(1, keepdim=True), log_det.amax(1, keepdim=True)
    smallness = 1 - (log_det - lo) / (hi - lo).clamp_min(1e-6)
    recoloured = torch.cat([gaussians[..., :5], colormap(smallness), gaussians[..., 8:]], dim=-1)
    return render_gaussians(recoloured, *size, backend=backend)


def cdam_scores(model, gaussians: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """CDAM relevance of each Gaussian for class ``target`` (default: the prediction).

    S_i = sum_j x_ij * d f_c / d x_ij over the token x_i that enters the classifier's last
    block. Returns ``(scores [B, k], target [B])``.
    """
    tokens = {}

    def keep_input(_module, args):
        args[0].retain_grad()
        tokens["x"] = args[0]

    handle = model.classifier.blocks[-1].register_forward_pre_hook(keep_input)
    try:
        with torch.enable_grad():
            logits = model.classify(gaussians.detach())
            if target is None:
                target = logits.argmax(dim=1)
            logits.gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    x = tokens["x"]
    return (x * x.grad).sum(-1)[:, 1:].detach(), target


def cdam_grid(gaussians: Tensor, scores: Tensor, grid: int = 16) -> Tensor:
    """Add each Gaussian's score to the cell of a ``grid`` x ``grid`` map holding its centre:
    ``[B, k, 9]``, ``[B, k]`` -> ``[B, grid, grid]`` (empty cells 0)."""
    cells = ((gaussians[..., 0:2] + 1) / 2 * grid).floor().long().clamp(0, grid - 1)  # [B, k, 2] (x, y)
    flat = cells[..., 1] * grid + cells[..., 0]
    out = scores.new_zeros(scores.shape[0], grid * grid).scatter_add_(1, flat, scores)
    return out.reshape(-1, grid, grid)


def explain(model, images: Tensor, targets: Tensor | None = None) -> dict[str, Tensor]:
    """Everything the figure shows for normalised ``images`` ``[B, 3, H, W]``: ``gaussians``,
    ``reconstruction``, ``det_map``, ``cdam`` grid ``[B, 16, 16]``, ``target`` and ``probs``."""
    model.eval()
    H, W = images.shape[-2:]
    with torch.no_grad():
        gaussians = model.encode(images)
        probs = model.classify(gaussians).softmax(-1)
        reconstruction = model.render(gaussians, (H, W))
        det = determinant_map(model.in_drawing_order(gaussians), (H, W), model.render_backend)
    scores, targets = cdam_scores(model, gaussians, targets)
    return dict(gaussians=gaussians, reconstruction=reconstruction, det_map=det, cdam=cdam_grid(gaussians, scores), target=targets, probs=probs)


def figure(image: Tensor, result: dict[str, Tensor], index: int = 0, class_name: str | None = None) -> list[tuple[str, Image.Image]]:
    """Titled panels for one image: ``image`` ``[3, H, W]`` in [0, 1] and one :func:`explain` result."""
    H, W = image.shape[-2:]
    cdam = result["cdam"][index]
    scale = cdam.abs().max().clamp_min(1e-12)
    heat = colormap(cdam / (2 * scale) + 0.5, DIVERGING).permute(2, 0, 1)
    heat = F.interpolate(heat[None], size=(H, W), mode="nearest")[0]
    target = int(result["target"][index])
    label = class_name or f"class {target}"
    return [
        ("input", to_pil(image)),
        ("reconstruction", to_pil(result["reconstruction"][index])),
        ("2-sigma ellipses", draw_ellipses(image, result["gaussians"][index])),
        ("det(Sigma): small = bright", to_pil(result["det_map"][index])),
        (f"CDAM: {label} ({result['probs'][index, target]:.0%})", to_pil(0.5 * heat + 0.5 * image.mean(0, keepdim=True))),
    ]


def explain_budgets(model, images: Tensor, budgets: list[int]) -> list[dict[str, Tensor]]:
    """For a flex model and normalised ``images`` ``[B, C, H, W]``, per budget k (in the order
    given): ``gaussians`` ``[B, k, 9]`` and ``reconstruction`` of the model serving k, its
    ``probs``, and ``prefix``: the rendering of the first k of the Gaussians of one encoding at
    the largest budget. The model serves its own k again afterwards."""
    model.eval()
    H, W = images.shape[-2:]
    serving, results = model.num_gaussians, []
    with torch.no_grad():
        try:
            model.set_num_gaussians(max(budgets))
            widest = model.encode(images)
            for k in budgets:
                model.set_num_gaussians(k)
                gaussians = widest if k == max(budgets) else model.encode(images)  # the largest is encoded once
                results.append(dict(gaussians=gaussians, reconstruction=model.render(gaussians, (H, W)),
                                    probs=model.classify(gaussians).softmax(-1), prefix=model.render(widest[:, :k], (H, W))))
        finally:
            model.set_num_gaussians(serving)
    return results


def budget_figure(image: Tensor, budgets: list[int], results: list[dict[str, Tensor]], class_names: list[str], index: int = 0):
    """The columns and row names of :func:`explain_budgets`' figure for one image ``[3, H, W]`` in [0, 1]."""
    columns = [("input", [to_pil(image), None, None])]
    for k, result in zip(budgets, results):
        probs = result["probs"][index]
        top = int(probs.argmax())
        columns.append((f"k={k}: {class_names[top]} ({probs[top]:.0%})",
                        [to_pil(result["reconstruction"][index]), draw_ellipses(image, result["gaussians"][index]),
                         to_pil(result["prefix"][index])]))
    return columns, ["encoded at k", "its ellipses", f"first k of {max(budgets)}"]


def check_weights_file(path: Path) -> None:
    """Raise a ``ValueError`` naming ``path`` unless it is a weights file (a complete one, for safetensors)."""
    if not path.is_file():
        raise ValueError(f"no weights file {path}")
    if path.suffix == ".safetensors":
        check_safetensors(path)


def main(argv: list[str] | None = None) -> None:
    import timm
    from timm.data import create_transform, resolve_model_data_config
    from timm.models import get_pretrained_cfg

    parser = argparse.ArgumentParser(
        prog="python -m timm_gvit.explain",
        description="Explain a GViT prediction: input, reconstruction, 2-sigma ellipses, det(Sigma) map "
        "and CDAM grid, side by side in one PNG.",
    )
    parser.add_argument("image", help="image file to explain")
    parser.add_argument("--model", default="gvit_nano.imagenette_64_v2", help="timm model name, tag, 'local-dir:PATH' or 'hf-hub:ORG/NAME' (default gvit_nano.imagenette_64_v2, whose weights ship with the package)")
    parser.add_argument("--pretrained", action="store_true", help="load the model's pretrained weights (implied by local-dir:/hf-hub: and by weights that ship with the package)")
    parser.add_argument("--checkpoint", help="weights file (.safetensors or .pth) or exported folder to load")
    parser.add_argument("--random-weights", action="store_true", help="explain an untrained model (random weights); without it, a model with no weights is refused")
    parser.add_argument("--class", dest="target", type=int, help="class index to explain (default: the predicted class)")
    parser.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="extra create_model kwargs, e.g. num_classes=10 img_size=64")
    parser.add_argument("--num-gaussians", metavar="K[,K...]", help="the Gaussian budget(s) to explain a flex model at (docs/flex.md): one k "
                        "gives the usual figure at k, several (e.g. 16,32,64) one column per budget (default: the model's own k)")
    parser.add_argument("--out", default="explain.png", help="output PNG (default explain.png)")
    args = parser.parse_args(argv)

    # everything that can be checked before the model loads
    try:
        photo = read_image(Path(args.image))
    except ValueError as exc:
        parser.error(str(exc))
    if args.target is not None and args.target < 0:
        parser.error(f"--class must be a class index >= 0, got {args.target}")
    if output_problem(args.out):
        parser.error(output_problem(args.out))
    try:
        kwargs = parse_kwargs(args.model_kwargs)
    except ValueError as exc:
        parser.error(str(exc))
    budgets = None
    if args.num_gaussians is not None:
        try:
            budgets = [int(k) for k in args.num_gaussians.split(",")]
        except ValueError:
            parser.error(f"--num-gaussians must be Gaussian counts separated by commas, e.g. 16,32,64, got {args.num_gaussians!r}")
    shipped = get_pretrained_cfg(args.model, allow_unregistered=True) if "." in args.model else None
    pretrained = args.pretrained or args.model.startswith(("local-dir:", "hf-hub:")) or bool(shipped and shipped.file and Path(shipped.file).is_file())
    weights_file = None
    if args.checkpoint:
        path = Path(args.checkpoint)
        if path.is_dir():
            args.model, pretrained = f"local-dir:{path}", True
        else:
            weights_file = path
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
            pretrained = True
    if args.model.startswith("local-dir:"):
        folder = Path(args.model.removeprefix("local-dir:"))
        if not (folder / "config.json").is_file():
            parser.error(f"{folder} is not an export folder (no config.json)")
        weights_file = folder / "model.safetensors"
    if weights_file is not None:
        try:
            check_weights_file(weights_file)
        except ValueError as exc:
            parser.error(str(exc))
    if not pretrained:
        if not args.random_weights:
            parser.error(f"--model {args.model} has no trained weights here, and explaining random weights shows nothing; pass "
                         "--checkpoint FILE_OR_EXPORT_FOLDER, --model local-dir:EXPORT_FOLDER, a tag with weights "
                         "(gvit_nano.imagenette_64_v2), or --random-weights to explain the untrained model anyway")
        print(f"WARNING: explaining {args.model} with RANDOM weights (--random-weights): the figure shows an untrained model")

    try:
        model = timm.create_model(args.model, pretrained=pretrained, **kwargs).eval()
    except ValueError as exc:  # the model's own checks of its arguments, config and weights
        parser.error(f"--model {args.model}: {exc}")
    if args.target is not None and args.target >= model.num_classes:
        parser.error(f"--class {args.target}: the model has {model.num_classes} classes (0..{model.num_classes - 1})")
    for k in budgets or []:
        try:
            model._check_budget("--num-gaussians", k)
        except ValueError as exc:
            parser.error(str(exc))
    config = resolve_model_data_config(model)
    transform = create_transform(**config)
    images = transform(to_channels(photo, model.in_chans))[None]
    names = model.pretrained_cfg.get("label_names") or [str(i) for i in range(model.num_classes)]
    if budgets is not None and len(budgets) > 1:
        results = explain_budgets(model, images, budgets)
        for k, result in zip(budgets, results):
            p, i = result["probs"][0].max(0)
            print(f"k={k}: {names[int(i)]} ({float(p):.1%})")
        columns, rows = budget_figure(rgb_targets(images, config["mean"], config["std"])[0], budgets, results, names)
        print(f"wrote {save_columns(columns, rows, args.out, cell=max(160, images.shape[-1]))}")
        return
    if budgets is not None:
        model.set_num_gaussians(budgets[0])
    result = explain(model, images, None if args.target is None else torch.tensor([args.target]))
    top = result["probs"][0].topk(min(5, model.num_classes))
    print("top classes:", ", ".join(f"{names[i]} ({p:.1%})" for p, i in zip(top.values.tolist(), top.indices.tolist())))
    class_name = names[int(result["target"][0])]
    path = save_panels(figure(rgb_targets(images, config["mean"], config["std"])[0], result, class_name=class_name), args.out, height=max(256, images.shape[-1]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
