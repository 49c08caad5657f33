"""A latest-only checkpoint caught mid-install (kill -9 while its entries move from ``.checkpoint-ready/`` into the
run folder): ``--resume`` and every reader finish the install first, through the function the trainer uses, and so
read the new save whole, never a mix of two saves; a partial ``.checkpoint-staging/`` is removed at start."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path

import draccus
import pytest
import torch

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.libero.preflight import check_eval_config
from experiments.robot.serving.config import ServeConfig, validate_serve_config
from prismatic.policy.load import load_vla
from prismatic.probing.features import load_probed_vla
from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint
from prismatic.training import checkpointing as ckpt
from prismatic.training.config import AlignFinetuneConfig
from prismatic.training.merge_check import ConvertConfig, _check_flags
from prismatic.training.run_guard import check_run_folder, content_digests, prepare_run_folder
from prismatic.util.cli import UserError

from .conftest import NORM_STATS, CliWorld
from .test_run_safety import Killed, file_operations_killed_at, save_latest, saved_version


def folder_contents(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> bytes), dot-folders (staging, ready) excluded."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not str(path.relative_to(folder)).startswith(".")
    }


def interrupted_install(world: CliWorld, tmp_path: Path, moved: int) -> tuple[Path, dict[str, bytes]]:
    """A run folder holding save A (the evaluation checkpoint) whose install of save B (another tiny policy) a kill
    interrupted after ``moved`` of B's entries went in; returns the folder and B's contents."""
    save_b = save_tiny_vla_checkpoint(tmp_path / "save_b", seed=3, norm_stats=NORM_STATS, with_heads=True)
    run_dir = Path(shutil.copytree(world.eval_checkpoint, tmp_path / "run"))
    for folder in (run_dir, save_b):  # both saves hold an adapter, so that the merge reads the folder too
        shutil.copytree(world.adapter_checkpoint / "lora_adapter", folder / "lora_adapter")
    expected = folder_contents(save_b)
    ready = Path(shutil.copytree(save_b, run_dir / ckpt.READY_DIR))
    entries = sorted(ready.iterdir(), key=lambda path: path.name.startswith(ckpt.TRAINING_STATE))
    for entry in entries[:moved]:  # the moves of finish_pending_install, in its order, up to the kill
        if entry.is_dir():
            ckpt.discard(run_dir / entry.name)
        entry.replace(run_dir / entry.name)
    assert folder_contents(run_dir) != expected  # the mix a reader must never see
    return run_dir, expected


READERS: dict[str, Callable[[Path, Path], object]] = {
    "load_vla": lambda run_dir, _: load_vla(run_dir, dtype=torch.float32),
    "evaluation": lambda run_dir, logs: check_eval_config(
        GenerateConfig(pretrained_checkpoint=str(run_dir), local_log_dir=str(logs)), "e1"
    ),
    "serving": lambda run_dir, _: validate_serve_config(ServeConfig(pretrained_checkpoint=str(run_dir))),
    "merging": lambda run_dir, _: _check_flags(ConvertConfig(lora_finetuned_checkpoint_dir=str(run_dir))),
    "probing": lambda run_dir, _: load_probed_vla(run_dir, "run", ["libero_spatial"]),
}


@pytest.mark.parametrize("moved", [1, 5])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_finishes_an_interrupted_install_and_reads_the_new_save_whole(cli_world, tmp_path, reader, moved):
    run_dir, expected = interrupted_install(cli_world, tmp_path, moved)

    READERS[reader](run_dir, tmp_path / "logs")

    assert not (run_dir / ckpt.READY_DIR).exists()
    assert folder_contents(run_dir) == expected


def test_load_vla_of_an_interrupted_install_returns_the_new_save(cli_world, tmp_path):
    run_dir, _ = interrupted_install(cli_world, tmp_path, 3)
    expected = load_vla(tmp_path / "save_b", dtype=torch.float32).vla.state_dict()

    loaded = load_vla(run_dir, dtype=torch.float32).vla.state_dict()

    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_a_reader_that_cannot_finish_the_install_refuses_the_folder(cli_world, tmp_path, monkeypatch):
    run_dir, _ = interrupted_install(cli_world, tmp_path, 2)

    def read_only(source, target):
        raise OSError(errno.EROFS, "Read-only file system", str(source))

    monkeypatch.setattr(ckpt.os, "replace", read_only)
    monkeypatch.setattr(ckpt.os, "rename", read_only)
    with pytest.raises(UserError, match=r"--pretrained_checkpoint .*run: a kill interrupted the install .*Read-only"):
        validate_serve_config(ServeConfig(pretrained_checkpoint=str(run_dir)))


def resume_flags(world: CliWorld, runs: Path) -> AlignFinetuneConfig:
    args = world.train_flags(run_id_override="r1", resume=True, run_root_dir=runs, save_latest_checkpoint_only=True)
    return draccus.parse(AlignFinetuneConfig, args=args)


# The first latest-only save does 4 moves: staging -> ready, then its 3 files (training state last).
@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_resume_finishes_the_first_latest_only_save_killed_while_moved_into_place(
    cli_world, tmp_path, monkeypatch, kill_at
):
    runs = Path(shutil.copytree(cli_world.runs, tmp_path / "runs"))
    shutil.rmtree(runs / "r1--2_chkpt")  # the run's only checkpoint is the latest-only one
    run_dir = runs / "r1"
    with monkeypatch.context() as patch:
        file_operations_killed_at(patch, kill_at)
        with pytest.raises(Killed):
            save_latest(run_dir, 1)
    assert (run_dir / ckpt.READY_DIR).is_dir()

    cfg = resume_flags(cli_world, runs)
    check_run_folder(cfg, run_dir, content_digests(cfg))

    assert not (run_dir / ckpt.READY_DIR).exists()
    assert ckpt.find_resume_checkpoint(run_dir, None) == (run_dir, None)
    assert saved_version(run_dir / "training_state--latest_checkpoint.pt") == 1


def test_a_partial_staging_folder_left_by_a_full_disk_is_removed_at_start(cli_world, tmp_path):
    runs = Path(shutil.copytree(cli_world.runs, tmp_path / "runs"))
    run_dir = runs / "r1"
    save_latest(run_dir, 1)
    writer = ckpt.CheckpointWriter(run_dir, in_place=True)  # the next save: the disk fills while it is assembled
    (writer.tmp_dir / "action_head--latest_checkpoint.pt").write_bytes(b"\0" * 4096)  # then ENOSPC: no commit
    cfg = resume_flags(cli_world, runs)

    content = content_digests(cfg)
    prepare_run_folder(cfg, run_dir, check_run_folder(cfg, run_dir, content), content)

    assert not (run_dir / ckpt.STAGING_DIR).exists()
    assert not list(run_dir.glob(f"{ckpt.STAGING_DIR}*"))
    assert saved_version(run_dir / "training_state--latest_checkpoint.pt") == 1
