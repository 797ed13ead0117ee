"""Run any of timm's scripts with the GViT models registered.

timm has no plugin discovery: only its ``train.py`` can import a plugin (``--device-modules``).
This launcher imports ``timm_gvit`` and then runs the script unchanged, as ``__main__``::

    python -m timm_gvit.run path/to/validate.py --model gvit_tiny --data-dir DATA ...
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

USAGE = "usage: python -m timm_gvit.run SCRIPT.py [SCRIPT ARGS...]\n\n" + __doc__.strip().splitlines()[0]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    script = Path(argv[0])
    if not script.is_file():
        raise SystemExit(f"timm_gvit.run: no such script: {script} (get timm's scripts from its GitHub repository)")
    import timm_gvit  # noqa: F401  (registers the models with timm)

    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
