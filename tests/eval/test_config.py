"""``GenerateConfig``: upstream's defaults, flag parsing, validation errors naming the flag, resume checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import draccus
import pytest

from experiments.robot.libero.config import (
    GenerateConfig,
    check_resumable,
    config_as_dict,
    episode_max_steps,
    validate_config,
)


def test_defaults_are_upstreams_and_policy_flags_come_from_the_checkpoint() -> None:
    cfg = GenerateConfig()
    # None = take it from policy_config.json (upstream's defaults for a released checkpoint without one).
    policy_flags = ("use_l1_regression", "use_diffusion", "use_film", "num_images_in_input", "use_proprio")
    policy_flags += ("center_crop", "num_diffusion_steps_train", "num_diffusion_steps_inference")
    assert all(getattr(cfg, flag) is None for flag in policy_flags)
    assert (cfg.model_family, cfg.num_open_loop_steps) == ("openvla", 8)
    assert (cfg.lora_rank, cfg.unnorm_key, cfg.task_suite_name, cfg.num_steps_wait) == (32, "", "libero_spatial", 10)
    assert (cfg.num_trials_per_task, cfg.initial_states_path, cfg.env_img_res, cfg.seed) == (50, "DEFAULT", 256, 7)
    assert (cfg.local_log_dir, cfg.use_wandb) == ("./experiments/logs", False)


def test_command_line_flags_parse() -> None:
    args = ["--task_suite_name", "libero_goal", "--task_ids", "[1,4]", "--max_steps", "5", "--num_workers", "3"]
    cfg = draccus.parse(GenerateConfig, args=args + ["--center_crop", "False", "--run_id", "EVAL-x"])
    assert (cfg.task_suite_name, cfg.task_ids, cfg.max_steps, cfg.num_workers) == ("libero_goal", [1, 4], 5, 3)
    assert (cfg.center_crop, cfg.run_id) == (False, "EVAL-x")


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"task_suite_name": "libero_100"}, "--task_suite_name"),
        ({"model_family": "octo"}, "--model_family"),
        ({"pretrained_checkpoint": "runs/x--image_aug", "center_crop": False}, "--center_crop"),
        ({"load_in_8bit": True, "load_in_4bit": True}, "--load_in_8bit"),
        ({"use_l1_regression": True, "use_diffusion": True}, "--use_l1_regression"),
        ({"initial_states_path": "/nonexistent/states.json"}, "--initial_states_path"),
        ({"num_workers": 0}, "--num_workers"),
        ({"num_trials_per_task": 0}, "--num_trials_per_task"),
        ({"max_steps": 0}, "--max_steps"),
        ({"num_steps_wait": -1}, "--num_steps_wait"),
        ({"video_episodes": 1}, "--video_episodes"),  # without --save_videos
        ({"video_episodes": -1, "save_videos": True}, "--video_episodes"),
    ],
)
def test_invalid_settings_raise_naming_the_flag(overrides: dict, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        validate_config(GenerateConfig(**overrides))


def test_max_steps_caps_the_suite_limit() -> None:
    assert episode_max_steps(GenerateConfig()) == 220
    assert episode_max_steps(GenerateConfig(task_suite_name="libero_10")) == 520
    assert episode_max_steps(GenerateConfig(max_steps=3)) == 3
    assert episode_max_steps(GenerateConfig(max_steps=10_000)) == 220


def test_resume_accepts_bookkeeping_changes_and_rejects_result_changes(tmp_path: Path) -> None:
    saved = config_as_dict(GenerateConfig(run_id="r"))
    check_resumable(saved, GenerateConfig(run_id="r", num_workers=4, num_trials_per_task=3, save_videos=True))
    changed = dataclasses.replace(GenerateConfig(run_id="r"), center_crop=False, num_open_loop_steps=4)
    with pytest.raises(ValueError, match=r"--center_crop: run has None, now False(.|\n)*--num_open_loop_steps"):
        check_resumable(saved, changed)
