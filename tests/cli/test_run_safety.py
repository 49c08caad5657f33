"""Nothing destroys earlier work: kills at any point of a save, stale temporaries, resume compatibility, the recorded
base model, a second evaluation process on the same run, a full disk."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import draccus
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from prismatic.policy.base_model_record import base_model_record, verify_base_model, write_base_model_record
from prismatic.testing.processes import dead_pid
from prismatic.training import checkpointing as ckpt
from prismatic.training.config import AlignFinetuneConfig
from prismatic.training.merge_check import ConvertConfig, merge_lora_checkpoint
from prismatic.training.run_guard import (
    CONTENT_KEY,
    check_run_folder,
    check_same_statistics,
    content_digests,
    prepare_run_folder,
)
from prismatic.util.checkpoint_files import TRAINING_CONFIG_NAME, WEIGHTS_INDEX_NAME
from prismatic.util.cli import UserError, run_cli, writing
from prismatic.util.io import remove_stale_temporaries
from prismatic.util.locking import hold_run_lock
from prismatic.vla.datasets.statistics import compute_statistics, save_dataset_statistics

from .conftest import CLI_ENV, DATASET_NAME, REPO_ROOT, run_cases, run_script

FILES_PER_SAVE = ("training_state--latest_checkpoint.pt", "action_head--latest_checkpoint.pt", "payload")


class Killed(Exception):
    """Stands for kill -9 at one point of a save."""


def save_latest(run_dir: Path, version: int) -> None:
    """One latest-only save (into the run folder itself, as upstream) whose every file holds ``{"step": version}``
    (a training state as ``--resume``'s checks read it)."""
    writer = ckpt.CheckpointWriter(ckpt.checkpoint_dir(run_dir, None), in_place=True)
    for name in FILES_PER_SAVE:
        torch.save({"step": version}, writer.tmp_dir / name)
    writer.commit()


def saved_version(path: Path) -> int:
    """The version :func:`save_latest` wrote into ``path``."""
    return torch.load(path, weights_only=True)["step"]


def resumable_version(run_dir: Path) -> int:
    """The version ``--resume`` would load (after training's start-up completes an interrupted install); asserts its
    folder is complete and consistent."""
    ckpt.finish_pending_install(run_dir)
    folder, step = ckpt.find_resume_checkpoint(run_dir, None)
    assert step is None
    versions = {saved_version(folder / name) for name in FILES_PER_SAVE}
    assert len(versions) == 1, f"{folder} mixes saves {versions}"
    return int(versions.pop())


def file_operations_killed_at(monkeypatch: pytest.MonkeyPatch, kill_at: int | None) -> None:
    """Counts the renames, file moves and deletions of discarded folders of a commit; the ``kill_at``-th raises
    Killed (a deletion first removes one file, as a kill in the middle of ``rmtree`` would)."""
    counter = itertools.count()
    rename, replace, rmtree = ckpt.os.rename, ckpt.os.replace, ckpt.shutil.rmtree

    def killed_rename(source, target):
        if next(counter) == kill_at:
            raise Killed(f"rename {source} -> {target}")
        rename(source, target)

    def killed_replace(source, target):
        if next(counter) == kill_at:
            raise Killed(f"replace {source} -> {target}")
        replace(source, target)

    def killed_rmtree(path, *args, **kwargs):
        if ".trash-" in Path(path).name and Path(path).exists() and next(counter) == kill_at:
            for child in Path(path).glob("*"):
                child.unlink()
                break
            raise Killed(f"rmtree {path}")
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ckpt.os, "rename", killed_rename)
    monkeypatch.setattr(ckpt.os, "replace", killed_replace)
    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_rmtree)


# A latest-only save does 4 moves (staging -> ready, then the 3 files, training state last): kills at 0..3, 4 = none.
@pytest.mark.parametrize(("first_kill", "second_kill"), list(itertools.product(range(5), range(5))))
def test_resume_finds_a_complete_checkpoint_after_kills_at_any_point_of_two_saves(
    tmp_path, monkeypatch, first_kill, second_kill
):
    run_dir = tmp_path / "run"
    save_latest(run_dir, 1)
    for version, kill_at in ((2, first_kill), (3, second_kill)):
        with monkeypatch.context() as patch:
            file_operations_killed_at(patch, kill_at)
            with contextlib.suppress(Killed):
                save_latest(run_dir, version)
        assert resumable_version(run_dir) in {version - 1, version, 1}
    save_latest(run_dir, 4)  # the resumed run saves again, cleanly
    assert resumable_version(run_dir) == 4
    remove_stale_temporaries(tmp_path)


def test_a_kill_during_the_install_then_a_kill_of_the_resumed_save_keeps_the_complete_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    save_latest(run_dir, 1)
    with monkeypatch.context() as patch:
        file_operations_killed_at(patch, 2)  # staging -> ready and one file moved; killed moving the second
        with pytest.raises(Killed):
            save_latest(run_dir, 2)
    assert (run_dir / ckpt.READY_DIR).is_dir()  # the run folder mixes saves 1 and 2 until the install completes
    with monkeypatch.context() as patch:
        file_operations_killed_at(patch, 1)  # the next save completes save 2's install, then is killed
        with pytest.raises(Killed):
            save_latest(run_dir, 3)
    assert resumable_version(run_dir) == 2


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    pid = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        checkpoint = tmp_path / "run--2_chkpt"
        stale = [
            tmp_path / f"run--4_chkpt.tmp-{pid}",
            tmp_path / f"run--latest_chkpt.trash-{pid}",
            checkpoint / f".merged-staging-{pid}",
        ]
        kept = [checkpoint / "training_state--2_checkpoint.pt", tmp_path / f"run--6_chkpt.tmp-{live.pid}"]
        for folder in [*stale, kept[1]]:
            folder.mkdir(parents=True)
            (folder / "partial.safetensors").write_bytes(b"\0" * 64)
        kept[0].write_bytes(b"state")
        # atomic_output's temporary files (write_json_atomic), left by a kill -9 mid-write, and a live writer's
        stale_json = [checkpoint / f".policy_config.tmp{pid}.json", tmp_path / f".metrics.tmp{pid}.jsonl"]
        live_json = checkpoint / f".policy_config.tmp{live.pid}.json"
        for path in [*stale_json, live_json]:
            path.write_text('{"half')
        kept.append(live_json)

        removed = remove_stale_temporaries(tmp_path) + remove_stale_temporaries(checkpoint)

        assert sorted(removed) == sorted([*stale, *stale_json])
        assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)
        assert ckpt.find_resume_checkpoint(tmp_path / "run", None) == (checkpoint, 2)
    finally:
        live.communicate(b"")


def parsed_flags(world, **overrides) -> AlignFinetuneConfig:
    return draccus.parse(AlignFinetuneConfig, args=world.train_flags(**overrides))


def test_resume_applies_and_reports_flags_that_do_not_change_training(cli_world, tmp_path):
    runs = Path(shutil.copytree(cli_world.runs, tmp_path / "runs"))
    cfg = parsed_flags(cli_world, run_id_override="r1", resume=True, max_steps=10, run_root_dir=runs)

    changes = check_run_folder(cfg, runs / "r1", content_digests(cfg))
    prepare_run_folder(cfg, runs / "r1", changes, content_digests(cfg))

    assert changes == [f"--run_root_dir {str(cli_world.runs)!r} -> {str(runs)!r}", "--max_steps 4 -> 10"]
    saved = json.loads((runs / "r1" / TRAINING_CONFIG_NAME).read_text())
    assert (saved["max_steps"], saved["resume"]) == (10, True)
    assert saved[CONTENT_KEY] == content_digests(cfg) and set(saved[CONTENT_KEY]) == {"data", "teacher"}


def test_resume_accepts_data_and_teacher_moved_elsewhere_with_the_same_content(cli_world, tmp_path):
    runs = Path(shutil.copytree(cli_world.runs, tmp_path / "runs"))
    data = Path(shutil.copytree(cli_world.data, tmp_path / "moved" / "data"))
    (data / DATASET_NAME / "1.0.0" / "dataset_statistics_0123456789abcdef.json").write_text("{}")  # a cache
    vggt = Path(shutil.copy(cli_world.vggt, tmp_path / "moved" / "model.pt"))
    cfg = parsed_flags(
        cli_world, run_id_override="r1", resume=True, run_root_dir=runs, data_root_dir=data, vggt_path=vggt
    )

    changes = check_run_folder(cfg, runs / "r1", content_digests(cfg))

    assert f"--data_root_dir {str(cli_world.data)!r} -> {str(data)!r}" in changes
    assert f"--vggt_path {str(cli_world.vggt)!r} -> {str(vggt)!r}" in changes


def test_resume_refuses_data_whose_statistics_differ_from_the_runs(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    statistics = {DATASET_NAME: compute_statistics([np.linspace(0, 1, 21).reshape(3, 7)], [np.ones((3, 8))])}
    save_dataset_statistics(statistics, run_dir)
    check_same_statistics(run_dir, statistics)

    statistics[DATASET_NAME]["action"]["q99"][0] += 1e-9
    with pytest.raises(UserError, match=r"--resume: the statistics of the data now differ from those run 'run' saved"):
        check_same_statistics(run_dir, statistics)


def test_overwrite_run_replaces_the_earlier_run_only_when_asked(cli_world, tmp_path):
    runs = Path(shutil.copytree(cli_world.runs, tmp_path / "runs"))
    cfg = parsed_flags(cli_world, run_id_override="r1", run_root_dir=runs, overwrite_run=True)

    content = content_digests(cfg)
    prepare_run_folder(cfg, runs / "r1", check_run_folder(cfg, runs / "r1", content), content)

    assert not (runs / "r1--2_chkpt").exists() and not (runs / "r1" / "metrics.jsonl").exists()
    assert json.loads((runs / "r1" / TRAINING_CONFIG_NAME).read_text())["overwrite_run"] is True


def test_base_model_record_survives_a_copy_and_tells_another_base(cli_world, tmp_path):
    copied = Path(shutil.copytree(cli_world.base, tmp_path / "elsewhere" / "renamed-base"))
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    verify_base_model(checkpoint, cli_world.other_base, "--base_checkpoint")  # no record: released layout, no check
    write_base_model_record(checkpoint, base_model_record(cli_world.base))

    verify_base_model(checkpoint, copied, "--base_checkpoint")
    with pytest.raises(UserError, match="--base_checkpoint .*other-openvla is not the base model .*its weights differ"):
        verify_base_model(checkpoint, cli_world.other_base, "--base_checkpoint")
    with safe_open(str(next(cli_world.base.glob("*.safetensors"))), framework="pt") as handle:
        some_tensor = next(iter(handle.keys()))
    record = base_model_record(cli_world.base)["tensor_sha256"]
    assert len(record) == len(json.loads((cli_world.base / WEIGHTS_INDEX_NAME).read_text())["weight_map"])
    assert some_tensor in record


def perturbed_copy(base: Path, target: Path, tensor_suffix: str) -> tuple[Path, str]:
    """A copy of ``base`` whose one tensor ending in ``tensor_suffix`` (the middle one) has one element moved."""
    copied = Path(shutil.copytree(base, target))
    weight_map = json.loads((copied / WEIGHTS_INDEX_NAME).read_text())["weight_map"]
    names = sorted(name for name in weight_map if name.endswith(tensor_suffix))
    name = names[len(names) // 2]
    shard = copied / weight_map[name]
    tensors = load_file(shard)
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, shard, metadata={"format": "pt"})
    return copied, name


def test_a_base_that_differs_in_one_q_proj_is_not_the_recorded_base(cli_world, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    write_base_model_record(checkpoint, base_model_record(cli_world.base))
    perturbed, name = perturbed_copy(cli_world.base, tmp_path / "perturbed-base", "self_attn.q_proj.weight")

    with pytest.raises(UserError, match=rf"its weights differ: 1 tensor\(s\), e.g. {re.escape(name)} from the"):
        verify_base_model(checkpoint, perturbed, "--base_checkpoint")


def test_with_a_verified_base_merged_weights_that_disagree_with_base_plus_adapter_are_kept(cli_world, tmp_path):
    checkpoint = Path(shutil.copytree(cli_world.adapter_checkpoint, tmp_path / "run--2_chkpt"))  # recorded base
    merged = {path.name: path.read_bytes() for path in checkpoint.glob("model*.safetensors*")}
    cfg = ConvertConfig(
        base_checkpoint=str(cli_world.base), lora_finetuned_checkpoint_dir=str(checkpoint), device="cpu"
    )

    with pytest.raises(UserError, match=r"the merged weights already in .* disagree with --base_checkpoint"):
        merge_lora_checkpoint(cfg)

    assert {path.name: path.read_bytes() for path in checkpoint.glob("model*.safetensors*")} == merged


def test_merge_into_another_base_is_refused_and_the_merged_weights_stay(cli_world, tmp_path):
    checkpoint = Path(shutil.copytree(cli_world.adapter_checkpoint, tmp_path / "run--2_chkpt"))
    merged = {path.name: path.read_bytes() for path in checkpoint.glob("model*.safetensors*")}
    assert merged

    [result] = run_cases(
        [
            (
                "vla-scripts/merge_lora_weights_and_save.py",
                [f"--base_checkpoint={cli_world.other_base}", f"--lora_finetuned_checkpoint_dir={checkpoint}"],
            )
        ],
        tmp_path,
        tmp_path,
    )

    assert result["code"] == 2 and result["stderr"].startswith(f"error: --base_checkpoint {cli_world.other_base}")
    assert {path.name: path.read_bytes() for path in checkpoint.glob("model*.safetensors*")} == merged


def test_a_second_evaluation_process_on_the_same_run_is_refused_naming_the_first(cli_world, tmp_path):
    log_dir = tmp_path / "logs"
    holder_code = (
        "import sys; from prismatic.util.locking import hold_run_lock\n"
        "with hold_run_lock(sys.argv[1], 'run'):\n    print('locked', flush=True); sys.stdin.read()"
    )
    env = {**CLI_ENV, "PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(log_dir / "e1.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        process = run_script(
            "experiments/robot/libero/run_libero_eval.py",
            [f"--pretrained_checkpoint={cli_world.eval_checkpoint}", f"--local_log_dir={log_dir}", "--run_id=e1"],
            tmp_path,
        )
        assert process.returncode == 2
        assert process.stderr.strip().startswith(f"error: evaluation run 'e1' is in use by pid {holder.pid} on ")
        assert sorted(path.name for path in log_dir.iterdir()) == ["e1.lock"]
    finally:
        holder.kill()  # a killed holder releases the lock with its process
        holder.wait()
    with hold_run_lock(log_dir / "e1.lock", "run"):
        assert f"pid {holder.pid}" not in (log_dir / "e1.lock").read_text()


def test_a_full_disk_is_a_user_error_naming_the_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "action_head--latest_checkpoint.pt"
    with pytest.raises(UserError, match=f"cannot write {target}: the write failed"), writing(target):
        torch.save({"weight": torch.zeros(100_000)}, "/dev/full")  # torch's zip writer: "unexpected pos"

    def main() -> None:
        with open("/dev/full", "w") as full:  # noqa: PTH123
            full.write("x" * 100_000)

    monkeypatch.setattr(sys, "argv", ["tool"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: cannot write a file: No space left on device: expected free space and write permission there\n"
    )


def test_without_a_record_merged_weights_that_disagree_with_base_plus_adapter_are_kept(cli_world, tmp_path):
    checkpoint = Path(shutil.copytree(cli_world.adapter_checkpoint, tmp_path / "run--2_chkpt"))
    (checkpoint / "base_model.json").unlink()  # as a released checkpoint
    merged = {path.name: path.read_bytes() for path in checkpoint.glob("model*.safetensors*")}
    cfg = ConvertConfig(
        base_checkpoint=str(cli_world.base), lora_finetuned_checkpoint_dir=str(checkpoint), device="cpu"
    )

    with pytest.raises(
        UserError, match=r"the merged weights already in .* disagree with --base_checkpoint .*overwrite"
    ):
        merge_lora_checkpoint(cfg)

    assert {path.name: path.read_bytes() for path in checkpoint.glob("model*.safetensors*")} == merged
