"""``finetune_align.py --model_family pi0`` under 2-process torchrun on the tiny pi0 and the synthetic LIBERO data:
Spatial Forcing lowers the loss, the checkpoint is a pi0 policy folder that loads for inference, and resume
reproduces the uninterrupted run's next steps exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prismatic.policy.pi0_policy import Pi0Policy
from prismatic.testing.pi0_tiny import write_tiny_pi0_checkpoint
from prismatic.training.metrics import read_metrics

from .conftest import DATASET_NAME, run_script

PI0_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.model",
    "dataset_statistics.json",
    "policy_config.json",
    "base_model.json",
    "align_projector--{s}_checkpoint.pt",
    "training_state--{s}_checkpoint.pt",
}


@pytest.fixture(scope="module")
def tiny_pi0(tmp_path_factory) -> Path:
    return write_tiny_pi0_checkpoint(tmp_path_factory.mktemp("pi0"))


def pi0_flags(tiny_pi0: Path, vggt_path: Path, data_root: Path, run_root: Path, **overrides) -> list[str]:
    flags = {
        "preset": "pi0_tiny_cpu",
        "vla_path": tiny_pi0,
        "vggt_path": vggt_path,
        "data_root_dir": data_root,
        "dataset_name": DATASET_NAME,
        "run_root_dir": run_root,
        "run_id_override": "pi0-run",
        "max_steps": 4,
        "save_freq": 2,
        **overrides,
    }
    return [f"--{name}={value}" for name, value in flags.items()]


@pytest.mark.slow
def test_pi0_trains_with_spatial_forcing_saves_and_resumes_exactly(
    tiny_pi0, tiny_checkpoints, synthetic_data, tmp_path
):
    flags = pi0_flags(tiny_pi0, tiny_checkpoints[1], synthetic_data, tmp_path)
    result = run_script("finetune_align.py", flags, nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    uninterrupted = read_metrics(tmp_path / "pi0-run")
    assert [m["step"] for m in uninterrupted] == [0, 1, 2, 3, 4]
    assert uninterrupted[-1]["loss"] < uninterrupted[0]["loss"]
    assert uninterrupted[-1]["align_loss"] < uninterrupted[0]["align_loss"]

    folder = tmp_path / "pi0-run--4_chkpt"
    assert {p.name for p in folder.iterdir()} == {name.format(s=4) for name in PI0_FILES}
    policy_config = json.loads((folder / "policy_config.json").read_text())
    assert (policy_config["model_family"], policy_config["action_head"]) == ("pi0", "flow_matching")
    assert policy_config["spatial_forcing"]["vla_layers_align"] == 1
    policy = Pi0Policy.from_checkpoint(folder)
    frame = np.zeros((224, 224, 3), dtype=np.uint8)
    chunk = policy.predict_chunk({"full_image": frame, "wrist_image": frame, "state": np.zeros(8)}, "open the drawer")
    assert chunk.shape == (8, 7) and np.isfinite(chunk).all()

    # Resume from step 2 in the same run folder: steps 3 and 4 are the uninterrupted run's, to the last bit.
    resumed = run_script("finetune_align.py", [*flags, "--resume=True", "--resume_step=2"], nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "continues from its checkpoint of step 2" in resumed.stdout
    again = read_metrics(tmp_path / "pi0-run")
    for name in ("loss", "action_loss", "align_loss"):
        assert [m[name] for m in again] == [m[name] for m in uninterrupted]


@pytest.mark.slow
def test_pi0_trains_on_a_fourteen_dim_three_camera_lerobot_dataset(tiny_pi0, tiny_checkpoints, lerobot_root, tmp_path):
    cameras = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    flags = pi0_flags(
        tiny_pi0,
        tiny_checkpoints[1],
        lerobot_root,
        tmp_path,
        dataset_name="aloha_like_v30",
        num_images_in_input=3,
        num_actions_chunk=8,
        lerobot_camera_keys=",".join(f"observation.images.{camera}" for camera in cameras),
        max_steps=3,
        save_freq=3,
    )
    result = run_script("finetune_align.py", flags)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = read_metrics(tmp_path / "pi0-run")
    assert metrics[-1]["loss"] < metrics[0]["loss"] and metrics[-1]["align_loss"] < metrics[0]["align_loss"]
    policy = Pi0Policy.from_checkpoint(tmp_path / "pi0-run--3_chkpt")
    assert (policy.config.embodiment.action_dim, policy.config.num_images_in_input) == (14, 3)
    frame = np.zeros((224, 224, 3), dtype=np.uint8)
    observation = {"full_image": frame, "wrist_image": frame, "wrist_image_2": frame, "state": np.zeros(14)}
    chunk = policy.predict_chunk(observation, "transfer the cube")
    assert chunk.shape == (8, 14) and np.isfinite(chunk).all()
