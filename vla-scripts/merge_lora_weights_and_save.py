"""Merge a checkpoint's LoRA adapter into the base VLA and save it there, verified on a probe input.

    python vla-scripts/merge_lora_weights_and_save.py \\
        --base_checkpoint openvla/openvla-7b \\
        --lora_finetuned_checkpoint_dir runs/<run_id>--150000_chkpt

Writes ``config.json``, ``model-0000i-of-0000n.safetensors`` and ``model.safetensors.index.json`` into the
checkpoint folder, after checking that the merged model (in memory and reloaded from the files) predicts the same
actions as base + adapter; prints the differences and exits non-zero when one is above ``--tolerance`` (nothing is
written then). ``--verify_only True`` checks the merged model already in the folder (e.g. one written by
``merge_lora_during_training``). Flags: ``prismatic.training.merge_check.ConvertConfig`` (``--help`` lists them).
"""

import logging
import sys

import draccus

from prismatic.training.merge_check import ConvertConfig, merge_lora_checkpoint
from prismatic.util.cli import run_cli


@draccus.wrap()
def main(cfg: ConvertConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = merge_lora_checkpoint(cfg)
    print(report.summary())
    if not report.passed:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
