"""Spatial Forcing fine-tuning of OpenVLA-OFT. The paper's command runs unchanged, e.g. on 8 GPUs:

    torchrun --standalone --nnodes 1 --nproc-per-node 8 vla-scripts/finetune_align.py \\
        --vla_path ckpts/openvla-7b --vggt_path ckpts/model.pt --data_root_dir data/libero/ \\
        --dataset_name libero_spatial_no_noops --pooling_func bilinear --vla_layers_align 24 ...

Flags: ``prismatic.training.config.AlignFinetuneConfig`` (``--help`` lists them by group); ``--preset NAME``
(``prismatic.training.presets``) fills the flags left out.
"""

from prismatic.training.config import AlignFinetuneConfig
from prismatic.training.presets import resolve_config
from prismatic.util.cli import run_cli


def main() -> None:
    cfg = resolve_config(AlignFinetuneConfig)
    # Imported after parsing: the trainer pulls transformers and the data pipeline, which --help does not need.
    from prismatic.training.trainer import train

    train(cfg)


if __name__ == "__main__":
    run_cli(main)
