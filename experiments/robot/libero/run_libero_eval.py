"""Evaluate a checkpoint in a LIBERO simulation suite.

    python experiments/robot/libero/run_libero_eval.py \
        --pretrained_checkpoint ckpts/spatial-forcing-7b-finetuned-libero-spatial --task_suite_name libero_spatial

Upstream's flags and defaults (see ``GenerateConfig``), plus ``--num_workers``, ``--task_ids``, ``--max_steps``,
``--save_videos`` and ``--run_id`` (pass an earlier run's id to resume it). Outputs: see ``evaluation.py``.
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


# No `from __future__ import annotations` here: draccus.wrap reads the real annotation of `cfg`.
@draccus.wrap()
def main(cfg: GenerateConfig) -> float:
    # transformers imports TensorFlow by itself when installed; this process needs no TensorFlow.
    os.environ["USE_TF"] = "0"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(message)s")
    # Imported here, not at the top: spawned simulator workers re-import this script and need no model code.
    from experiments.robot.libero.preflight import check_eval_config
    from experiments.robot.vla_policy import VLAPolicy

    cfg = dataclasses.replace(cfg, run_id=make_run_id(cfg))
    check_eval_config(cfg, cfg.run_id)
    with hold_run_lock(Path(cfg.local_log_dir) / f"{cfg.run_id}.lock", f"evaluation run {cfg.run_id!r}"):
        set_seed_everywhere(cfg.seed)
        policy = VLAPolicy.from_config(cfg)
        return eval_libero(dataclasses.replace(cfg, unnorm_key=policy.unnorm_key), policy)


if __name__ == "__main__":
    run_cli(main)
