"""Check (and load) a released pi0 checkpoint and the PaliGemma tokenizer; print what was found.

    python -m prismatic.models.pi0.check_checkpoint --checkpoint DIR_OR_FILE --tokenizer tokenizer.model \\
        [--config_file pi0_config.json] [--load false]

The tokenizer, the checkpoint's family and layout, and every tensor's shape against the config are checked from
the files' headers before any weight is read; a problem is one ``error:`` line and exit status 2.
"""

# No `from __future__ import annotations` here: draccus reads the config class from the signature.
import json
from dataclasses import dataclass
from pathlib import Path

import draccus
import torch

from prismatic.models.pi0.configuration_pi0 import Pi0Config
from prismatic.models.pi0.loading_pi0 import check_checkpoint, load_pi0_weights, read_checkpoint
from prismatic.models.pi0.modeling_pi0 import Pi0Model
from prismatic.models.pi0.tokenization_pi0 import Pi0Tokenizer
from prismatic.util.cli import UserError, run_cli, user_errors


@dataclass
class CheckConfig:
    checkpoint: Path = Path("pi0")  # folder holding model.safetensors (openpi or lerobot layout), or the file
    tokenizer: Path = Path("tokenizer.model")  # PaliGemma's SentencePiece model
    config_file: Path | None = None  # JSON of Pi0Config fields; default: the released pi0's sizes
    load: bool = True  # after the checks, build the model on the CPU and load the weights


def read_pi0_config(config_file: Path | None) -> Pi0Config:
    """The released pi0's config, or the fields of ``config_file``."""
    if config_file is None:
        return Pi0Config()
    if not config_file.is_file():
        raise UserError(f"--config_file {config_file}: no such file: expected a JSON object of Pi0Config fields")
    with user_errors(ValueError, TypeError, OSError):
        return Pi0Config(**json.loads(config_file.read_text()))


@draccus.wrap()
def main(cfg: CheckConfig) -> None:
    config = read_pi0_config(cfg.config_file)
    tokenizer = Pi0Tokenizer(cfg.tokenizer, config.tokenizer_max_length)
    tokenizer.check_vocab(config.vocab_size)
    checkpoint = read_checkpoint(cfg.checkpoint)
    with torch.device("meta"):
        expected_shapes = {key: tuple(tensor.shape) for key, tensor in Pi0Model(config).state_dict().items()}
    check_checkpoint(checkpoint, expected_shapes, config)
    print(
        f"{checkpoint.path}: pi0, {checkpoint.layout} layout, {len(checkpoint.shapes)} tensors; tokenizer "
        f"{tokenizer.vocab_size} pieces"
    )
    if cfg.load:
        report = load_pi0_weights(Pi0Model(config).eval(), checkpoint)
        print("\n".join(report.lines()))


if __name__ == "__main__":
    run_cli(main)
