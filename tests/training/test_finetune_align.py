"""finetune_align.py end to end on the tiny configuration: torchrun, the released checkpoint layout, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from prismatic.training import checkpointing as ckpt
from prismatic.training.metrics import read_metrics
from prismatic.training.run_guard import METRICS_NAME
from prismatic.util.checkpoint_files import TRAINING_CONFIG_NAME

from .conftest import REPO_ROOT, run_script, tiny_flags

RELEASED_FILES = {
    "action_head--{s}_checkpoint.pt",
    "proprio_projector--{s}_checkpoint.pt",
    "align_projector--{s}_checkpoint.pt",
    "dataset_statistics.json",
    "policy_config.json",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_state--{s}_checkpoint.pt",  # ours: optimizer, scheduler, RNG, data position
    "base_model.json",  # ours: which base the adapter was trained on
}
RUN_FILES = {METRICS_NAME, TRAINING_CONFIG_NAME}  # the run's own files beside a latest-only checkpoint
MERGED_MODEL_FILES = {"config.json"}  # + model.safetensors, or shards and their index
KILL_TEST_FLAGS = {"max_steps": 6, "save_freq": 3, "save_latest_checkpoint_only": True}


def _checkpoint_files(folder, step) -> set[str]:
    return {name.format(s=step) for name in RELEASED_FILES}


@pytest.mark.slow
def test_torchrun_two_processes_writes_the_released_layout_which_loads_back(tiny_checkpoints, synthetic_data, tmp_path):
    flags = tiny_flags(
        tiny_checkpoints, synthetic_data, tmp_path, max_steps=2, save_freq=2, merge_lora_during_training=True
    )
    result = run_script("finetune_align.py", flags, nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]

    folder = tmp_path / "tiny-run--2_chkpt"
    files = {p.name for p in folder.iterdir() if p.is_file()}
    weights = {name for name in files if name.startswith("model") and ".safetensors" in name}
    assert files - weights == _checkpoint_files(folder, 2) | MERGED_MODEL_FILES
    assert "model.safetensors" in weights or "model.safetensors.index.json" in weights, "merged weights missing"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (folder / "lora_adapter").iterdir()}
    assert not list(tmp_path.glob("*.tmp-*")), "a temporary checkpoint folder was left behind"

    # Component files carry DDP's "module." prefix, as released; the align projector has the released key names.
    align_state = torch.load(folder / "align_projector--2_checkpoint.pt", weights_only=True)
    assert sorted(align_state) == sorted(
        f"module.{k}" for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "vlm_norm.weight", "vlm_norm.bias")
    )
    statistics = json.loads((folder / "dataset_statistics.json").read_text())
    assert statistics["libero_spatial_no_noops"]["action"]["mask"] == [True] * 6 + [False]

    # Both ranks trained: the logged losses are finite and the checkpoint loads back for inference.
    metrics = read_metrics(tmp_path / "tiny-run")
    assert [m["step"] for m in metrics] == [0, 1, 2]  # upstream's steps: update k is step k
    assert all(np.isfinite(m["loss"]) and np.isfinite(m["align_loss"]) for m in metrics)

    from prismatic.policy.load import load_vla

    loaded = load_vla(folder)
    assert loaded.action_head is not None and loaded.proprio_projector is not None
    assert "libero_spatial_no_noops" in loaded.norm_stats


def _run_until_checkpoint_then_kill(flags, checkpoint_file, timeout=300) -> None:
    """Starts a training run and kill -9s it as soon as ``checkpoint_file`` exists."""
    env = {**os.environ, "USE_TF": "0", "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "vla-scripts" / "finetune_align.py"), *flags],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while not checkpoint_file.exists():
        if process.poll() is not None:
            raise AssertionError(f"training exited before its first checkpoint: {process.stderr.read()[-3000:]!r}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no checkpoint within the time limit")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def uninterrupted_metrics(tiny_checkpoints, synthetic_data, tmp_path_factory) -> list[dict]:
    """The metrics of the uninterrupted latest-only run that the kill tests compare with (trained once)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    result = run_script("finetune_align.py", tiny_flags(tiny_checkpoints, synthetic_data, root, **KILL_TEST_FLAGS))
    assert result.returncode == 0, result.stderr[-4000:]
    return read_metrics(root / "tiny-run")


@pytest.mark.slow
def test_killed_run_resumes_with_the_losses_of_an_uninterrupted_run(
    tiny_checkpoints, synthetic_data, uninterrupted_metrics, tmp_path
):
    resumed_root = tmp_path / "b"
    flags = tiny_flags(tiny_checkpoints, synthetic_data, resumed_root, **KILL_TEST_FLAGS)
    # Latest-only checkpoints go into the run folder itself, as upstream.
    _run_until_checkpoint_then_kill(flags, resumed_root / "tiny-run" / "training_state--latest_checkpoint.pt")
    result = run_script("finetune_align.py", [*flags, "--resume=True"])
    assert result.returncode == 0, result.stderr[-4000:]

    expected, resumed = uninterrupted_metrics, read_metrics(resumed_root / "tiny-run")
    assert [m["step"] for m in resumed] == list(range(0, 7))
    for name in ("loss", "action_loss", "align_loss", "curr_action_l1_loss", "next_actions_l1_loss", "lr"):
        np.testing.assert_allclose([m[name] for m in resumed], [m[name] for m in expected], rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_a_kill_during_the_first_latest_only_install_resumes_with_the_losses_of_an_uninterrupted_run(
    tiny_checkpoints, synthetic_data, uninterrupted_metrics, tmp_path
):
    flags = tiny_flags(tiny_checkpoints, synthetic_data, tmp_path / "b", **KILL_TEST_FLAGS)
    run_dir = tmp_path / "b" / "tiny-run"
    _run_until_checkpoint_then_kill(flags, run_dir / "training_state--latest_checkpoint.pt")
    # The folder as a kill after the install's first two moves leaves it: the rest of the checkpoint still in
    # .checkpoint-ready/ (training state included), no complete checkpoint in the run folder.
    ready = run_dir / ckpt.READY_DIR
    ready.mkdir()
    entries = sorted(
        (path for path in run_dir.iterdir() if path.name not in RUN_FILES and not path.name.startswith(".")),
        key=lambda path: path.name.startswith(ckpt.TRAINING_STATE),
    )
    for entry in entries[2:]:
        entry.rename(ready / entry.name)

    result = run_script("finetune_align.py", [*flags, "--resume=True"])
    assert result.returncode == 0, result.stderr[-4000:]

    assert not ready.exists()
    expected, resumed = uninterrupted_metrics, read_metrics(run_dir)
    assert [m["step"] for m in resumed] == list(range(0, 7))
    for name in ("loss", "action_loss", "align_loss", "lr"):
        np.testing.assert_allclose([m[name] for m in resumed], [m[name] for m in expected], rtol=1e-5, err_msg=name)
