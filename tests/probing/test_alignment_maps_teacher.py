"""The alignment-maps tool refuses a VGGT other than the one the checkpoint's run trained against, and a checkpoint
trained against another teacher."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from prismatic.probing.alignment_maps import check_teacher
from prismatic.util.cli import UserError
from prismatic.util.io import file_sha256
from prismatic.vla.policy_config import SpatialForcingRecord, load_policy_config, write_policy_config


def with_recorded_teacher(checkpoint: Path, folder: Path, digest: str | None, teacher: str = "vggt") -> Path:
    """A copy of ``checkpoint`` whose ``policy_config.json`` records ``teacher`` and its ``digest`` (or none)."""
    copy = Path(shutil.copytree(checkpoint, folder))
    spatial_forcing = SpatialForcingRecord(vla_layers_align=1, teacher=teacher, vggt_image_size=112, vggt_sha256=digest)
    write_policy_config(copy, dataclasses.replace(load_policy_config(copy), spatial_forcing=spatial_forcing))
    return copy


def test_the_recorded_vggt_is_accepted_and_another_refused(
    tiny_checkpoints: list[Path], tiny_vggt_path: Path, tmp_path: Path
) -> None:
    other_vggt = tmp_path / "other_vggt.pt"
    data = tiny_vggt_path.read_bytes()
    other_vggt.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one byte differs
    trained = with_recorded_teacher(tiny_checkpoints[1], tmp_path / "trained", file_sha256(tiny_vggt_path))

    check_teacher(trained, tiny_vggt_path)
    with pytest.raises(UserError, match=r"--vggt_path .*other_vggt.pt is not the VGGT --checkpoint .*trained was"):
        check_teacher(trained, other_vggt)
    check_teacher(with_recorded_teacher(tiny_checkpoints[1], tmp_path / "unrecorded", None), other_vggt)


@pytest.mark.parametrize("teacher", ["geometry", "rgb"])
def test_a_checkpoint_of_another_teacher_is_refused_before_any_vggt_is_read(
    tiny_checkpoints: list[Path], tmp_path: Path, teacher: str
) -> None:
    trained = with_recorded_teacher(tiny_checkpoints[1], tmp_path / "trained", None, teacher)
    with pytest.raises(UserError, match=rf"trained against the '{teacher}' teacher; .* expected a checkpoint of"):
        check_teacher(trained, tmp_path / "absent.pt")
