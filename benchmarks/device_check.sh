#!/usr/bin/env bash
# One command for a fresh GPU machine lent by the `device` tool: install the carried wheels, build gsplat for this GPU,
# run tests/test_gsplat.py and the gsplat benchmarks, time GViT-S training and both loader paths (CPU decode,
# decode on the device) beside the compiled step, and write OUT/device_check.json.
# `--dry-run` checks here, without a GPU, that everything it needs is present. `--help` says more; the logic lives in
# benchmarks/device_check.py, which needs only the standard library until the wheels are installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" benchmarks/device_check.py "$@"
