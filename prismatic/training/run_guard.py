"""A run folder's safety rules: never overwrite an earlier run by accident, resume only what matches, clean leftovers.

- A run whose folder already holds checkpoints or metrics is refused without ``--resume`` (``--overwrite_run True``
  replaces it: its checkpoints and metrics are deleted when the new run starts).
- The training flags are saved as ``training_config.json`` in the run folder; ``--resume`` compares them: a flag
  that changes the training (``--learning_rate``, ``--batch_size``, the alignment settings, ...) is refused, one that
  does not (``--max_steps``, ``--save_freq``, paths, logging) is applied and said in one line. A path may move, but
  what it holds may not change: the record also holds a SHA-256 of the data (every file of the dataset folders) and
  of the teacher's weights, compared on ``--resume`` (the base model by its own record, the statistics by their
  values). A run without ``training_config.json`` is compared with what its checkpoint's ``policy_config.json``
  records (heads, inputs, alignment settings, dataset).
- Temporary folders of dead processes (an interrupted save's ``*.tmp-<pid>``, ``*.trash-<pid>``, a merge's
  ``.merged-staging-<pid>``) and a latest-only save's partial ``.checkpoint-staging/`` (a full disk) are removed
  when the next run starts; a latest-only install a kill interrupted is finished before ``--resume`` looks for the
  checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prismatic.policy.base_model_record import verify_base_model
from prismatic.training import checkpointing as ckpt
from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.util.checkpoint_files import DATASET_STATISTICS_NAME, POLICY_CONFIG_NAME, TRAINING_CONFIG_NAME
from prismatic.util.checkpoint_install import settle_pending_install
from prismatic.util.cli import UserError
from prismatic.util.file_checks import check_writable_dir, read_json_file
from prismatic.util.io import STALE_TEMPORARY, file_sha256, remove_stale_temporaries, write_json_atomic
from prismatic.vla.datasets.lerobot import is_lerobot_dataset
from prismatic.vla.datasets.registry import resolve_data_mix
from prismatic.vla.datasets.statistics import statistics_to_json
from prismatic.vla.policy_config import NO_AUGMENTATION, PolicyConfig, read_policy_config, training_flags

logger = logging.getLogger(__name__)

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
        "lerobot_frame_cache_mb",  # which frames are decoded again, not what they hold
        "preset",  # what it fills is compared flag by flag
    }
)
CONTENT_KEY = "content_sha256"  # training_config.json's record of what the flags' paths held
STATISTICS_CACHE = "dataset_statistics_*.json"  # the readers' caches beside the data, not data


def flags_as_dict(cfg: FinetuneConfig) -> dict[str, Any]:
    """Every flag as a JSON-ready value (paths as strings), in declaration order."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def _dataset_folders(cfg: FinetuneConfig) -> list[Path]:
    if is_lerobot_dataset(cfg.data_root_dir, cfg.dataset_name):
        return [Path(cfg.data_root_dir) / cfg.dataset_name]
    return [Path(cfg.data_root_dir) / spec.name for spec, _ in resolve_data_mix(cfg.dataset_name)]


def content_digests(cfg: FinetuneConfig) -> dict[str, str]:
    """SHA-256 of what the run learns from besides its flags: ``data`` (of the relative path and SHA-256 of every file
    of the dataset folders, statistics caches aside) and, with alignment, ``teacher`` (the VGGT weights file)."""
    data = hashlib.sha256()
    for folder in _dataset_folders(cfg):
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.match(STATISTICS_CACHE)):
            data.update(f"{folder.name}/{path.relative_to(folder)}:{file_sha256(path)}\n".encode())
    digests = {"data": data.hexdigest()}
    if isinstance(cfg, AlignFinetuneConfig) and cfg.teacher == "vggt":  # the other teachers are their flags
        digests["teacher"] = file_sha256(cfg.vggt_path)
    return digests


def _check_same_content(saved: dict[str, Any], current: dict[str, str], cfg: FinetuneConfig, saved_path: Path) -> None:
    recorded = saved.get(CONTENT_KEY) or {}
    where = {"data": f"--data_root_dir {cfg.data_root_dir} --dataset_name {cfg.dataset_name}"}
    where["teacher"] = f"--vggt_path {getattr(cfg, 'vggt_path', '')}"
    for name, digest in current.items():
        if name in recorded and recorded[name] != digest:
            raise UserError(
                f"--resume: the {name} of {where[name]} is not what run {saved_path.parent.name!r} was trained on "
                f"(content sha256 {digest[:16]}, recorded {recorded[name][:16]} in {saved_path}): expected the same "
                f"{name} (a path may change, its content may not), or a new run id"
            )


def _flags_recorded_in_policy(policy: PolicyConfig) -> dict[str, Any]:
    """The training flags a checkpoint's ``policy_config.json`` records: the policy's choices (the table of
    ``prismatic.vla.policy_config``), the alignment settings, the image augmentation and the dataset."""
    flags = training_flags(policy)
    if policy.spatial_forcing is not None:  # None in its record: not recorded
        flags |= {name: value for name, value in asdict(policy.spatial_forcing).items() if value is not None}
    if policy.training_augmentation is not None:
        flags["image_aug"] = policy.training_augmentation != NO_AUGMENTATION
    if (policy.data or {}).get("dataset_name"):
        flags["dataset_name"] = policy.data["dataset_name"]
    return flags


def _check_flags_against_policy(cfg: FinetuneConfig, folder: Path, run_dir: Path) -> None:
    """A run without ``training_config.json``: the flags its checkpoint's ``policy_config.json`` records must not
    change (without either file nothing tells, and the resume is refused)."""
    policy_path = folder / POLICY_CONFIG_NAME
    if not policy_path.is_file():
        raise UserError(
            f"--resume: run {run_dir.name!r} has neither {run_dir / TRAINING_CONFIG_NAME} nor {policy_path}, so "
            "nothing tells whether the flags changed: expected the run's record of its flags (or a new run id)"
        )
    try:
        policy = read_policy_config(folder)
    except ValueError as error:
        raise UserError(f"--resume: {error}") from None
    current = flags_as_dict(cfg)
    recorded = _flags_recorded_in_policy(policy)
    refused = [
        f"--{name} {old!r} -> {current[name]!r}"
        for name, old in recorded.items()
        if name in current and current[name] != old
    ]
    if refused:
        raise UserError(
            f"--resume: {', '.join(refused)} differ from what {policy_path} records (the run has no "
            f"{TRAINING_CONFIG_NAME}): expected the flags the run was started with (or a new run id)"
        )


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


def check_steps_left(max_steps: int, checkpoint_step: int) -> None:
    """A resumed run must have a step left to train (else it would exit 0 having done nothing)."""
    if max_steps <= checkpoint_step:
        raise UserError(
            f"--max_steps {max_steps}: the run resumes from its checkpoint of step {checkpoint_step}, so no step is "
            f"left to train: expected --max_steps above {checkpoint_step}"
        )


def check_run_folder(cfg: FinetuneConfig, run_dir: Path, content: dict[str, str]) -> list[str]:
    """All checks of the run folder that can run before anything is written (``content``: :func:`content_digests`);
    returns the flags changed on resume (as ``--name old -> new``) that will be applied."""
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
    settle_pending_install(run_dir, "--resume True: run folder")  # a kill during a latest-only save's install
    try:
        folder, step = ckpt.find_resume_checkpoint(run_dir, cfg.resume_step)
    except FileNotFoundError as error:
        raise UserError(str(error).rstrip(".")) from None
    check_steps_left(cfg.max_steps, step if step is not None else ckpt.saved_training_step(folder, None))
    verify_base_model(folder, cfg.vla_path, "--vla_path")
    saved_path = run_dir / TRAINING_CONFIG_NAME
    if not saved_path.is_file():
        _check_flags_against_policy(cfg, folder, run_dir)
        return []
    saved, current = read_json_file(saved_path), flags_as_dict(cfg)
    _check_same_content(saved, content, cfg, saved_path)
    changed = {name: (saved[name], value) for name, value in current.items() if name in saved and saved[name] != value}
    refused = [f"--{name} {old!r} -> {new!r}" for name, (old, new) in changed.items() if name not in RESUMABLE_FLAGS]
    if refused:
        raise UserError(
            f"--resume: {', '.join(refused)} differ from the run's {saved_path}: expected the flags the run was "
            "started with (or a new run id)"
        )
    return [f"--{name} {old!r} -> {new!r}" for name, (old, new) in changed.items() if name not in ("resume",)]


def check_same_statistics(run_dir: Path, statistics: dict[str, Any]) -> None:
    """On ``--resume``: the statistics of the data now equal those the run saved at its start (the normalisation
    learned with); checked before anything is written."""
    path = run_dir / DATASET_STATISTICS_NAME
    if path.is_file() and read_json_file(path, "--resume") != statistics_to_json(statistics):
        raise UserError(
            f"--resume: the statistics of the data now differ from those run {run_dir.name!r} saved in {path}: "
            "expected the data the run was trained on (or a new run id)"
        )


def prepare_run_folder(cfg: FinetuneConfig, run_dir: Path, resume_changes: list[str], content: dict[str, str]) -> None:
    """Main process, after every check passed: removes leftovers of killed processes (in the run root, the run
    folder and its checkpoints; with ``--overwrite_run``, the earlier run), creates the run folder and saves the
    flags with the ``content`` digests."""
    for folder in [run_dir.parent, run_dir, *sorted(run_dir.parent.glob(f"{run_dir.name}--*_chkpt"))]:
        remove_stale_temporaries(folder)
    staging = run_dir / ckpt.STAGING_DIR  # a latest-only save that failed (a full disk) or was killed while assembled
    if staging.exists():
        ckpt.discard(staging)
        logger.info("Removed %s, left by an interrupted save", staging)
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
    write_json_atomic(run_dir / TRAINING_CONFIG_NAME, {**flags_as_dict(cfg), CONTENT_KEY: content})
