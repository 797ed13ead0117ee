#!/usr/bin/env bash
# Download the wheels of benchmarks/device_wheels.txt for the lent GPU machine (CPython 3.12, x86-64 Linux)
# into .whl/ (or the folder given), for benchmarks/device_check.sh. Run from anywhere:
#     benchmarks/fetch_device_wheels.sh [DEST]
# .whl/ is git-ignored; name it in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${1:-.whl}
mkdir -p "$DEST"
mapfile -t requirements < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' benchmarks/device_wheels.txt)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DEST" "${requirements[@]}"
ls -l "$DEST"
