"""OpenVLA-OFT fine-tuning (no alignment): the same loop as finetune_align.py without the VGGT teacher.

Flags: ``prismatic.training.config.FinetuneConfig`` (``--help`` lists them).
"""

import draccus

from prismatic.training.config import FinetuneConfig
from prismatic.training.trainer import train
from prismatic.util.cli import run_cli


@draccus.wrap()
def main(cfg: FinetuneConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    run_cli(main)
