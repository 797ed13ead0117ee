"""experiments/study.py trains a chain again (``--again TAG``, e.g. on another CPU) under its own names, so that the
first training's folders and results entries stay as they were."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "experiments" / "study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("gvit_study_again", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STUDY), *args, "--dry-run"], capture_output=True, text=True, timeout=120)


def _flag(line: str, flag: str) -> str:
    words = line.split()
    return words[words.index(flag) + 1]


def test_again_retrains_the_whole_chain_under_the_tag(study):
    out = _dry_run("--only", "final-k8-g0", "--again", "cpu2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [Path(_flag(line, "--output-dir")).name for line in lines] == ["encoder-k8-r2@cpu2", "encoder-k8-long@cpu2", "final-k8-g0@cpu2"]
    assert "--init-encoder-from" not in lines[0]
    assert [Path(_flag(line, "--init-encoder-from")).parent.name for line in lines[1:]] == ["encoder-k8-r2@cpu2", "encoder-k8-long@cpu2"]
    runs = {r.name: r for r in study.all_runs()}
    for name in ("encoder-k8-r2", "encoder-k8-long", "final-k8-g0"):  # the first training's flags
        assert study.again(runs[name], "cpu2").flags == runs[name].flags


def test_again_starts_from_an_export_the_repository_keeps_as_the_first_training_did():
    out = _dry_run("--only", "shipped-dose-g0.1", "--again", "cpu2")
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    assert Path(_flag(line, "--output-dir")).name == "shipped-dose-g0.1@cpu2"
    assert Path(_flag(line, "--init-from")) == ROOT / "experiments" / "checkpoints" / "final-k64-g0"


@pytest.mark.parametrize("args, message", [(["--again", "cpu2"], "--again retrains the runs that --only selects"),
                                           (["--only", "final-k8-g0", "--again", "a@b"], "a tag has no '@'")])
def test_again_refuses_what_it_cannot_name(args, message):
    out = _dry_run(*args)
    assert out.returncode == 2 and message in out.stderr


def test_collect_keeps_the_first_training_and_adds_the_one_trained_again(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(study, "RESULTS", tmp_path / "trainer_runs.json")
    first = {"final-k8-g0": {"final": {"top1": 44.5}, "starts_from": "encoder-k8-long"}}
    study.RESULTS.write_text(json.dumps(first))
    again = study.RUNS / "final-k8-g0@cpu2"
    again.mkdir(parents=True)
    (again / "metrics.json").write_text(json.dumps({"final": {"top1": 42.0}, "epochs": []}))
    (again / "run_info.json").write_text(json.dumps({"steps_per_epoch": 93, "hardware": [{"cpu_capability": "AVX512"}]}))
    (study.RUNS / "not-a-run@cpu2").mkdir()  # a folder of no known run is not collected
    out = study.collect(study.all_runs())
    assert out["final-k8-g0"] == first["final-k8-g0"]
    entry = out["final-k8-g0@cpu2"]
    assert entry["final"] == {"top1": 42.0} and entry["again_of"] == "final-k8-g0"
    assert entry["starts_from"] == "encoder-k8-long@cpu2" and entry["hardware"] == [{"cpu_capability": "AVX512"}]
    assert "--output-dir runs/imagenette/final-k8-g0@cpu2 " in entry["command"]
    assert entry["command"].endswith("--init-encoder-from runs/imagenette/encoder-k8-long@cpu2/export")
    assert not any(name.startswith("not-a-run") for name in out)


def test_a_run_that_starts_from_a_run_trained_again_names_the_command_that_trains_it(study):
    runs = study.all_runs()
    dose = next(r for r in runs if r.name == "dose-k64-s1")
    assert dose.after == "final-k64-g0-s1@avx512"
    with pytest.raises(SystemExit, match=r"study.py --only final-k64-g0-s1 --again avx512"):
        study.chain_before([dose], runs, lambda name: False)  # as where runs/ holds no export of it


def test_the_seed_0_fixed_dose_at_k64_starts_from_the_kept_teacher_and_trains_nothing_before_it(study):
    runs = study.all_runs()
    dose = next(r for r in runs if r.name == "dose-k64-s0")
    assert dose.after == "final-k64-g0" and dose.init_flag == "--init-from"
    assert study.start_from(dose.after) == ROOT / "experiments" / "checkpoints" / "final-k64-g0"  # the kept float16 export
    assert study.chain_before([dose], runs, study.kept) == set()  # a fixed start: no chain to train first
    flags = dose.flags
    assert flags[flags.index("--seed") + 1] == "0" and flags[flags.index("--num-gaussians") + 1] == "64"


def test_the_taught_dose_differs_from_the_shipped_dose_in_its_teacher_alone(study):
    runs = {r.name: r for r in study.all_runs()}
    for seed in (0, 1):
        taught, plain = runs[f"dose-flex-teacherv2-s{seed}"], runs[f"dose-flex-teacher64-s{seed}"]
        assert taught.after == plain.after and taught.init_flag == plain.init_flag == "--init-from"
        assert taught.flags == [*plain.flags, "--distill-from", "gvit_nano.imagenette_64_v2"]
        assert taught.about["seed"] == seed and taught.about["dose_distill_from"] == "gvit_nano.imagenette_64_v2"


def test_the_seed_0_fixed_dose_again_at_k64_differs_from_the_first_in_its_start_alone(study):
    runs = {r.name: r for r in study.all_runs()}
    again, first = runs["dose-k64-s0-r2"], runs["dose-k64-s0"]
    assert again.after == "final-k64-g0-r2@avx512" and first.after == "final-k64-g0"
    assert again.flags == first.flags and again.init_flag == first.init_flag == "--init-from"
    assert again.about == {**first.about, "start": "final-k64-g0-r2@avx512"}


def test_the_third_seed_differs_from_the_second_in_its_seed_alone(study):
    """Seed 2 of the taught flex model and of the fixed k = 64 model, before and through the dose: the same flags,
    encoders and teacher as seed 1's, the seed apart (and the dose's start, its own seed's model)."""
    runs = {r.name: r for r in study.all_runs()}

    def seed(run, value):
        flags = list(run.flags)
        flags[flags.index("--seed") + 1] = value
        return flags
    for second, third in (("final-flex-teacher64-g0-s1-r2", "final-flex-teacher64-g0-s2"), ("final-k64-g0-s1", "final-k64-g0-s2"),
                          ("dose-flex-teacher64-s1", "dose-flex-teacher64-s2"), ("dose-k64-s1", "dose-k64-s2")):
        a, b = runs[second], runs[third]
        assert seed(a, "2") == b.flags and a.init_flag == b.init_flag and b.about["seed"] == 2
        assert {**a.about, "seed": 2, **({"start": b.after} if "start" in a.about else {})} == b.about
    assert runs["final-k64-g0-s2"].after == "encoder-k64-long-r2@avx512"  # the encoder training of seeds 0 (-r2) and 1
    assert runs["final-flex-teacher64-g0-s2"].after == runs["final-flex-teacher64-g0-s1-r2"].after
    assert runs["dose-k64-s2"].after == "final-k64-g0-s2" and runs["dose-flex-teacher64-s2"].after == "final-flex-teacher64-g0-s2"
