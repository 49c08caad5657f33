"""Scripted LIBERO demonstrations from the pick-and-place oracle, written as RLDS (the trainer's LIBERO layout) or
LeRobot v3.0, with depth, camera geometry, MuJoCo states and oracle phases beside every frame.

    python vla-scripts/generate_libero_demos.py --task_suite_name libero_spatial --task_ids '[0]' --num_demos 50 \
        --data_root_dir datasets/oracle [--format rlds|lerobot] [--num_workers 1]

Flags: ``experiments.robot.libero.demo_generation.DemoGenerationConfig``. A rerun resumes (finished attempts are
skipped); see that module's docstring for the files written.
"""

import draccus

from experiments.robot.libero.demo_generation import DemoGenerationConfig, generate_demos
from prismatic.util.cli import run_cli


@draccus.wrap()
def main(cfg: DemoGenerationConfig) -> None:
    summary = generate_demos(cfg)
    for line in summary.lines():
        print(line)
    if summary.preview is not None:
        print(f"preview: {summary.preview}")


if __name__ == "__main__":
    run_cli(main)
