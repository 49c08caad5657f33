"""``run_libero_eval.py --policy_server``: the same per-episode results as the in-process evaluation.

``serve_policy.py`` runs as a subprocess on a port chosen by the OS (it prints the address once it is bound); the
evaluation through it gets no checkpoint at all, so every action chunk must come from the server. Two episodes of
libero_spatial task 0, 10 policy steps each (two chunks), 64 x 64 cameras, in fresh processes with ``USE_TF=0``.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.sim

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_STARTUP_TIMEOUT_S = 300
QUICK_FLAGS = (
    "--task_suite_name", "libero_spatial", "--task_ids", "[0]", "--num_trials_per_task", "2",
    "--max_steps", "10", "--num_steps_wait", "2", "--env_img_res", "64",
)  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sim_serving")
    return {**os.environ, "USE_TF": "0", "WANDB_MODE": "disabled", "LIBERO_CONFIG_PATH": str(root / "libero_config")}


@contextmanager
def running_server(checkpoint: Path, env: dict[str, str], log_dir: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A ``serve_policy.py`` process on a port chosen by the OS (loading while the in-process evaluation runs);
    its log goes to a file, so a full pipe can never stall it; no keepalive pings, so a client starved on a busy
    machine is not dropped."""
    command = [sys.executable, "vla-scripts/serve_policy.py", "--pretrained_checkpoint", str(checkpoint)]
    command += ["--keepalive_timeout_s", "0"]
    log_path = log_dir / "stderr.txt"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*command, "--port", "0"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        yield process, log_path
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(
    tiny_checkpoint: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen, Path]]:
    with running_server(tiny_checkpoint, env, tmp_path_factory.mktemp("server")) as started:
        yield started


def wait_for_address(process: subprocess.Popen, log_path: Path) -> str:
    """The address the server prints once it is bound (it exits or stays silent: fail)."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + SERVER_STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and selector.select(timeout=deadline - time.monotonic()):
        line = process.stdout.readline()
        if not line:
            break
        address = re.search(r"on (ws://127\.0\.0\.1:\d+) ", line)
        if address is not None:
            return address.group(1)
    process.terminate()
    pytest.fail(f"serve_policy.py did not start:\n{log_path.read_text()[-4000:]}")


def run_eval(log_dir: Path, env: dict[str, str], *flags: str) -> list[dict]:
    command = [sys.executable, "experiments/robot/libero/run_libero_eval.py", *QUICK_FLAGS]
    command += ["--local_log_dir", str(log_dir), "--run_id", "run", *flags]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    records = [json.loads(line) for line in (log_dir / "run.jsonl").read_text().splitlines()]
    return sorted(records, key=lambda record: (record["task_id"], record["episode"]))


def test_evaluation_through_the_server_equals_the_in_process_one(
    tmp_path: Path, tiny_checkpoint: Path, env: dict[str, str], server: tuple[subprocess.Popen, Path]
) -> None:
    in_process = run_eval(tmp_path / "in_process", env, "--pretrained_checkpoint", str(tiny_checkpoint))
    server_uri = wait_for_address(*server)
    served = run_eval(tmp_path / "served", env, "--policy_server", server_uri)
    assert [(record["task_id"], record["episode"]) for record in served] == [(0, 0), (0, 1)]
    for ours, reference in zip(served, in_process, strict=True):
        for field in ("success", "steps", "error", "task"):
            assert ours[field] == reference[field], field
        np.testing.assert_array_equal(ours["final_state"], reference["final_state"])
    assert served[0]["steps"] == 10 and served[0]["final_state"] != served[1]["final_state"]
    log = (tmp_path / "served" / "run.txt").read_text()
    assert f"\n  policy_server: {server_uri}\n" in log and "\n  pretrained_checkpoint: \n" in log
    assert "\n  unnorm_key: libero_spatial_no_noops\n" in log  # read from the server's metadata


def test_a_lerobot_trained_checkpoint_gives_the_same_episodes_through_the_server(
    tmp_path: Path, lerobot_tiny_checkpoint: Path, env: dict[str, str]
) -> None:
    """Its recorded gripper convention ("none": the data's own units) applies in both paths."""
    with running_server(lerobot_tiny_checkpoint, env, tmp_path) as started:
        in_process = run_eval(tmp_path / "in_process", env, "--pretrained_checkpoint", str(lerobot_tiny_checkpoint))
        served = run_eval(tmp_path / "served", env, "--policy_server", wait_for_address(*started))
    for ours, reference in zip(served, in_process, strict=True):
        for field in ("success", "steps", "error"):
            assert ours[field] == reference[field], field
        np.testing.assert_array_equal(ours["final_state"], reference["final_state"])
    for run in ("in_process", "served"):
        assert "Gripper convention of the checkpoint: none\n" in (tmp_path / run / "run.txt").read_text()
