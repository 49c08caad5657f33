"""The policy's choices are one table (``prismatic.vla.policy_config.POLICY_CHOICES``): evaluation and training
have its flags, training records each training flag it names (and what ``--image_aug`` did, per family), and a resume
without ``training_config.json`` refuses a change of any of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from experiments.robot.libero.config import GenerateConfig
from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.training.pi0_training import as_pi0_policy_config
from prismatic.training.run_guard import _check_flags_against_policy
from prismatic.training.training_family import training_policy_config
from prismatic.util.cli import UserError
from prismatic.vla.constants import constants_for
from prismatic.vla.policy_config import (
    HEAD_FLAGS,
    NO_AUGMENTATION,
    OFT_AUGMENTATION,
    OPENPI_AUGMENTATION,
    OPENPI_COLOUR_AUGMENTATION,
    POLICY_FLAGS,
    TRAINING_CHOICES,
    PolicyConfig,
    training_flags,
    write_policy_config,
)

from .conftest import DATASET_NAME

TRAINING_FLAGS = sorted({*HEAD_FLAGS, *(choice.training_flag for choice in TRAINING_CHOICES)})


@pytest.mark.parametrize("cli_config", [GenerateConfig, FinetuneConfig])
def test_every_cli_has_the_flags_of_the_table(cli_config: type) -> None:
    names = {field.name for field in dataclasses.fields(cli_config)}
    expected = TRAINING_FLAGS if cli_config is FinetuneConfig else POLICY_FLAGS
    assert set(expected) <= names, sorted(set(expected) - names)


@pytest.mark.parametrize("flag", TRAINING_FLAGS)
def test_training_records_each_flag_of_the_table_and_a_resume_refuses_its_change(
    flag: str, tiny_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    started = FinetuneConfig(vla_path=str(tiny_checkpoints[0]), dataset_name=DATASET_NAME, use_proprio=True)
    default = getattr(started, flag)
    changed = dataclasses.replace(started, **{flag: not default if isinstance(default, bool) else default + 1})
    platform = constants_for(DATASET_NAME)
    assert training_flags(training_policy_config(started, platform))[flag] == default
    assert training_flags(training_policy_config(changed, platform))[flag] == getattr(changed, flag)

    checkpoint = tmp_path / "run--2_chkpt"
    checkpoint.mkdir()
    write_policy_config(checkpoint, training_policy_config(started, platform))
    _check_flags_against_policy(started, checkpoint, tmp_path / "run")  # the same flags resume
    with pytest.raises(UserError, match=f"--{flag} {default!r} -> {getattr(changed, flag)!r}"):
        _check_flags_against_policy(changed, checkpoint, tmp_path / "run")


@pytest.mark.parametrize(
    "config_class, family, recorded",
    [
        (FinetuneConfig, "openvla-oft", OFT_AUGMENTATION),
        (FinetuneConfig, "pi0", OPENPI_AUGMENTATION),
        (AlignFinetuneConfig, "pi0", OPENPI_COLOUR_AUGMENTATION),  # SF-pi0: colour only
    ],
)
def test_image_aug_is_recorded_and_a_resume_without_training_config_refuses_its_change(
    config_class: type, family: str, recorded: str, tiny_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    started = config_class(
        vla_path=str(tiny_checkpoints[0]),
        dataset_name=DATASET_NAME,
        model_family=family,
        use_l1_regression=family != "pi0",  # pi0's flow matching, as its preset sets
    )
    changed = dataclasses.replace(started, image_aug=False)

    def policy_config(cfg: FinetuneConfig) -> PolicyConfig:
        policy = training_policy_config(cfg, constants_for(DATASET_NAME))
        return as_pi0_policy_config(policy, cfg) if family == "pi0" else policy

    assert policy_config(started).training_augmentation == recorded
    assert policy_config(changed).training_augmentation == NO_AUGMENTATION
    checkpoint = tmp_path / "run--2_chkpt"
    checkpoint.mkdir()
    write_policy_config(checkpoint, policy_config(started))
    _check_flags_against_policy(started, checkpoint, tmp_path / "run")
    with pytest.raises(UserError, match="--image_aug True -> False"):
        _check_flags_against_policy(changed, checkpoint, tmp_path / "run")
