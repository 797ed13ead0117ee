"""Build a timm-compatible export folder from a trained model, and upload it.

An export folder holds ``config.json`` (architecture, model kwargs, pretrained cfg, label names),
``model.safetensors``, ``train_config.yaml`` and a ``README.md`` model card. Both
``timm.create_model('local-dir:FOLDER', pretrained=True)`` and, once uploaded,
``'hf-hub:ORG/NAME'`` load it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from string import Template

import torch
import yaml
from timm.models import save_for_hf

TEMPLATE = Path(__file__).with_name("model_card_template.md")


class PushError(RuntimeError):
    """Uploading to the Hub failed; the message says why. The local folder is left as it was."""


def render_model_card(values: dict) -> str:
    """Fill the model card template; every placeholder must have a value."""
    return Template(TEMPLATE.read_text()).substitute({k: str(v) for k, v in values.items()})


def forward_gflops(model, num_gaussians: int | None = None) -> float:
    """FLOPs of one forward pass on one image of the model's input size, in billions; a flex
    model's at ``num_gaussians`` (default: the k it serves, which it serves again afterwards)."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    was_training, serving = model.training, model.num_gaussians
    model.eval()
    try:
        if num_gaussians is not None:
            model.set_num_gaussians(num_gaussians)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, model.in_chans, *model.img_size, device=param.device, dtype=param.dtype))
    finally:
        model.set_num_gaussians(serving)
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def export_model(model, folder: str | Path, *, run: dict, repo_name: str | None = None, card: dict | None = None) -> Path:
    """Write ``model`` and the card for ``run`` to ``folder``.

    ``run`` holds the resolved training config (``config``), the data (``dataset``,
    ``class_names``, ``train_size``, ``val_size``), the ``schedule`` in steps, ``global_batch``,
    ``lr`` and the final validation ``metrics`` (``top1``, ``top5``, ``psnr``). ``card`` replaces
    values of the model card (see :func:`model_card_values`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, folder, model_config={"label_names": run["class_names"]}, model_args=model.architecture_args(),
                safe_serialization=True)
    config = _without_local_paths(run["config"])
    licence = config.get("license")
    exported = json.loads((folder / "config.json").read_text())
    # the pretrained cfg the model was built from describes other weights: their tag, licence and files
    exported["pretrained_cfg"] = {k: v for k, v in exported["pretrained_cfg"].items() if k not in ("file", "url", "hf_hub_id", "source", "license")}
    exported["pretrained_cfg"].update(tag=export_tag(repo_name or folder.parent.name, model.pretrained_cfg["architecture"]),
                                      **({"license": licence} if licence else {}))
    (folder / "config.json").write_text(json.dumps(exported, indent=4))
    (folder / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "README.md").write_text(render_model_card({**model_card_values(model, run, repo_name or folder.name), **(card or {})}))
    return folder


def model_card_values(model, run: dict, repo_name: str) -> dict:
    """The model card's values for ``model`` trained by ``run`` (as :func:`export_model` takes it), published as
    ``repo_name``: a Hub repository's card, loaded with ``hf-hub:`` and under the training data's terms."""
    config, schedule, metrics = _without_local_paths(run["config"]), run["schedule"], run["metrics"]
    licence = config.get("license")
    cfg = model.pretrained_cfg
    dataset = _public_dataset(run["dataset"])
    return {
        "repo_name": repo_name,
        "license_line": f"license: {licence}\n" if licence else "",
        "datasets_block": "" if dataset != run["dataset"] else f"datasets:\n- {dataset}\n",
        "package": "timm-gvit (a timm model-zoo plugin)",
        "dataset": dataset,
        "model": config["model"],
        "params_m": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}",
        "gflops": f"{forward_gflops(model):.2f}",
        "img_size": model.img_size[0],
        "mean": tuple(round(m, 3) for m in cfg["mean"]),
        "std": tuple(round(s, 3) for s in cfg["std"]),
        "num_gaussians": model.num_gaussians,
        "num_classes": model.num_classes,
        # as save_for_hf writes them to config.json
        "model_kwargs": json.dumps({"num_classes": model.num_classes, **model.architecture_args(), "global_pool": model.global_pool}),
        "train_size": run["train_size"],
        "val_size": run["val_size"],
        "global_batch": run["global_batch"],
        "recon_steps": schedule["recon_steps"],
        "dssim_from": schedule["dssim_from"],
        "classifier_steps": schedule["classifier_steps"],
        "joint_steps": schedule["joint_steps"],
        "guidance_steps": schedule["guidance_steps"],  # 0 when gamma is 0: the Schedule decides
        "guidance_every": schedule["guidance_every"],
        "gamma": schedule["gamma"],
        "pixel_loss": config["pixel_loss"].upper(),
        "lambda_perc": config["lambda_perc"],
        "betas": tuple(config["betas"]),
        "weight_decay": config["weight_decay"],
        "lr": f"{run['lr']:.3g}",
        "base_lr": config["base_lr"],
        "warmup_steps": run["warmup_steps"],
        "mixed_precision": run["mixed_precision"],
        "seed": config["seed"],
        "encoder_origin": _weights_origin(config),
        "results_intro": "Measured on the validation split at the end of training:",
        "top1": f"{metrics['top1']:.2f}",
        "top5": f"{metrics['top5']:.2f}",
        "psnr": f"{metrics['psnr']:.2f}",
        "budgets_section": budgets_section(model, metrics),
        "create_model": f'timm.create_model("hf-hub:{repo_name}", pretrained=True).eval()   # or "local-dir:PATH"',
        "licence_text": (f"The code is Apache-2.0. These weights were trained on {dataset} and inherit its terms of use:\n"
                         "check them before you use the model. Weights trained on ImageNet or its subsets (such as\n"
                         "Imagenette) are for non-commercial research and education only."),
    }


def budgets_section(model, metrics: dict) -> str:
    """A flex model's card section: the budgets it serves and, where ``metrics`` has them
    (``top1@k``, ``psnr@k``), its accuracy at each; empty for a model of one k."""
    if not model.budgets:
        return ""
    low, high = model.budgets[0], model.budgets[-1]
    contiguous = len(model.budgets) > 4 and list(model.budgets) == list(range(low, high + 1))
    trained_at = f"every k from {low} to {high}" if contiguous else ", ".join(map(str, model.budgets))
    lines = ["", "## Gaussian budgets", "",
             f"One set of weights for every number of Gaussians from {low} to {high} (trained at "
             f"{trained_at}): choose k when you load it, "
             f"`timm.create_model(..., pretrained=True, num_gaussians=k)`, or later, `model.set_num_gaussians(k)`. "
             f"A smaller k costs less: the encoder runs over the patches and k Gaussian tokens, the classifier over k.", ""]
    rows = [f"| {k} | {metrics[f'top1@{k}']:.2f} % | {metrics[f'psnr@{k}']:.2f} dB | {forward_gflops(model, k):.3f} |"
            for k in model.budgets if f"top1@{k}" in metrics]
    if rows:
        lines += ["| k | top-1 | reconstruction PSNR | forward GFLOPs / image |", "| --- | --- | --- | --- |", *rows, ""]
    return "\n".join(lines) + "\n"


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an export folder to the Hub repository ``repo_id`` (created if needed); returns its URL.

    The token comes from ``token``, ``HF_TOKEN`` or ``huggingface-cli login``. Raises
    :class:`PushError` with the reason on any failure.
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise PushError(f"{folder} is not an export folder (needs config.json and model.safetensors)")
    if not repo_id or repo_id.count("/") != 1:
        raise PushError(f"--hub-model-id must look like ORG/NAME, got {repo_id!r}")
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `huggingface-cli login`, then push again with "
                        f"`gvit-publish {folder} --hub-model-id {repo_id}`")
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload GViT model from timm-gvit")
    except Exception as exc:
        raise PushError(f"pushing {folder} to the Hub repository {repo_id} failed: {type(exc).__name__}: {exc}") from exc
    return str(url)


#: Options whose values are paths on the machine that trained: an export keeps their last part only.
LOCAL_PATH_OPTIONS = ("dataset", "output_dir", "init_from", "init_encoder_from", "resume")


def export_tag(name: str, architecture: str) -> str:
    """The pretrained tag of an export named ``name`` (a Hub ``ORG/NAME``, or the run folder's name):
    the part after ``ARCH.`` when it has one, lower case, with ``_`` for anything but letters and digits."""
    name = name.rsplit("/", 1)[-1].removeprefix(f"{architecture}.")
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "custom"


def _public_dataset(dataset: str) -> str:
    """A dataset as a public card may name it: a local folder by its own name only."""
    return f"{Path(dataset).name} (a local folder)" if Path(dataset).exists() else dataset


#: Folder and file names the trainer gives every run alike: a path ending in them is published
#: with the name of the run folder above them (``final-k64/export``, not ``export``)
RUN_PARTS = ("export", "checkpoints", "model.safetensors")


def _public_path(value: str) -> str:
    """A local path cut to what names it: its last part, or from its run folder on (``runs/a/export``
    -> ``a/export``; ``runs/a/checkpoints/step-00000100`` -> ``a/checkpoints/step-00000100``)."""
    parts = Path(value).parts[1:] if Path(value).anchor else Path(value).parts
    keep = 1
    while keep < len(parts) and (parts[-keep] in RUN_PARTS or parts[-keep].startswith("step-")):
        keep += 1
    return "/".join(parts[-keep:])


def _without_local_paths(config: dict) -> dict:
    """The run's options as an export publishes them: local paths cut to the part that names them."""
    public = dict(config)
    for key in LOCAL_PATH_OPTIONS:
        value = public.get(key)
        if isinstance(value, str) and (key != "dataset" or Path(value).exists()):
            public[key] = _public_path(value)
    teacher = public.get("distill_from")  # a timm name, hf-hub:ORG/NAME, or local-dir: and a path
    if isinstance(teacher, str) and teacher.startswith("local-dir:"):
        public["distill_from"] = "local-dir:" + _public_path(teacher.removeprefix("local-dir:"))
    return public


def _weights_origin(config: dict) -> str:
    """The card's sentences on where the weights started and what taught them besides the labels."""
    if config.get("init_from"):
        origin = (f"The model started from `{config['init_from']}` (`--init-from`), whose own training is not counted "
                  "in the steps above.")
    elif config.get("init_encoder_from"):
        origin = (f"The encoder started from `{config['init_encoder_from']}` (`--init-encoder-from`), whose own "
                  "training is not counted in the steps above.")
    else:
        origin = "All weights started from random initialisation."
    if config.get("distill_from"):
        origin += (f" The classification losses learned from `{config['distill_from']}`'s predictions too (`--distill-from`, weight "
                   f"{config.get('distill_weight')}), whose own training is not counted in the steps above.")
    return origin
