"""Writes tiny base checkpoints for CPU runs: a tiny OpenVLA folder (released layout) and a tiny VGGT model.pt.

    python vla-scripts/make_tiny_checkpoints.py --out_dir ckpts/tiny

Then train with ``--vla_path ckpts/tiny/tiny-openvla --vggt_path ckpts/tiny/tiny-vggt-model.pt --vggt_image_size 112``
(the tiny VGGT sees 112 px images, as ``make demo`` and the tests train it).
"""

from dataclasses import dataclass
from pathlib import Path

import draccus

from prismatic.testing.tiny_checkpoints import write_tiny_base_checkpoints
from prismatic.util.cli import run_cli
from prismatic.util.file_checks import check_writable_dir


@dataclass
class TinyCheckpointConfig:
    out_dir: Path = Path("ckpts/tiny")  # Where the two checkpoints are written
    seed: int = 0  # Seed of the random initialisation


@draccus.wrap()
def main(cfg: TinyCheckpointConfig) -> None:
    check_writable_dir(cfg.out_dir, "--out_dir")
    vla_dir, vggt_path = write_tiny_base_checkpoints(cfg.out_dir, cfg.seed)
    print(f"tiny OpenVLA: {vla_dir}\ntiny VGGT:    {vggt_path}")


if __name__ == "__main__":
    run_cli(main)
