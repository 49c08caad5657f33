"""Spatial Forcing fine-tuning of OpenVLA-OFT. The paper's command runs unchanged, e.g. on 8 GPUs:

    torchrun --standalone --nnodes 1 --nproc-per-node 8 vla-scripts/finetune_align.py \\
        --vla_path ckpts/openvla-7b --vggt_path ckpts/model.pt --data_root_dir data/libero/ \\
        --dataset_name libero_spatial_no_noops --pooling_func bilinear --vla_layers_align 24 ...

Flags: ``prismatic.training.config.AlignFinetuneConfig`` (``--help`` lists them).
"""

import draccus

from prismatic.training.config import AlignFinetuneConfig
from prismatic.training.trainer import train
from prismatic.util.cli import run_cli


@draccus.wrap()
def main(cfg: AlignFinetuneConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    run_cli(main)
