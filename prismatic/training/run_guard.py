"""A run folder's safety rules: never overwrite an earlier run by accident, resume only what matches, clean leftovers.

- A run whose folder already holds checkpoints or metrics is refused without ``--resume`` (``--overwrite_run True``
  replaces it: its checkpoints and metrics are deleted when the new run starts).
- The training flags are saved as ``training_config.json`` in the run folder; ``--resume`` compares them: a flag
  that changes the training (``--learning_rate``, ``--batch_size``, ...) is refused, one that does not
  (``--max_steps``, ``--save_freq``, logging) is applied and said in one line.
- Temporary folders of dead processes (an interrupted save's ``*.tmp-<pid>``, ``*.trash-<pid>``, a merge's
  ``.merged-staging-<pid>``) are removed when the next run starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from prismatic.models.base_model_record import verify_base_model
from prismatic.training import checkpointing as ckpt
from prismatic.training.config import FinetuneConfig
from prismatic.util.cli import UserError
from prismatic.util.file_checks import check_writable_dir, read_json_file
from prismatic.util.io import write_json_atomic

logger = logging.getLogger(__name__)

TRAINING_CONFIG_NAME = "training_config.json"
METRICS_NAME = "metrics.jsonl"
# Flags that may change between the sessions of one run: where things are, how long, how often, logging.
RESUMABLE_FLAGS = frozenset(
    {
        "vla_path",  # the base may move; its recorded checksum is verified instead
        "vggt_path",
        "data_root_dir",
        "run_root_dir",
        "max_steps",
        "save_freq",
        "save_latest_checkpoint_only",
        "merge_lora_during_training",
        "resume",
        "resume_step",
        "overwrite_run",
        "use_val_set",
        "val_freq",
        "val_time_limit",
        "val_batches",
        "use_wandb",
        "wandb_entity",
        "wandb_project",
        "wandb_log_freq",
        "run_id_note",
        "run_id_override",
        "attn_implementation",
        "preset",  # what it fills is compared flag by flag
    }
)
STALE_TEMPORARY = re.compile(r"(?:\.tmp-|\.trash-|^\.merged-staging-)(\d+)$")


def flags_as_dict(cfg: FinetuneConfig) -> dict[str, Any]:
    """Every flag as a JSON-ready value (paths as strings), in declaration order."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _run_artifacts(run_dir: Path) -> list[Path]:
    """What an earlier run left that a new run would overwrite or append to: checkpoints and metrics."""
    found = [path for path in run_dir.parent.glob(f"{run_dir.name}--*_chkpt*") if not STALE_TEMPORARY.search(path.name)]
    latest_in_place = (
        ckpt.component_path(run_dir, ckpt.TRAINING_STATE, None).exists() or (run_dir / ckpt.READY_DIR).exists()
    )
    if latest_in_place:  # --save_latest_checkpoint_only writes the checkpoint into the run folder itself
        found.append(run_dir)
    elif (run_dir / METRICS_NAME).exists():
        found.append(run_dir / METRICS_NAME)
    return sorted(found)


def check_run_folder(cfg: FinetuneConfig, run_dir: Path) -> list[str]:
    """All checks of the run folder that can run before anything is written; returns the flags changed on resume
    (as ``--name old -> new``) that will be applied."""
    check_writable_dir(cfg.run_root_dir, "--run_root_dir")
    check_writable_dir(run_dir, "--run_root_dir")
    artifacts = _run_artifacts(run_dir) if run_dir.parent.is_dir() else []
    if not cfg.resume:
        if artifacts and not cfg.overwrite_run:
            names = ", ".join(path.name for path in artifacts[:3]) + (" ..." if len(artifacts) > 3 else "")
            raise UserError(
                f"run {run_dir.name!r} already exists in {run_dir.parent} ({names}): expected --resume True to "
                "continue it, another --run_id_note / --run_id_override, or --overwrite_run True to replace it"
            )
        return []
    if cfg.overwrite_run:
        raise UserError("--overwrite_run True with --resume True: expected one of them (resume or replace)")
    try:
        folder, _ = ckpt.find_resume_checkpoint(run_dir, cfg.resume_step)
    except FileNotFoundError as error:
        raise UserError(str(error).rstrip(".")) from None
    verify_base_model(folder, cfg.vla_path, "--vla_path")
    saved_path = run_dir / TRAINING_CONFIG_NAME
    if not saved_path.is_file():
        return []
    saved, current = read_json_file(saved_path), flags_as_dict(cfg)
    changed = {name: (saved[name], value) for name, value in current.items() if name in saved and saved[name] != value}
    refused = [f"--{name} {old!r} -> {new!r}" for name, (old, new) in changed.items() if name not in RESUMABLE_FLAGS]
    if refused:
        raise UserError(
            f"--resume: {', '.join(refused)} differ from the run's {saved_path}: expected the flags the run was "
            "started with (or a new run id)"
        )
    return [f"--{name} {old!r} -> {new!r}" for name, (old, new) in changed.items() if name not in ("resume",)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary folders/files in ``folder`` whose process (the pid in their name) no longer runs."""
    if not folder.is_dir():
        return []
    stale = []
    for path in folder.iterdir():
        match = STALE_TEMPORARY.search(path.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            stale.append(path)
    return sorted(stale)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Removes what :func:`stale_temporaries` finds; returns the removed paths."""
    removed = stale_temporaries(folder)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        logger.info("Removed %s, left by an interrupted process", path)
    return removed


def prepare_run_folder(cfg: FinetuneConfig, run_dir: Path, resume_changes: list[str]) -> None:
    """Main process, after every check passed: removes leftovers (and, with ``--overwrite_run``, the earlier run),
    creates the run folder and saves the flags."""
    remove_stale_temporaries(run_dir.parent)
    if cfg.overwrite_run and not cfg.resume:
        for path in _run_artifacts(run_dir):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            logger.info("--overwrite_run: removed %s of the earlier run", path)
    if resume_changes:
        print(f"--resume: applying the changed flag(s) {', '.join(resume_changes)}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / TRAINING_CONFIG_NAME, flags_as_dict(cfg))
