"""The closed-loop regression check by hand (``experiments.robot.libero.nearest_neighbour_policy``; the CI test is
tests/eval/test_closed_loop_regression.py).

    # the look-up's files from an RLDS dataset (TensorFlow; e.g. the demonstrations of `make closed-loop`)
    python scripts/closed_loop_regression.py --stage build --data_root_dir ~/.cache/spatial_forcing/closed_loop/data
    # episodes on held-out initial states, intact and with each link broken; prints one JSON line per breakage
    python scripts/closed_loop_regression.py --stage episodes --breakages '[none,gripper,image_orientation]'
"""

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from experiments.robot.libero.nearest_neighbour_policy import (
    BREAKAGES,
    POLICY_FILES,
    build_policy_files,
    complete_checkpoint,
    run_episodes,
)
from prismatic.util.cli import UserError, run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("build", "episodes")


@dataclass
class RegressionConfig:
    stage: str = "episodes"  # build (from --data_root_dir into --policy_dir) | episodes (with --policy_dir)
    policy_dir: Path = REPO_ROOT / "tests" / "eval" / "data" / "closed_loop_nn"  # The look-up's files
    data_root_dir: Path = Path.home() / ".cache" / "spatial_forcing" / "closed_loop" / "data"  # RLDS, for build
    dataset_name: str = "libero_spatial_no_noops"
    pooled_size: int = 8  # Side of each camera's pooled image feature (build)
    episodes: int = 5  # Held-out benchmark initial states 0..episodes-1 of libero_spatial task 0
    breakages: list[str] = field(default_factory=lambda: ["none"])  # Links to break, one run each


def check_config(cfg: RegressionConfig) -> None:
    if cfg.stage not in STAGES:
        raise UserError(f"--stage {cfg.stage!r}: expected one of {list(STAGES)}")
    unknown = [breakage for breakage in cfg.breakages if breakage not in BREAKAGES]
    if unknown or not cfg.breakages:
        raise UserError(f"--breakages {cfg.breakages}: expected a non-empty list of {list(BREAKAGES)}")
    if not 1 <= cfg.episodes <= 50:
        raise UserError(f"--episodes {cfg.episodes}: expected 1..50 (the benchmark's initial states)")
    if cfg.pooled_size < 1:
        raise UserError(f"--pooled_size {cfg.pooled_size}: expected a positive integer")
    if cfg.stage == "episodes":
        missing = [name for name in POLICY_FILES if not (cfg.policy_dir / name).is_file()]
        if missing:
            raise UserError(f"--policy_dir {cfg.policy_dir}: lacks {missing}: expected the files of --stage build")


@draccus.wrap()
def main(cfg: RegressionConfig) -> None:
    check_config(cfg)
    if cfg.stage == "build":
        with tempfile.TemporaryDirectory() as scratch:
            built = build_policy_files(cfg.data_root_dir, cfg.dataset_name, Path(scratch), cfg.pooled_size)
            cfg.policy_dir.mkdir(parents=True, exist_ok=True)
            for name in POLICY_FILES:
                shutil.copy2(built / name, cfg.policy_dir / name)
        print(f"policy files: {cfg.policy_dir}")
        return
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "checkpoint"
        shutil.copytree(cfg.policy_dir, checkpoint)
        complete_checkpoint(checkpoint)
        for breakage in cfg.breakages:
            outcomes = run_episodes(checkpoint, cfg.episodes, breakage)
            successes = sum(success for success, _ in outcomes)
            print(json.dumps({"breakage": breakage, "successes": successes, "episodes": outcomes}), flush=True)


if __name__ == "__main__":
    run_cli(main)
