"""Writes tiny base checkpoints for CPU runs: a tiny OpenVLA folder (released layout) and a tiny VGGT model.pt.

    python vla-scripts/make_tiny_checkpoints.py --out_dir ckpts/tiny

Then train with ``--vla_path ckpts/tiny/tiny-openvla --vggt_path ckpts/tiny/tiny-vggt-model.pt --vggt_image_size 112``
(the tiny VGGT sees 112 px images, as ``make demo`` and the tests train it).
"""

from dataclasses import dataclass
from pathlib import Path

import draccus

from prismatic.testing.tiny_checkpoints import PATCH_SIZE, TINY_VLA_IMAGE_SIZE, write_tiny_base_checkpoints
from prismatic.util.cli import UserError, run_cli
from prismatic.util.file_checks import check_writable_dir


@dataclass
class TinyCheckpointConfig:
    out_dir: Path = Path("ckpts/tiny")  # Where the two checkpoints are written
    seed: int = 0  # Seed of the random initialisation
    image_size: int = TINY_VLA_IMAGE_SIZE  # The VLA's input side in pixels (a multiple of the patch side, 14)


@draccus.wrap()
def main(cfg: TinyCheckpointConfig) -> None:
    if cfg.image_size < PATCH_SIZE or cfg.image_size % PATCH_SIZE:
        raise UserError(f"--image_size {cfg.image_size}: expected a positive multiple of the patch side {PATCH_SIZE}")
    check_writable_dir(cfg.out_dir, "--out_dir")
    vla_dir, vggt_path = write_tiny_base_checkpoints(cfg.out_dir, cfg.seed, cfg.image_size)
    print(f"tiny OpenVLA: {vla_dir}\ntiny VGGT:    {vggt_path}")


if __name__ == "__main__":
    run_cli(main)
