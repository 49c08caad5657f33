#!/usr/bin/env bash
# Creates .venv and installs the project with its libero and dev extras on a fresh machine.
# Called by `make` (only when pyproject.toml, requirements-cpu.txt or this file changed).
# Prints each step as "[setup k/6] what (elapsed)" and, inside a step, each package as apt and pip fetch and
# install it, so a long install shows what it is doing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STEPS=6
step=0
start=$SECONDS

announce() {
  step=$((step + 1))
  echo "[setup $step/$STEPS] $* ($((SECONDS - start)) s elapsed)"
}

# Headless MuJoCo renders through EGL or OSMesa (Mesa's llvmpipe on CPU).
announce "Mesa GL libraries for headless MuJoCo"
missing_gl=()
for lib in libOSMesa.so.8 libEGL.so.1 libGL.so.1; do
  ldconfig -p | grep -q "$lib" || missing_gl+=("$lib")
done
if [ ${#missing_gl[@]} -gt 0 ]; then
  GL_PACKAGES=(libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri libgl1)
  echo "[setup]   missing ${missing_gl[*]}: apt-get install ${GL_PACKAGES[*]} (and their dependencies)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # One line per package fetched and set up; apt's own progress bars are off.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q -o Dpkg::Use-Pty=0 "${GL_PACKAGES[@]}" 2>&1 \
    | { grep -E "^(Get:|Setting up )" | sed -E 's/^Get:[0-9]+ [^ ]+ [^ ]+ [^ ]+ ([^ ]+) .*\[([^]]+)\]$/fetched \1 (\2)/; s/^/[setup]   /' || true; }
else
  echo "[setup]   present"
fi

announce "virtualenv $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() {
  # One line per package pip collects and the list it installs; machines with local file indexes print one
  # warning per package they lack, which is left out.
  "$VENV/bin/python" -m pip --disable-pip-version-check install --progress-bar off -c requirements-cpu.txt "$@" 2>&1 \
    | { grep -E "^(Collecting|Installing collected packages|Successfully installed|ERROR|error)" \
        | sed -e 's/^/[setup]   /' || true; }
}
# torch and torchvision first and as a pair, so nothing later can swap torch for another build.
announce "torch and torchvision (CPU wheels, the largest download)"
pip_install torch torchvision
announce "the project with its libero and dev extras (requirements-cpu.txt pins)"
pip_install -e ".[libero,dev]"
# LIBERO's code without its declared dependencies (robosuite 1.4.0, mujoco>=3, training-only packages); what it
# needs at run time comes with the libero extra.
announce "libero without its declared dependencies"
pip_install --no-deps libero
# triton (pulled by torch) segfaults when imported after TensorFlow; it is not needed on CPU.
announce "removing triton (crashes beside TensorFlow; not needed on CPU)"
"$VENV/bin/python" -m pip uninstall -y -q triton 2>/dev/null || true
echo "[setup] environment ready in $VENV after $((SECONDS - start)) s"
