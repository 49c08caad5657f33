"""Bad fine-tuning input fails before any compute, with a message that names the flag at fault."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.training.config_checks import validate_config
from prismatic.util.cli import UserError


@pytest.fixture
def valid_config(tiny_checkpoints, synthetic_data) -> AlignFinetuneConfig:
    vla_dir, vggt_path = tiny_checkpoints
    return AlignFinetuneConfig(
        vla_path=str(vla_dir),
        vggt_path=str(vggt_path),
        vggt_image_size=112,
        data_root_dir=synthetic_data,
        dataset_name="libero_spatial_no_noops",
        num_images_in_input=2,
        vla_layers_align=2,
    )


def test_valid_config_passes_and_yields_libero_constants(valid_config):
    assert validate_config(valid_config).num_actions_chunk == 8


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset_name": "libero_kitchen"}, "'libero_kitchen'"),
        ({"vla_path": "/nonexistent/vla"}, "--vla_path"),
        ({"vggt_path": "/nonexistent/model.pt"}, "--vggt_path"),
        ({"data_root_dir": Path("/nonexistent/data")}, "--data_root_dir"),
        ({"vla_layers_align": 3}, "--vla_layers_align 3"),
        ({"vla_layers_align": -4}, "--vla_layers_align -4"),
        ({"num_images_in_input": 3}, "--num_images_in_input 3"),
        ({"batch_size": 0}, "--batch_size"),
        ({"align_loss_type": "l2"}, "align_loss_type 'l2'"),
        ({"pooling_func": "nearest"}, "pooling_func"),
        ({"scheduler": "linear"}, "--scheduler"),
        ({"use_diffusion": True}, "--use_diffusion"),
        ({"attn_implementation": "flash_attention_2"}, "flash_attention_2"),
    ],
)
def test_bad_input_names_the_culprit(valid_config, change, message):
    with pytest.raises((ValueError, FileNotFoundError, UserError)) as error:
        validate_config(dataclasses.replace(valid_config, **change))
    assert message in str(error.value)


def test_last_hidden_state_index_is_in_range(valid_config):
    assert validate_config(dataclasses.replace(valid_config, vla_layers_align=-3)).action_dim == 7


def test_plain_finetune_needs_no_teacher(valid_config):
    plain = FinetuneConfig(
        vla_path=valid_config.vla_path,
        data_root_dir=valid_config.data_root_dir,
        dataset_name=valid_config.dataset_name,
    )
    assert validate_config(plain).proprio_dim == 8
