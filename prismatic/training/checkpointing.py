"""Checkpoint folders in the released layout, written atomically, plus the training state for exact resume.

A checkpoint folder holds (``{suffix}`` = ``{step}_checkpoint.pt`` or ``latest_checkpoint.pt``)::

    lora_adapter/                        peft adapter (adapter_config.json, adapter_model.safetensors)
    action_head--{suffix}                trainable components, keys prefixed "module." as released
    proprio_projector--{suffix}          (when use_proprio)
    align_projector--{suffix}            (Spatial Forcing)
    noisy_action_projector--{suffix}     (diffusion)
    dataset_statistics.json, tokenizer and preprocessor files
    config.json, model-*.safetensors     (the merged model, when merge_lora_during_training)
    training_state--{suffix}             ours: optimizer, scheduler, step, RNG states, data position

Folders are assembled under a temporary name and renamed into place; a "latest" folder being replaced is first
renamed to ``*.old``, so at every instant one complete checkpoint exists, even after ``kill -9`` at any point of
any sequence of saves (folders are deleted only after an atomic rename to ``*.trash-<pid>``; leftovers of dead
processes are removed by ``run_guard.remove_stale_temporaries``).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

TRAINING_STATE = "training_state"
LATEST = "latest"


def checkpoint_suffix(step: int | None) -> str:
    """``"{step}_checkpoint.pt"``, or ``"latest_checkpoint.pt"`` for ``step=None``."""
    return f"{LATEST if step is None else step}_checkpoint.pt"


def checkpoint_dir(run_dir: Path, step: int | None) -> Path:
    """Upstream's folder names: ``{run_dir}--{step}_chkpt``, or ``{run_dir}--latest_chkpt`` in latest-only mode."""
    return run_dir.parent / f"{run_dir.name}--{LATEST if step is None else step}_chkpt"


def component_path(folder: Path, component: str, step: int | None) -> Path:
    return folder / f"{component}--{checkpoint_suffix(step)}"


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
    """Assembles one checkpoint folder under a temporary name; ``commit()`` moves it into place."""

    def __init__(self, final_dir: Path):
        self.final_dir = final_dir
        self.tmp_dir = final_dir.with_name(f"{final_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)

    def commit(self) -> Path:
        """Moves the folder into place. ``final`` and ``.old`` are only ever renamed, never deleted in place, so
        whichever exists is complete: an ``.old`` is discarded only while a complete ``final`` exists."""
        old_dir = self.final_dir.with_name(f"{self.final_dir.name}.old")
        if self.final_dir.exists():
            discard(old_dir)
            os.rename(self.final_dir, old_dir)
        os.rename(self.tmp_dir, self.final_dir)
        discard(old_dir)
        return self.final_dir


def discard(folder: Path) -> None:
    """Deletes ``folder`` after renaming it to ``*.trash-<pid>`` (atomic), so a kill never leaves it half deleted."""
    if not folder.exists():
        return
    trash = folder.with_name(f"{folder.name}.trash-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)  # an earlier interrupted deletion under the same name
    os.rename(folder, trash)
    shutil.rmtree(trash)


def find_resume_checkpoint(run_dir: Path, resume_step: int | None) -> tuple[Path, int | None]:
    """The checkpoint folder to resume from and its file step (``None`` = latest-only files).

    ``resume_step`` selects ``{run_dir}--{step}_chkpt``; otherwise the latest-only folder if present, else the
    highest step. A latest folder whose replacement was interrupted is recovered from its ``.old`` copy.
    """
    if resume_step is not None:
        folder = checkpoint_dir(run_dir, resume_step)
        if not folder.is_dir():
            raise FileNotFoundError(f"--resume_step {resume_step}: no checkpoint folder {folder}.")
        return folder, resume_step
    latest = checkpoint_dir(run_dir, None)
    for candidate in (latest, latest.with_name(f"{latest.name}.old")):
        if (candidate / f"{TRAINING_STATE}--{checkpoint_suffix(None)}").is_file():
            return candidate, None
    steps = []
    for folder in run_dir.parent.glob(f"{run_dir.name}--*_chkpt"):
        step = folder.name.removeprefix(f"{run_dir.name}--").removesuffix("_chkpt")
        if step.isdigit() and (folder / f"{TRAINING_STATE}--{checkpoint_suffix(int(step))}").is_file():
            steps.append(int(step))
    if not steps:
        raise FileNotFoundError(
            f"--resume True: no complete checkpoint of run {run_dir.name!r} in {run_dir.parent} "
            f"(expected {latest.name}/ or {run_dir.name}--<step>_chkpt/ holding a {TRAINING_STATE} file)."
        )
    return checkpoint_dir(run_dir, max(steps)), max(steps)
