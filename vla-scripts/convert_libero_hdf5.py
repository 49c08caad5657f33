"""Convert LIBERO's raw HDF5 demonstrations into an RLDS ``*_no_noops`` dataset.

    python vla-scripts/convert_libero_hdf5.py --hdf5_dir LIBERO/datasets/libero_spatial \
        --data_root_dir data/libero --dataset_name libero_spatial_no_noops

Every ``*.hdf5`` file of ``--hdf5_dir`` (one per task) is read; no-op steps are dropped and both cameras rotated
by 180 degrees, as in ``openvla/modified_libero_rlds`` (see ``prismatic/vla/datasets/libero_hdf5.py``).
"""

from dataclasses import dataclass
from pathlib import Path

import draccus

from prismatic.util.cli import UserError, run_cli
from prismatic.util.file_checks import check_writable_dir
from prismatic.vla.datasets.libero_hdf5 import check_libero_hdf5, convert_libero_hdf5
from prismatic.vla.datasets.registry import DATASETS
from prismatic.vla.datasets.writer import check_output_dataset


@dataclass
class ConvertConfig:
    hdf5_dir: Path = Path("LIBERO/datasets/libero_spatial")  # folder of *.hdf5 demonstration files
    data_root_dir: Path = Path("data/libero")  # the dataset goes to <data_root_dir>/<dataset_name>/1.0.0/
    dataset_name: str = "libero_spatial_no_noops"
    image_size: int = 256
    overwrite: bool = False


@draccus.wrap()
def main(cfg: ConvertConfig) -> None:
    if cfg.dataset_name not in DATASETS:
        raise UserError(
            f"--dataset_name {cfg.dataset_name!r} is not a known dataset: expected one of {sorted(DATASETS)}"
        )
    hdf5_paths = sorted(cfg.hdf5_dir.glob("*.hdf5"))
    if not hdf5_paths:
        raise UserError(f"--hdf5_dir {cfg.hdf5_dir} holds no *.hdf5 files: expected LIBERO's demonstration files")
    if cfg.image_size < 1:
        raise UserError(f"--image_size {cfg.image_size}: expected a positive side in pixels (256 as LIBERO)")
    for path in hdf5_paths:
        check_libero_hdf5(path)
    check_writable_dir(cfg.data_root_dir, "--data_root_dir")
    check_output_dataset(cfg.data_root_dir, cfg.dataset_name, cfg.overwrite)
    builder_dir = convert_libero_hdf5(hdf5_paths, cfg.data_root_dir, cfg.dataset_name, cfg.image_size, cfg.overwrite)
    print(f"Converted {len(hdf5_paths)} HDF5 files to {builder_dir}")


if __name__ == "__main__":
    run_cli(main)
