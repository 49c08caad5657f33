"""Fixtures for the pi0 tests: the ``pi0_tiny`` golden set (tests/golden/README.md), its model under rule
``pi0-golden-v1``, a small model for the loader, checkpoints written in each released layout, a tiny SentencePiece
model trained here."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prismatic.models.pi0 import Pi0Config, Pi0Model, Pi0Observation, Pi0Output
from prismatic.testing.pi0_tiny import (
    golden_observation,
    golden_pi0,
    golden_training_output,
    pi0_config_from_golden,
    tiny_pi0_config,
    train_tiny_sentencepiece,
)


@pytest.fixture(scope="session")
def golden(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "pi0_tiny.safetensors")


@pytest.fixture(scope="session")
def golden_meta(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "pi0_tiny.json").read_text())


@pytest.fixture(scope="session")
def golden_config(golden_meta: dict) -> Pi0Config:
    return pi0_config_from_golden(golden_meta["config"])


@pytest.fixture(scope="session")
def golden_model(golden_config: Pi0Config) -> Pi0Model:
    return golden_pi0(golden_config)


@pytest.fixture(scope="session")
def golden_inputs(golden: dict[str, torch.Tensor]) -> Pi0Observation:
    return golden_observation(golden)


@pytest.fixture(scope="session")
def training(golden: dict, golden_model: Pi0Model, golden_inputs: Pi0Observation) -> Pi0Output:
    """The golden training forward with the prefix hidden states."""
    return golden_training_output(golden_model, golden, golden_inputs, output_hidden_states=True)


@pytest.fixture(scope="session")
def small_config() -> Pi0Config:
    """A pi0 small enough to build in a fraction of a second, for the loader (sizes differ per tower on purpose)."""
    return tiny_pi0_config(
        vocab_size=300, image_size=28, image_keys=["base_0_rgb"], tokenizer_max_length=8, chunk_size=4
    )


@pytest.fixture(scope="session")
def small_model(small_config: Pi0Config) -> Pi0Model:
    return golden_pi0(small_config)


@pytest.fixture
def write_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Writes a checkpoint folder (``model.safetensors``, optionally ``config.json``); returns the folder."""

    def write(tensors: dict[str, torch.Tensor], name: str = "ckpt", config: dict | None = None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, folder / "model.safetensors")
        if config is not None:
            (folder / "config.json").write_text(json.dumps(config))
        return folder

    return write


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SentencePiece model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3), trained here."""
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model")
