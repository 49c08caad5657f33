#!/usr/bin/env bash
# Writes the committed LeRobot test fixtures (tests/data/lerobot_fixtures/) with the real `lerobot` writer.
#
# lerobot pins older torch and draccus than this project, so each version gets a throw-away virtualenv with
# lerobot installed --no-deps, plus only what its dataset writer imports and a CPU torch wheel:
#   lerobot 0.3.3 -> format v2.1,  lerobot 0.4.4 -> format v3.0.
# Usage: scripts/make_lerobot_fixtures.sh [TORCH_WHEEL] [VENV_ROOT]
#   TORCH_WHEEL defaults to /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl (a CPU build:
#   PyPI's default torch for lerobot's pins is a multi-GB CUDA build). VENV_ROOT defaults to a temporary folder.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TORCH_WHEEL="${1:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
VENV_ROOT="${2:-$(mktemp -d)}"
PYTHON="${PYTHON:-python3.11}"
OUT_DIR="$REPO_ROOT/tests/data/lerobot_fixtures"
source "$REPO_ROOT/scripts/lerobot_venv.sh"

V21="$(make_venv lerobot-0.3.3 0.3.3 datasets==3.6.0)"
V30="$(make_venv lerobot-0.4.4 0.4.4 datasets==4.0.0 accelerate fsspec)"
mkdir -p "$OUT_DIR"
"$V21/bin/python" "$REPO_ROOT/scripts/make_lerobot_fixtures.py" --out_dir "$OUT_DIR" --suffix v21
"$V30/bin/python" "$REPO_ROOT/scripts/make_lerobot_fixtures.py" --out_dir "$OUT_DIR" --suffix v30
du -sh "$OUT_DIR"
