"""The documents say what the repository holds: every figure in README.md, MODEL_CARD.md and
docs/study.md is the one experiments/report.py computes from the committed results and benchmark
JSON (so no two documents can disagree on one), every link resolves, the README's recipe is the
study's, and the README's snippet classifies a photo with the shipped weights."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER_DOCS = ["README.md", "MODEL_CARD.md", "CHANGELOG.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report():
    return _module(ROOT / "experiments" / "report.py", "gvit_report")


@pytest.fixture(scope="module")
def built(report):
    return report.build()


@pytest.mark.parametrize("document", ["README.md", "MODEL_CARD.md", "docs/study.md", "docs/flex.md"])
def test_every_marked_figure_is_the_one_its_results_give(report, built, document):
    """Rewriting a document from the committed JSON changes nothing; a stale table or fact is named."""
    _, sections, facts = built
    assert document in report.DOCUMENTS
    text = (ROOT / document).read_text()
    blocks = re.findall(r"<!-- results:([\w.]+) -->", text)
    assert set(blocks) <= set(sections), f"{document} has tables report.py does not make: {set(blocks) - set(sections)}"
    stale = [name for name in blocks
             if re.search(report.BLOCK.format(name=name), text, re.S).group(0)
             != re.search(report.BLOCK.format(name=name), report.fill_text(text, {name: sections[name]}, facts), re.S).group(0)]
    stale += [f"fact:{name} ({shown!r} -> {facts.get(name)!r})" for name, shown in report.FACT.findall(text) if facts.get(name) != shown]
    assert not stale, f"{document} is out of date with experiments/results and benchmarks/reference: {stale}; run experiments/report.py"


def test_an_unknown_fact_is_an_error_not_a_silent_gap(report, built):
    _, sections, facts = built
    with pytest.raises(KeyError, match="unknown fact 'no_such_figure'"):
        report.fill_text("<!-- fact:no_such_figure -->1.0<!-- /fact -->", sections, facts)


def test_the_dose_means_set_each_kind_against_the_fixed_models_of_its_own_seeds_at_each_budget(report):
    """A seed trained at some budgets only (seed 2: the fixed models at k = 64 alone) joins the means there alone, and a kind
    trained at fewer seeds than the fixed models is set against their mean over its seeds, not over all of theirs."""
    def by_k(values):
        return {k: {"run": v and f"dose-k{k}", "before": None if v is None else v - 5, "top1": v} for k, v in zip(report.FLEX_BUDGETS, values)}
    data = {"fixed": {1: by_k([40, 50, 52, 56]), 0: by_k([42, 52, 54, 58]), 2: by_k([None, None, None, 60])},
            "flex": {1: {report.UNTAUGHT: by_k([45, 51, 53, 55]), report.TAUGHT: by_k([46, 52, 54, 57])},
                     0: {report.UNTAUGHT: by_k([47, 53, 55, 57]), report.TAUGHT: by_k([48, 54, 56, 59])},
                     2: {report.TAUGHT: by_k([50, 56, 58, 61])}}}
    means = report.dose_means(data)
    assert means[report.FIXED]["seeds"] == {8: [0, 1], 16: [0, 1], 32: [0, 1], 64: [0, 1, 2]}
    assert means[report.FIXED]["top1"] == {8: 41, 16: 51, 32: 53, 64: 58}
    # the untaught kind has no seed 2: at 64 it meets the fixed models' mean over seeds 0 and 1 (57), not 0 to 2 (58)
    assert means[report.UNTAUGHT]["seeds"][64] == [0, 1] and means[report.UNTAUGHT]["fixed"][64]["top1"] == 57
    assert means[report.TAUGHT]["top1"][64] == 59 and means[report.TAUGHT]["fixed"][64]["top1"] == 58
    assert means[report.TAUGHT]["top1"][8] == 47  # seed 2's k = 8 has no fixed model to meet, so it is left out
    assert report.seeds_by_budget(means[report.TAUGHT]["seeds"]) == "0, 1 and 2 at k = 64; 0 and 1 at k = 8 / 16 / 32"
    data["mean"] = means
    words = report.flex_dose_gap(data)
    assert words.startswith("+5.0 / +1.0 / +1.0 / -1.0 (the mean of seeds 0 and 1: seed 1 +5.0 / +1.0 / +1.0 / -1.0,")
    assert "+6.0 / +2.0 / +2.0 / +1.0 (the mean of seeds 0, 1 and 2 at k = 64; 0 and 1 at k = 8 / 16 / 32:" in words
    assert "seed 2 not run / not run / not run / +1.0)" in words  # seed 2's fixed models at k = 8 to 32 were not trained


def test_the_headline_figures_appear_once_in_each_document_and_agree(built):
    """The shipped weights' accuracy and the dose's evidence, where README.md and MODEL_CARD.md both state them."""
    _, _, facts = built
    for name in ("shipped_weights", "shipped_gain", "dose_evidence"):
        for document in ("README.md", "MODEL_CARD.md"):
            assert f"<!-- fact:{name} -->{facts[name]}<!-- /fact -->" in (ROOT / document).read_text(), (name, document)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("document", USER_DOCS)
def test_links_resolve(document):
    """Every relative link (and #anchor) of a user-facing document points at something that exists."""
    path = ROOT / document
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{document}: broken links {broken}"


@pytest.mark.parametrize("document", USER_DOCS)
def test_no_issue_numbers_in_user_facing_text(document):
    assert not re.search(r"\b[Ii]ssues? \d+", (ROOT / document).read_text()), document


def test_the_readme_is_a_model_page():
    """A table of contents whose entries are the sections, the set-up commands near the top, and a length read in minutes."""
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; details belong in docs/"
    contents = text[text.index("**Contents:**"):].split("\n\n", 1)[0]
    assert {m for m in re.findall(r"\(#([\w-]+)\)", contents)} == {_slug(h) for h in re.findall(r"^## (.+)$", text, re.M)}
    assert text.index("<!-- test-command -->") < text.index("## Classify a photo") < text.index("## Train")


def _recipe_commands() -> list[list[str]]:
    """The README's small-scale recipe: the trainer commands of its bash block, continuation lines joined and $C expanded."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The recipe that works at small scale"):text.index("### The paper's recipe")]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    config = re.search(r"^C=(\S+)", block, re.M).group(1)
    return [shlex.split(line.replace("$C", config), comments=True)[2:] for line in block.splitlines()
            if line.startswith("python train_gvit.py")]


def test_the_readme_recipe_is_the_one_the_study_measured(monkeypatch):
    """Each of the README's three recipe commands resolves to the same training config as the study's run behind the
    evidence (the recipe group of experiments/study.py), but for the run folders, the start paths and the seed."""
    import timm

    from timm_gvit.training.config import parse_config

    study = _module(ROOT / "experiments" / "study.py", "gvit_study")
    runs = {r.name: r for r in study.all_runs()}
    monkeypatch.chdir(ROOT)

    def resolved(argv: list[str]) -> dict:
        config = vars(parse_config(argv)).copy()
        for key in ("output_dir", "init_from", "init_encoder_from", "seed"):
            config.pop(key, None)
        if not config["guidance_epochs"]:
            config.pop("gamma")  # no guidance step: gamma is unused
        if config["num_gaussians"] is None:  # the model's own
            config["num_gaussians"] = timm.create_model(config["model"]).num_gaussians
        return config

    readme = _recipe_commands()
    assert len(readme) == 3
    for argv, name in zip(readme, ("encoder-k64-e1", "sweep-k64-e1", "dose-g0.1-e1")):
        run = runs[name]
        assert resolved(argv) == resolved(["--config", str(study.CONFIG), *run.flags]), name
        assert (run.init_flag if run.after else None) == next((a for a in argv if a.startswith("--init")), None), name


def test_the_readme_snippet_classifies_a_photo_with_the_shipped_weights(tmp_path):
    """The 'Classify a photo' block, run as written on a bundled validation photo, prints a class and a probability."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Classify a photo"):text.index("## Models")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    photo = next((ROOT / "tests" / "data" / "imagenette-val" / "n03888257").glob("*"))  # a parachute
    (tmp_path / "photo.jpg").write_bytes(photo.read_bytes())
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    label, probability = out.stdout.rsplit(" ", 1)
    assert label == "parachute" and probability.strip().endswith("%")
