"""Regenerate LIBERO's HDF5 demonstrations in the simulator and write them as an RLDS ``*_no_noops`` dataset.

    python vla-scripts/regenerate_libero_hdf5.py --hdf5_dir LIBERO/datasets/libero_spatial \\
        --data_root_dir data/libero --dataset_name libero_spatial_no_noops --num_workers 2

Every demo of every ``*.hdf5`` file of ``--hdf5_dir`` is replayed as upstream's ``regenerate_libero_dataset.py`` made
``openvla/modified_libero_rlds``: the demos of a file in order on one env (one reset each), from the recorded initial
state after 10 dummy steps, with no-op actions dropped; both cameras are re-rendered at ``--image_size`` and demos whose
task is not done at the end are dropped (see experiments/robot/libero/regenerate.py). Replays are saved in
``--work_dir`` (default ``<data_root_dir>/<dataset_name>_replays``), so a rerun resumes.
"""

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("USE_TF", "0")  # the workers render; TensorFlow is loaded only for the final write

import draccus  # noqa: E402

from experiments.robot.libero.regenerate import regenerate_libero  # noqa: E402
from prismatic.util.cli import UserError, run_cli  # noqa: E402


@dataclass
class RegenerateConfig:
    hdf5_dir: Path = Path("LIBERO/datasets/libero_spatial")  # folder of *.hdf5 demonstration files
    data_root_dir: Path = Path("data/libero")  # the dataset goes to <data_root_dir>/<dataset_name>/1.0.0/
    dataset_name: str = "libero_spatial_no_noops"
    image_size: int = 256  # side of both re-rendered cameras
    num_workers: int = 2  # simulator processes (one task file each at a time)
    work_dir: Path | None = None  # saved replays (resumable); default <data_root_dir>/<dataset_name>_replays
    keep_failed: bool = False  # keep demos whose task is not done after replay (upstream drops them)
    overwrite: bool = False


@draccus.wrap()
def main(cfg: RegenerateConfig) -> None:
    hdf5_paths = sorted(cfg.hdf5_dir.glob("*.hdf5"))
    if not hdf5_paths:
        raise UserError(f"--hdf5_dir {cfg.hdf5_dir} holds no *.hdf5 files.")
    if cfg.num_workers < 1 or cfg.image_size < 1:
        raise UserError(f"--num_workers and --image_size must be >= 1; got {cfg.num_workers}, {cfg.image_size}.")
    work_dir = cfg.work_dir or cfg.data_root_dir / f"{cfg.dataset_name}_replays"
    summary = regenerate_libero(
        hdf5_paths,
        cfg.data_root_dir,
        cfg.dataset_name,
        work_dir,
        cfg.image_size,
        cfg.num_workers,
        cfg.keep_failed,
        cfg.overwrite,
    )
    print(
        f"{summary.num_demos} demos replayed: {summary.num_kept} kept, {len(summary.failed_demos)} failed "
        f"({'kept' if cfg.keep_failed else 'dropped'}), {summary.num_noops_dropped} no-op steps dropped"
    )
    for file_path in summary.failed_demos:
        print(f"  failed: {file_path}")
    print(f"RLDS dataset: {summary.builder_dir}" if summary.builder_dir else "No demo kept: no dataset written.")


if __name__ == "__main__":
    run_cli(main)
