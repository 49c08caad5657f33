"""Write the synthetic LIBERO-format task ("move the gripper to the <colour> block") as an RLDS dataset.

    python vla-scripts/make_synthetic_libero.py --data_root_dir data/synthetic_libero \
        --dataset_name libero_spatial_no_noops --num_episodes 20 --episode_length 40

The result reads like a downloaded ``modified_libero_rlds`` suite (train with ``--data_root_dir`` pointing at
the same folder and the same ``--dataset_name``). See ``prismatic/vla/datasets/synthetic.py`` for the task.
"""

import draccus

from prismatic.util.cli import UserError, run_cli
from prismatic.util.file_checks import check_writable_dir
from prismatic.vla.datasets.registry import DATASETS
from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, write_synthetic_libero
from prismatic.vla.datasets.writer import check_output_dataset


@draccus.wrap()
def main(cfg: SyntheticLiberoConfig) -> None:
    if cfg.dataset_name not in DATASETS:
        raise UserError(
            f"--dataset_name {cfg.dataset_name!r} is not a known dataset: expected one of {sorted(DATASETS)}"
        )
    for flag in ("num_episodes", "episode_length", "image_size"):
        if getattr(cfg, flag) < 1:
            raise UserError(f"--{flag} {getattr(cfg, flag)}: expected a positive integer")
    if not cfg.step_size > 0:
        raise UserError(f"--step_size {cfg.step_size}: expected a positive distance per step")
    check_writable_dir(cfg.data_root_dir, "--data_root_dir")
    check_output_dataset(cfg.data_root_dir, cfg.dataset_name, cfg.overwrite)
    builder_dir = write_synthetic_libero(cfg)
    print(f"Wrote {cfg.num_episodes} episodes x {cfg.episode_length} steps to {builder_dir}")


if __name__ == "__main__":
    run_cli(main)
