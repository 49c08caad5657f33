"""OpenVLA-OFT fine-tuning (no alignment): the same loop as finetune_align.py without the VGGT teacher.

Flags: ``prismatic.training.config.FinetuneConfig`` (``--help`` lists them by group); ``--preset NAME``
(``prismatic.training.presets``) fills the flags left out.
"""

from prismatic.training.config import FinetuneConfig
from prismatic.training.presets import resolve_config
from prismatic.util.cli import run_cli


def main() -> None:
    cfg = resolve_config(FinetuneConfig)
    # Imported after parsing: the trainer pulls transformers and the data pipeline, which --help does not need.
    from prismatic.training.trainer import train

    train(cfg)


if __name__ == "__main__":
    run_cli(main)
