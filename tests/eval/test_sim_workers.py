"""Simulator worker processes: one BLAS/OpenMP thread each, no orphans when their runner is killed, and no model
code imported (every spawned worker would pay for it: seconds each).

A runner process starts a worker through :func:`simulator_worker_context` whose target runs
:func:`init_simulator_worker` (as every LIBERO worker pool does), reports its pid and thread settings, then sleeps.
The runner is killed with SIGKILL, as a test's or CI's timeout does; the worker must be gone too, instead of living on
with the runner's pipes open (which makes ``subprocess.run(..., timeout=...)`` wait forever).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

RUNNER = """
import json, os, sys, time
from experiments.robot.libero.sim_setup import init_simulator_worker, simulator_worker_context

def worker(queue):
    init_simulator_worker()
    queue.put({"pid": os.getpid(), **{key: os.environ.get(key) for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}})
    time.sleep(600)

if __name__ == "__main__":
    context = simulator_worker_context()
    queue = context.Queue()
    context.Process(target=worker, args=(queue,), daemon=True).start()
    print(json.dumps(queue.get(timeout=240)), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")  # a zombie is dead


def test_worker_is_single_threaded_and_dies_with_its_runner(tmp_path: Path) -> None:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {key: value for key, value in os.environ.items() if key not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update({"USE_TF": "0", "PYTHONPATH": str(REPO_ROOT), "LIBERO_CONFIG_PATH": str(tmp_path / "libero_config")})
    runner = subprocess.Popen([sys.executable, str(script)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        report = json.loads(runner.stdout.readline())
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    assert (report["OPENBLAS_NUM_THREADS"], report["OMP_NUM_THREADS"]) == ("1", "1")
    for _ in range(100):  # the kernel delivers the death signal at once; reaping by init may take a moment
        if not _alive(report["pid"]):
            break
        time.sleep(0.1)
    assert not _alive(report["pid"]), f"worker {report['pid']} outlived its killed runner"


def test_a_spawned_worker_imports_no_model_code() -> None:
    """What a spawned evaluation worker imports: the runner script (as ``__mp_main__``) and the worker's modules."""
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('__mp_main__', 'experiments/robot/libero/run_libero_eval.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "import experiments.robot.libero.env_worker\n"
        "print(sorted(m for m in ('transformers', 'timm', 'prismatic.models', 'tensorflow') if m in sys.modules))\n"
    )
    env = {**os.environ, "USE_TF": "0", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == "[]"
