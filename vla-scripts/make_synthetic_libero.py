"""Write the synthetic LIBERO-format task ("move the gripper to the <colour> block") as an RLDS dataset.

    python vla-scripts/make_synthetic_libero.py --data_root_dir data/synthetic_libero \
        --dataset_name libero_spatial_no_noops --num_episodes 20 --episode_length 40

The result reads like a downloaded ``modified_libero_rlds`` suite (train with ``--data_root_dir`` pointing at
the same folder and the same ``--dataset_name``). See ``prismatic/vla/datasets/synthetic.py`` for the task.
"""

import draccus

from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, write_synthetic_libero


@draccus.wrap()
def main(cfg: SyntheticLiberoConfig) -> None:
    builder_dir = write_synthetic_libero(cfg)
    print(f"Wrote {cfg.num_episodes} episodes x {cfg.episode_length} steps to {builder_dir}")


if __name__ == "__main__":
    main()
