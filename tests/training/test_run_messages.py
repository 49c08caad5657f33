"""What a user reads: one error line under torchrun, and which folder holds a run's checkpoints."""

from __future__ import annotations

import pytest

from prismatic.policy.checkpoint_checks import check_policy_checkpoint
from prismatic.training.merge_check import ConvertConfig, _check_flags
from prismatic.util.cli import UserError

from .conftest import run_script, tiny_flags


def test_a_user_error_under_two_process_torchrun_is_printed_once_and_exits_2(
    tiny_checkpoints, synthetic_data, tmp_path
):
    flags = tiny_flags(tiny_checkpoints, synthetic_data, tmp_path, learning_rate=-1)
    result = run_script("finetune_align.py", flags, nproc=2, timeout=300)
    error = "error: --learning_rate -1.0: expected a value > 0"
    assert result.stderr.count(error) == 1, result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr  # torchrun's summary: the worker's status, not a crash
    assert "Traceback" not in result.stderr.split("ChildFailedError")[0].split(error)[0]  # nothing before the line
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.fixture
def run_folder(tmp_path):
    """A run folder as training leaves it (metrics only) with two step checkpoints beside it."""
    run_dir = tmp_path / "runs" / "my-run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("")
    for step in (2, 10):
        (tmp_path / "runs" / f"my-run--{step}_chkpt").mkdir()
    return run_dir


def test_evaluating_or_serving_the_run_folder_names_the_checkpoint_folder_to_use(run_folder):
    with pytest.raises(UserError) as error:
        check_policy_checkpoint(run_folder, "--pretrained_checkpoint", [])
    message = str(error.value)
    assert "is a training run folder" in message and "my-run--2_chkpt, my-run--10_chkpt" in message
    assert message.endswith(f"the latest {run_folder.parent / 'my-run--10_chkpt'}")


def test_merging_the_run_folder_names_the_checkpoint_folder_to_use(run_folder):
    with pytest.raises(FileNotFoundError, match="e.g. the latest .*my-run--10_chkpt"):
        _check_flags(ConvertConfig(lora_finetuned_checkpoint_dir=str(run_folder)))
