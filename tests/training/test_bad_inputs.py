"""Bad fine-tuning input fails before any compute, with a message that names the flag at fault."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.training.config_checks import validate_config
from prismatic.training.metrics import read_metrics
from prismatic.training.trainer import check_finite_losses
from prismatic.util.cli import UserError

from .conftest import run_script, tiny_flags


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
        ({"lerobot_frame_cache_mb": -1}, "--lerobot_frame_cache_mb -1"),
        ({"align_loss_type": "l2"}, "align_loss_type 'l2'"),
        ({"pooling_func": "nearest"}, "pooling_func"),
        ({"scheduler": "linear"}, "--scheduler"),
        ({"use_diffusion": True}, "--use_diffusion"),
        ({"attn_implementation": "flash_attention_2"}, "flash_attention_2"),
        ({"model_family": "pi1"}, "--model_family 'pi1'"),
        (
            {"model_family": "pi0", "merge_lora_during_training": False},
            "--model_family pi0 --use_lora True: --merge_lora_during_training False is not supported",
        ),
        (  # an OpenVLA folder as pi0's base: refused before any weight is read (--image_aug True passes)
            {"model_family": "pi0", "use_proprio": True, "gain_feat_1move": False, "image_aug": True},
            "expected a pi0 checkpoint folder",
        ),
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


def test_finite_losses_pass_and_a_nan_loss_names_the_step_and_the_batch():
    check_finite_losses(3, {"loss": 0.5, "action_loss": 0.25}, None)
    with pytest.raises(UserError) as error:
        check_finite_losses(3, {"loss": float("nan"), "action_loss": 0.25}, "micro-batch 1 (samples 6..7 of rank 0)")
    assert str(error.value).startswith(
        "step 3: non-finite loss {'loss': nan} in micro-batch 1 (samples 6..7 of rank 0): expected finite losses"
    )


@pytest.mark.slow
def test_training_that_diverges_stops_at_the_first_nan_loss_before_the_update_and_saves_nothing(
    tiny_checkpoints, synthetic_data, tmp_path
):
    flags = tiny_flags(tiny_checkpoints, synthetic_data, tmp_path, learning_rate=1e30, max_steps=3, save_freq=2)

    result = run_script("finetune_align.py", flags)

    assert result.returncode == 2, result.stderr[-3000:]
    [error_line] = [line for line in result.stderr.splitlines() if "error: " in line]
    assert "error: step 1: non-finite loss {" in error_line
    assert "in micro-batch 0 (samples 2..3 of rank 0's stream)" in error_line
    assert "Traceback" not in result.stderr
    assert [m["step"] for m in read_metrics(tmp_path / "tiny-run")] == [0]
    assert not list(tmp_path.glob("tiny-run--*_chkpt*"))
