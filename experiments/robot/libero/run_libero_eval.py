"""Evaluate a checkpoint in a LIBERO simulation suite.

    python experiments/robot/libero/run_libero_eval.py \
        --pretrained_checkpoint ckpts/spatial-forcing-7b-finetuned-libero-spatial --task_suite_name libero_spatial

Upstream's flags and defaults (see ``GenerateConfig``), plus ``--num_workers``, ``--task_ids``, ``--max_steps``,
``--save_videos``, ``--run_id`` (pass an earlier run's id to resume it) and ``--policy_server ws://host:port`` (the
simulator workers query a running ``vla-scripts/serve_policy.py``; its key, if any, from $POLICY_SERVER_API_KEY).
Outputs: see ``evaluation.py``. ``--model_family svla`` evaluates a SpatialVLA folder (``--svla_prompt``,
``--action_ensembling``; see README).
Every flag and file is checked before anything is loaded or written; one process at a time holds a run id.
"""

import dataclasses
import logging
import os
from pathlib import Path

import draccus

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.libero.evaluation import eval_libero, make_run_id
from experiments.robot.robot_utils import set_seed_everywhere
from prismatic.util.cli import run_cli
from prismatic.util.locking import hold_run_lock
from prismatic.vla.constants import constants_for


# No `from __future__ import annotations` here: draccus.wrap reads the real annotation of `cfg`.
@draccus.wrap()
def main(cfg: GenerateConfig) -> float:
    # transformers imports TensorFlow by itself when installed; this process needs no TensorFlow.
    os.environ["USE_TF"] = "0"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(message)s")
    # Imported here, not at the top: spawned simulator workers re-import this script and need no model code.
    from experiments.robot.libero.preflight import check_eval_config

    cfg = dataclasses.replace(cfg, run_id=make_run_id(cfg))
    checked = check_eval_config(cfg, cfg.run_id)
    with hold_run_lock(Path(cfg.local_log_dir) / f"{cfg.run_id}.lock", f"evaluation run {cfg.run_id!r}"):
        set_seed_everywhere(cfg.seed)
        if cfg.policy_server:
            from experiments.robot.serving.client import policy_server_metadata

            metadata = policy_server_metadata(cfg.policy_server, constants_for(cfg.task_suite_name).action_dim)
            return eval_libero(dataclasses.replace(cfg, unnorm_key=metadata["unnorm_key"]), None, metadata["gripper"])
        from experiments.robot.policy_factory import load_policy  # after the checks: SpatialVLA's imports are heavy

        policy = load_policy(cfg, checked)
        # The log and the resume check record the settings the policy runs with (from its policy_config.json).
        return eval_libero(dataclasses.replace(cfg, **policy.resolved_flags()), policy, policy.gripper)


if __name__ == "__main__":
    run_cli(main)
