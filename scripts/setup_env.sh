#!/usr/bin/env bash
# Creates .venv and installs the project with its libero and dev extras on a fresh machine.
# Called by `make` (only when pyproject.toml, requirements-cpu.txt or this file changed).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# Headless MuJoCo renders through EGL or OSMesa (Mesa's llvmpipe on CPU).
missing_gl=()
for lib in libOSMesa.so.8 libEGL.so.1 libGL.so.1; do
  ldconfig -p | grep -q "$lib" || missing_gl+=("$lib")
done
if [ ${#missing_gl[@]} -gt 0 ]; then
  echo "[setup] installing Mesa GL libraries (missing: ${missing_gl[*]})"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() {
  # Machines with local file indexes print one warning per package they lack; keep the real output.
  "$VENV/bin/python" -m pip --disable-pip-version-check install -q -c requirements-cpu.txt "$@" 2>&1 \
    | { grep -v "^WARNING: Location 'file://" || true; }
}
# torch and torchvision first and as a pair, so nothing later can swap torch for another build.
pip_install torch torchvision
pip_install -e ".[libero,dev]"
# LIBERO's code without its declared dependencies (robosuite 1.4.0, mujoco>=3, training-only packages); what it
# needs at run time comes with the libero extra.
pip_install --no-deps libero
# triton (pulled by torch) segfaults when imported after TensorFlow; it is not needed on CPU.
"$VENV/bin/python" -m pip uninstall -y -q triton 2>/dev/null || true
echo "[setup] environment ready in $VENV"
