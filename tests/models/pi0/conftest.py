"""Fixtures for the pi0 tests: the ``pi0_tiny`` golden set (tests/golden/README.md), its model under rule
``pi0-golden-v1``, a small model for the loader, checkpoints written in each released layout, a tiny SentencePiece
model trained here."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sentencepiece
import torch
from safetensors.torch import load_file, save_file

from prismatic.models.pi0 import Pi0Config, Pi0Model, Pi0Observation, Pi0Output
from prismatic.testing.pi0_tiny import golden_observation, golden_pi0, golden_training_output, pi0_config_from_golden

PROMPTS = (
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "put both the alphabet soup and the tomato sauce in the basket",
    "open the top drawer and put the bowl inside",
    "turn on the stove and put the moka pot on it",
    "put the white mug on the left plate and put the yellow and white mug on the right plate",
    "move the gripper to the red block",
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
    return Pi0Config(
        vocab_size=300,
        vision_hidden_size=16,
        vision_num_layers=1,
        vision_num_heads=2,
        vision_intermediate_size=32,
        image_size=28,
        patch_size=14,
        vlm_width=32,
        vlm_mlp_dim=48,
        expert_width=16,
        expert_mlp_dim=24,
        depth=2,
        num_heads=8,
        num_kv_heads=1,
        head_dim=8,
        image_keys=["base_0_rgb"],
        tokenizer_max_length=8,
        chunk_size=4,
        max_state_dim=32,
        max_action_dim=32,
        action_dim=7,
        param_dtype="float32",
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
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(PROMPTS * 20),
        model_writer=model,
        vocab_size=50,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path
