"""The weights that ship with the package load like any timm model's, offline, and score what the
model card says on the validation images bundled with the tests."""

import re
from pathlib import Path

import pytest
import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from torchvision.datasets import ImageFolder

import timm_gvit  # noqa: F401
from timm_gvit.data_utils import unnormalize

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "tests" / "data" / "imagenette-val"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """gvit_nano.imagenette_64_v2 created with pretrained=True while the Hub is unreachable."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("empty-hf-home")))
        return timm.create_model("gvit_nano.imagenette_64_v2", pretrained=True).eval()


def card_claim() -> tuple[int, int]:
    """'N of the M bundled validation images' as MODEL_CARD.md states it."""
    match = re.search(r"classifies (\d+) of the (\d+) validation images bundled", (ROOT / "MODEL_CARD.md").read_text())
    assert match, "MODEL_CARD.md must state how many bundled validation images the shipped weights classify correctly"
    return int(match.group(1)), int(match.group(2))


def test_shipped_weights_load_offline_with_their_config(shipped):
    cfg = shipped.pretrained_cfg
    assert cfg["tag"] == "imagenette_64_v2" and cfg["input_size"] == (3, 64, 64) and len(cfg["label_names"]) == 10
    assert shipped.num_classes == 10 and shipped.num_gaussians == 64
    random = timm.create_model("gvit_nano")
    assert not torch.equal(shipped.classifier.head.weight, random.classifier.head.weight)


def test_packaged_folder_describes_its_own_weights(shipped):
    """The packaged config.json and card name the tag, its licence and the accuracy measured on these weights."""
    import json

    import yaml

    folder = Path(shipped.pretrained_cfg["file"]).parent
    exported = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert exported["tag"] == "imagenette_64_v2" and exported["license"] == shipped.pretrained_cfg["license"] == "other"
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "other" and front["license_name"] == "imagenet-terms-of-access"
    assert yaml.safe_load((folder / "train_config.yaml").read_text())["license"] == "other"
    measured = json.loads((ROOT / "experiments" / "results" / "shipped_weights.json").read_text())["val"]
    for metric, unit in (("top1", "%"), ("top5", "%"), ("psnr", "dB")):
        assert re.search(rf"\| {f'{measured[metric]:.2f}'} {unit} \|", card), metric
    assert 'timm.create_model("gvit_nano.imagenette_64_v2", pretrained=True)' in card and "hf-hub:" not in card


def test_shipped_weights_score_the_card_accuracy_on_bundled_validation_images(shipped):
    correct_claimed, total_claimed = card_claim()
    config = resolve_model_data_config(shipped)
    images = ImageFolder(str(BUNDLED), transform=create_transform(**config))
    assert len(images) == total_claimed and len(images.classes) == 10
    batch = torch.stack([images[i][0] for i in range(len(images))])
    labels = torch.tensor(images.targets)
    with torch.no_grad():
        predictions = shipped(batch).argmax(1)
    assert (predictions == labels).sum().item() == correct_claimed
    # at least twice chance (10%), and the Gaussians still reconstruct the photographs
    assert correct_claimed / total_claimed >= 0.2
    with torch.no_grad():
        rendered = shipped.render(shipped.encode(batch))
    mse = (rendered - unnormalize(batch, config["mean"], config["std"])).pow(2).mean()
    assert -10 * torch.log10(mse) > 14.0


def test_explain_command_uses_the_shipped_weights_and_class_names(tmp_path, capsys):
    from PIL import Image

    from timm_gvit.explain import main

    photo = BUNDLED / "n03888257" / "ILSVRC2012_val_00001440.jpg"  # a parachute the shipped weights are sure of
    out = tmp_path / "explain.png"
    main([str(photo), "--out", str(out)])
    printed = capsys.readouterr().out
    top = re.search(r"top classes: ([^(]+) \((\d+\.\d)%\)", printed)  # the predicted class first, with its probability
    assert top and top.group(1) == "parachute" and float(top.group(2)) > 90, printed
    assert Image.open(out).width > 5 * 256


# ------------------------------------------------------------------ the flex tag: one model for k = 8 to 64
FLEX_TAG = "gvit_nano.imagenette_64_flex"


@pytest.fixture(scope="module")
def shipped_flex(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("empty-hf-home")))
        return timm.create_model(FLEX_TAG, pretrained=True).eval()


def test_the_flex_tag_loads_offline_and_serves_each_budget(shipped_flex):
    assert shipped_flex.budgets == (8, 16, 32, 64) and shipped_flex.num_gaussians == 64
    assert shipped_flex.pretrained_cfg["budgets"] == [8, 16, 32, 64] and shipped_flex.pretrained_cfg["tag"] == "imagenette_64_flex"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k in (8, 16, 32, 64):
            served = timm.create_model(FLEX_TAG, pretrained=True, num_gaussians=k).eval()
            shipped_flex.set_num_gaussians(k)
            assert served.encode(x).shape == (2, k, 9) and torch.equal(served(x), shipped_flex(x))
        shipped_flex.set_num_gaussians(64)
    with pytest.raises(ValueError, match="outside the budgets"):
        timm.create_model(FLEX_TAG, pretrained=True, num_gaussians=4)


def test_each_tag_builds_the_architecture_its_weights_were_exported_with():
    """create_model(tag) builds from the variant's defaults and the tag's TAG_MODEL_ARGS, not from the
    bundled config.json: the two must agree (a render order or budgets that differ load the same
    tensors and give silently wrong images)."""
    import json

    for tag in timm.list_pretrained("gvit_*"):
        model = timm.create_model(tag, pretrained=False)
        exported = json.loads((Path(timm.models.get_pretrained_cfg(tag).file).parent / "config.json").read_text())
        built = {"num_classes": model.num_classes, "global_pool": model.global_pool, **model.architecture_args()}
        differ = {key: (built.get(key), exported["model_args"].get(key)) for key in built.keys() | exported["model_args"].keys()
                  if built.get(key) != exported["model_args"].get(key)}
        assert not differ, (tag, differ)


def test_the_flex_card_and_results_agree_with_the_weights(shipped_flex):
    import json

    measured = json.loads((ROOT / "experiments" / "results" / "shipped_flex_weights.json").read_text())
    card = (Path(shipped_flex.pretrained_cfg["file"]).parent / "README.md").read_text()
    assert f'timm.create_model("{FLEX_TAG}", pretrained=True)' in card and "## Gaussian budgets" in card
    for k, values in measured["val_by_budget"].items():
        assert re.search(rf"\| {k} \| {values['top1']:.2f} % \| {values['psnr']:.2f} dB \|", card), k
    assert measured["val_by_budget"]["64"]["top1"] == measured["val"]["top1"]
    # the bundled validation images, classified at k = 64 as the results file says
    config = resolve_model_data_config(shipped_flex)
    images = ImageFolder(str(BUNDLED), transform=create_transform(**config))
    batch, labels = torch.stack([images[i][0] for i in range(len(images))]), torch.tensor(images.targets)
    with torch.no_grad():
        correct = (shipped_flex(batch).argmax(1) == labels).sum().item()
    assert correct == measured["bundled"]["correct"] and correct / len(images) >= 0.2
