"""Everything ``run_libero_eval.py`` can check before it loads the policy or writes a file.

Flags, the checkpoint's files (intact, the right base, the statistics of ``--unnorm_key``), the log folder, the
initial states, the task ids and, when ``--run_id`` names an earlier run, that its saved flags allow resuming.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from experiments.robot.libero.config import (
    DEFAULT_INITIAL_STATES,
    GenerateConfig,
    check_resumable,
    validate_config,
)
from prismatic.models.family import CheckedCheckpoint
from prismatic.policy.checkpoint_checks import check_checkpoint
from prismatic.policy.policy import evaluation_flags, resolve_unnorm_key
from prismatic.util.checkpoint_install import settle_pending_install
from prismatic.util.cli import UserError, user_errors
from prismatic.util.file_checks import check_writable_dir, read_json_file
from prismatic.vla.policy_config import POLICY_FLAGS, apply_flag_overrides, load_policy_config

# Tasks per LIBERO suite (libero.libero.benchmark), so --task_ids is checked without importing LIBERO.
TASK_COUNTS = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}
BENCHMARK_INIT_STATES = 50  # initial states per task in LIBERO's init files (every suite)
LIBERO_CAMERAS = 2  # the frames an observation holds: the third-person (agentview) and the wrist camera


def check_eval_config(cfg: GenerateConfig, run_id: str) -> CheckedCheckpoint | None:
    """Raises a UserError naming the flag or file for anything that would make the evaluation fail later; returns
    what it parsed of an OpenVLA-OFT checkpoint folder, for the loader (None: a policy server or SpatialVLA)."""
    with user_errors():
        validate_config(cfg)
    num_tasks = TASK_COUNTS[cfg.task_suite_name]
    if cfg.task_ids is not None and (
        len(set(cfg.task_ids)) != len(cfg.task_ids) or not all(0 <= i < num_tasks for i in cfg.task_ids)
    ):
        raise UserError(
            f"--task_ids {cfg.task_ids}: expected distinct ids in [0, {num_tasks}) for {cfg.task_suite_name}"
        )
    if cfg.initial_states_path != DEFAULT_INITIAL_STATES:
        states = read_json_file(cfg.initial_states_path, "--initial_states_path")
        if not isinstance(states, dict):
            raise UserError(f"--initial_states_path {cfg.initial_states_path}: expected a JSON object keyed by task")
    elif cfg.num_trials_per_task > BENCHMARK_INIT_STATES:
        raise UserError(
            f"--num_trials_per_task {cfg.num_trials_per_task}: LIBERO has {BENCHMARK_INIT_STATES} initial states per "
            f"task: expected 1..{BENCHMARK_INIT_STATES} (or --initial_states_path with more)"
        )
    checked = _check_policy(cfg)
    resolved = None
    if checked is not None:
        resolved = evaluation_flags(checked.policy_config, checked.policy_config.unnorm_key)
    num_images = resolved["num_images_in_input"] if resolved is not None else cfg.num_images_in_input
    if num_images is not None and not 1 <= num_images <= LIBERO_CAMERAS:
        raise UserError(
            f"--num_images_in_input {num_images}: the LIBERO simulator renders {LIBERO_CAMERAS} cameras (agentview "
            f"and wrist): expected 1..{LIBERO_CAMERAS}"
        )
    check_writable_dir(cfg.local_log_dir, "--local_log_dir")
    saved_config = Path(cfg.local_log_dir) / f"{run_id}--config.json"
    if saved_config.exists() and resolved is not None:
        saved = read_json_file(saved_config, "--run_id")
        with user_errors():
            check_resumable(saved, dataclasses.replace(cfg, **resolved))
    return checked


def _check_policy(cfg: GenerateConfig) -> CheckedCheckpoint | None:
    """Checks the policy's files; returns the folder's policy config (every flag applied, the statistics key
    resolved) and statistics (None when they are known only after loading: a policy server or a SpatialVLA folder,
    whose own loaders check them)."""
    if cfg.policy_server:
        return None
    if not cfg.pretrained_checkpoint:
        raise UserError("--pretrained_checkpoint is empty: expected a checkpoint folder")
    settle_pending_install(cfg.pretrained_checkpoint, "--pretrained_checkpoint")
    if cfg.model_family != "openvla":
        if not Path(cfg.pretrained_checkpoint).is_dir():
            raise UserError(f"--pretrained_checkpoint {cfg.pretrained_checkpoint} does not exist: expected a folder")
        return None
    with user_errors():
        policy_config = apply_flag_overrides(
            load_policy_config(cfg.pretrained_checkpoint, cfg.task_suite_name),
            **{name: getattr(cfg, name) for name in POLICY_FLAGS},
        )
    checked = check_checkpoint(
        cfg.pretrained_checkpoint, "--pretrained_checkpoint", policy_config, cfg.ignore_base_model_check
    )
    with user_errors():
        policy_config.unnorm_key = resolve_unnorm_key(checked.norm_stats, policy_config.unnorm_key, cfg.task_suite_name)
    return checked
