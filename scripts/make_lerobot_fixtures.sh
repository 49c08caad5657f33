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
COMMON_DEPS=(huggingface-hub==0.35.3 av==15.1.0 jsonlines==4.0.0 packaging pillow numpy pyarrow pandas)

# lerobot's dataset modules import torchvision at module level, but writing a dataset never calls it (videos are
# encoded with PyAV). Every torchvision wheel on PyPI links CUDA torch libraries that the CPU wheel lacks, so the
# throw-away venv gets a placeholder package whose attributes are classes that refuse to be instantiated.
install_torchvision_placeholder() {
  local site
  site="$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$site/torchvision/transforms/v2"
  local body='def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"torchvision.{name} is not installed in this fixture-writing environment")

    return Unavailable
'
  for module in torchvision torchvision/transforms torchvision/transforms/v2; do
    printf '%s' "$body" > "$site/$module/__init__.py"
  done
}

make_venv() {  # make_venv NAME LEROBOT_VERSION EXTRA_DEPS...
  local venv="$VENV_ROOT/$1" version="$2"
  shift 2
  if [ ! -f "$venv/.lerobot-installed" ]; then
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q "$TORCH_WHEEL"
    "$venv/bin/pip" install -q "${COMMON_DEPS[@]}" "$@"
    "$venv/bin/pip" install -q --no-deps "lerobot==$version"
    install_torchvision_placeholder "$venv"
    touch "$venv/.lerobot-installed"
  fi
  echo "$venv"
}

V21="$(make_venv lerobot-0.3.3 0.3.3 datasets==3.6.0)"
V30="$(make_venv lerobot-0.4.4 0.4.4 datasets==4.0.0 accelerate fsspec)"
mkdir -p "$OUT_DIR"
"$V21/bin/python" "$REPO_ROOT/scripts/make_lerobot_fixtures.py" --out_dir "$OUT_DIR" --suffix v21
"$V30/bin/python" "$REPO_ROOT/scripts/make_lerobot_fixtures.py" --out_dir "$OUT_DIR" --suffix v30
du -sh "$OUT_DIR"
