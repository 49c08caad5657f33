"""Checkpoint folders in the released layout, written atomically, plus the training state for exact resume.

A checkpoint folder holds (``{suffix}`` = ``{step}_checkpoint.pt`` or ``latest_checkpoint.pt``)::

    lora_adapter/                        peft adapter (adapter_config.json, adapter_model.safetensors)
    {component}--{suffix}                the components of prismatic.policy.components (action head, proprio
                                         projector, noisy-action projector, FiLM vision backbone, align projector)
    policy_config.json                   what the policy is (prismatic.vla.policy_config), read back by load_vla
    dataset_statistics.json, tokenizer and preprocessor files
    config.json, model-*.safetensors     (the merged model, when merge_lora_during_training)
    training_state--{suffix}             ours: optimizer, scheduler, step, RNG states, data position

Where, as upstream: ``{run_dir}--{step}_chkpt/``, or with ``--save_latest_checkpoint_only True`` the run folder
itself (``{run_dir}/``, beside metrics.jsonl). A step folder is assembled under a temporary name and renamed into
place. In the run folder, the new checkpoint is assembled in ``.checkpoint-staging/``, renamed to
``.checkpoint-ready/`` once complete, then its entries are moved over the old ones (training state last); a move
interrupted by ``kill -9`` is finished by ``prismatic.util.checkpoint_install.finish_pending_install`` before
resuming and before any reader reads the folder, so a complete checkpoint is always recoverable.
Folders are only ever renamed into place, and deleted only after an atomic rename to ``*.trash-<pid>``; a "latest"
step folder being replaced is first renamed to ``*.old``, so ``kill -9`` at any point of any sequence of saves leaves
a complete checkpoint (leftovers of dead processes are removed by ``prismatic.util.io.remove_stale_temporaries``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from prismatic.policy.checkpoint_checks import step_checkpoint_folders
from prismatic.policy.components import component_path
from prismatic.util.checkpoint_files import STEP_CHECKPOINT_SUFFIX, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from prismatic.util.checkpoint_install import (
    READY_DIR,
    STAGING_DIR,
    TRAINING_STATE,
    discard,
    finish_pending_install,
)


def checkpoint_dir(run_dir: Path, step: int | None) -> Path:
    """Upstream's places: ``{run_dir}--{step}_chkpt``, or the run folder itself in latest-only mode (``None``)."""
    return run_dir if step is None else run_dir.parent / f"{run_dir.name}--{step}{STEP_CHECKPOINT_SUFFIX}"


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a peft wrapper (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states, as plain types and tensors (``weights_only``-loadable)."""
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": [version, list(python_state), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping) -> None:
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointWriter:
    """Assembles one checkpoint under a temporary name; ``commit()`` moves it into place.

    ``in_place``: ``final_dir`` is the run folder, which also holds the run's logs (latest-only mode).
    """

    def __init__(self, final_dir: Path, in_place: bool = False):
        self.final_dir, self.in_place = final_dir, in_place
        if in_place:
            self.tmp_dir = final_dir / STAGING_DIR
        else:
            self.tmp_dir = final_dir.with_name(f"{final_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)

    def commit(self) -> Path:
        """Moves the checkpoint into place. ``final`` and ``.old`` are only ever renamed, never deleted in place, so
        whichever exists is complete: an ``.old`` is discarded only while a complete ``final`` exists."""
        if self.in_place:
            finish_pending_install(self.final_dir)  # an earlier save's complete ready folder goes in first
            os.rename(self.tmp_dir, self.final_dir / READY_DIR)
            finish_pending_install(self.final_dir)
            return self.final_dir
        old_dir = self.final_dir.with_name(f"{self.final_dir.name}.old")
        if self.final_dir.exists():
            discard(old_dir)
            os.rename(self.final_dir, old_dir)
        os.rename(self.tmp_dir, self.final_dir)
        discard(old_dir)
        return self.final_dir


def saved_training_step(folder: Path, file_step: int | None) -> int:
    """The optimizer step a checkpoint's training state records (its tensors memory-mapped, not read)."""
    state = torch.load(
        component_path(folder, TRAINING_STATE, file_step), map_location="cpu", weights_only=True, mmap=True
    )
    return state["step"]


def read_saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A full fine-tune's VLA weights as ``save_pretrained`` wrote them into ``folder`` (one file, or an index and
    its shards), on the CPU."""
    from safetensors.torch import load_file

    index = folder / WEIGHTS_INDEX_NAME
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [WEIGHTS_NAME]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state


def find_resume_checkpoint(run_dir: Path, resume_step: int | None) -> tuple[Path, int | None]:
    """The checkpoint folder to resume from and its file step (``None`` = latest-only files in the run folder).

    ``resume_step`` selects ``{run_dir}--{step}_chkpt``; otherwise the run folder's latest checkpoint if present,
    else the highest step. Call :func:`finish_pending_install` first.
    """
    if resume_step is not None:
        folder = checkpoint_dir(run_dir, resume_step)
        if not folder.is_dir():
            raise FileNotFoundError(f"--resume_step {resume_step}: no checkpoint folder {folder}.")
        return folder, resume_step
    if component_path(run_dir, TRAINING_STATE, None).is_file():
        return run_dir, None
    folders = step_checkpoint_folders(run_dir)
    steps = [step for step, folder in folders.items() if component_path(folder, TRAINING_STATE, step).is_file()]
    if not steps:
        raise FileNotFoundError(
            f"--resume True: no complete checkpoint of run {run_dir.name!r}: expected "
            f"{component_path(run_dir, TRAINING_STATE, None)} or {run_dir.name}--<step>_chkpt/ in {run_dir.parent}."
        )
    return checkpoint_dir(run_dir, max(steps)), max(steps)
