#!/usr/bin/env bash
# Opens a LeRobot v3.0 dataset written by this project (generate_libero_demos.py --format lerobot) with the real
# lerobot 0.4.4 in a throw-away virtualenv, and prints what it reads (scripts/check_lerobot_reads.py).
# Usage: scripts/check_lerobot_reads.sh DATASET_DIR [TORCH_WHEEL] [VENV_ROOT]
#   VENV_ROOT defaults to ~/.cache/spatial_forcing/lerobot-venvs (kept, so a second check starts at once).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATASET_DIR="$(cd "$1" && pwd)"
TORCH_WHEEL="${2:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
VENV_ROOT="${3:-$HOME/.cache/spatial_forcing/lerobot-venvs}"
PYTHON="${PYTHON:-python3.11}"
source "$REPO_ROOT/scripts/lerobot_venv.sh"

mkdir -p "$VENV_ROOT"
V30="$(make_venv lerobot-0.4.4 0.4.4 datasets==4.0.0 accelerate fsspec)"
"$V30/bin/python" "$REPO_ROOT/scripts/check_lerobot_reads.py" --root "$DATASET_DIR"
