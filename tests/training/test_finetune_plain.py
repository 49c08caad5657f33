"""finetune.py is the same loop without the teacher: no VGGT flag, no align projector, same released layout."""

from __future__ import annotations

import dataclasses

import pytest

from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.training.metrics import read_metrics

from .conftest import run_script, tiny_flags

SF_ONLY_FLAGS = {field.name for field in dataclasses.fields(AlignFinetuneConfig)} - {
    field.name for field in dataclasses.fields(FinetuneConfig)
}


@pytest.mark.slow
def test_plain_finetune_trains_and_saves_without_alignment(tiny_checkpoints, synthetic_data, tmp_path):
    flags = [
        flag
        for flag in tiny_flags(tiny_checkpoints, synthetic_data, tmp_path, max_steps=2, save_freq=2)
        if flag.split("=")[0].removeprefix("--") not in SF_ONLY_FLAGS
    ]
    result = run_script("finetune.py", flags)
    assert result.returncode == 0, result.stderr[-4000:]
    folder = tmp_path / "tiny-run--2_chkpt"
    # Where the weights are, at the save and at the end (the run folder holds only metrics and logs).
    assert f"step 2: checkpoint saved to {folder}\n" in result.stdout
    assert f"Checkpoint to merge, evaluate or serve: {folder} (metrics and logs: " in result.stdout
    assert (folder / "action_head--2_checkpoint.pt").is_file()
    assert not list(folder.glob("align_projector--*"))
    metrics = read_metrics(tmp_path / "tiny-run")
    assert [m["step"] for m in metrics] == [0, 1, 2] and all("align_loss" not in m for m in metrics)


def test_plain_finetune_rejects_spatial_forcing_flags(tiny_checkpoints, synthetic_data, tmp_path):
    flags = [*tiny_flags(tiny_checkpoints, synthetic_data, tmp_path)]
    result = run_script("finetune.py", flags, timeout=120)
    assert result.returncode != 0
    assert "vggt_path" in result.stderr
