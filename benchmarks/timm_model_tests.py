"""Run timm's own model test suite (``tests/test_models.py``) against the gvit models, treated as
timm treats its ViTs, and keep the log and a JSON summary.

timm's tests are not in its pip package: pass a checkout of timm's repository (``--timm-src``,
the folder holding ``tests/test_models.py``), ideally at the commit of the installed timm. The
script copies ``test_models.py`` into a scratch folder and edits two lists, as a ViT is listed:
``'gvit_*'`` joins ``NON_STD_FILTERS`` (with ``vit_*`` and ``deit*``: no ``features_only``
test of the CNN kind) and the module ``'gvit'`` joins ``FEAT_INTER_FILTERS`` (with
``vision_transformer``: ``forward_intermediates`` and ``features_only`` through timm's feature
getter). A ``conftest.py`` beside it imports ``timm_gvit``. Then it runs ``pytest -k gvit`` and
writes ``OUT/timm_test_models.log`` and ``OUT/timm_test_models.json``; it exits with pytest's status.

    python benchmarks/timm_model_tests.py --timm-src /path/to/pytorch-image-models \\
        --out benchmarks/reference
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTS = {"NON_STD_FILTERS": "'gvit_*'", "FEAT_INTER_FILTERS": "'gvit'"}


def patched_test_models(source: str) -> str:
    """``test_models.py``'s text with the gvit entries first in each list of :data:`LISTS`."""
    for name, entry in LISTS.items():
        source, count = re.subn(rf"^{name} = \[\n", f"{name} = [\n    {entry},\n", source, count=1, flags=re.M)
        if count != 1:
            raise ValueError(f"test_models.py has no '{name} = [' list: timm's test file changed; update {__file__}")
    return source


def summary(log: str) -> dict[str, int]:
    """pytest's final counts (passed, failed, skipped, ...) from its last line."""
    last = log.strip().splitlines()[-1] if log.strip() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", last)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timm-src", required=True, type=Path, help="a checkout of timm's repository")
    parser.add_argument("--timm-commit", default=None, help="the checkout's commit, recorded in the JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reference")
    args = parser.parse_args(argv)
    test_file = args.timm_src / "tests" / "test_models.py"
    if not test_file.is_file():
        parser.error(f"{test_file} does not exist: --timm-src must be a checkout of timm's repository")
    import timm
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "test_models.py").write_text(patched_test_models(test_file.read_text()))
        (Path(scratch) / "conftest.py").write_text("import timm_gvit  # noqa: F401  (registers the gvit models)\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        result = subprocess.run([sys.executable, "-m", "pytest", "test_models.py", "-k", "gvit", "-q", "-p", "no:cacheprovider",
                                 "-o", "addopts=", "-rA"], cwd=scratch, env=env, capture_output=True, text=True)
    log = result.stdout + result.stderr
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "timm_test_models.log").write_text(log)
    record = dict(timm_version=timm.__version__, timm_commit=args.timm_commit, torch_version=torch.__version__,
                  lists=LISTS, selection="-k gvit", returncode=result.returncode, **summary(log))
    (args.out / "timm_test_models.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
