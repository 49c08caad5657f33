"""The install of a latest-only checkpoint into its run folder, and its completion after a kill.

With ``--save_latest_checkpoint_only`` the checkpoint lives in the run folder itself. A save assembles it in
``.checkpoint-staging/``, renames that to ``.checkpoint-ready/`` once complete, then moves its entries over the old
ones (training state last). A kill during those moves leaves the run folder a mix of two saves, with the complete new
one's remaining entries in ``.checkpoint-ready/``: :func:`finish_pending_install` moves them in. Training calls it
before it resumes, and every reader of a checkpoint folder (evaluation, serving, merging, probing, ``load_vla``)
calls :func:`settle_pending_install`, the same completion or a refusal, so no reader ever sees the mix.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from prismatic.util.cli import UserError

logger = logging.getLogger(__name__)

TRAINING_STATE = "training_state"
STAGING_DIR = ".checkpoint-staging"
READY_DIR = ".checkpoint-ready"


def discard(folder: Path) -> None:
    """Deletes ``folder`` after renaming it to ``*.trash-<pid>`` (atomic), so a kill never leaves it half deleted."""
    if not folder.exists():
        return
    trash = folder.with_name(f"{folder.name}.trash-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)  # an earlier interrupted deletion under the same name
    os.rename(folder, trash)
    shutil.rmtree(trash)


def finish_pending_install(run_dir: Path) -> bool:
    """Moves the entries of a complete ``.checkpoint-ready/`` into ``run_dir`` (training state last); returns whether
    there was one. Idempotent, and serialised by a lock on ``run_dir`` so that a reader and the trainer (or two
    readers) never move the same entries at once."""
    run_dir = Path(run_dir)
    ready = run_dir / READY_DIR
    if not ready.is_dir():
        return False
    descriptor = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # released with the descriptor (or the process)
        if not ready.is_dir():  # finished by the process that held the lock
            return False
        for entry in sorted(ready.iterdir(), key=lambda path: path.name.startswith(TRAINING_STATE)):
            target = run_dir / entry.name
            if entry.is_dir():
                discard(target)
                os.rename(entry, target)
            else:
                os.replace(entry, target)
        ready.rmdir()
        return True
    finally:
        os.close(descriptor)


def settle_pending_install(checkpoint_dir: str | Path, flag: str) -> None:
    """For every reader of a checkpoint folder: completes an install a kill interrupted (as training does before it
    resumes), or raises a UserError naming ``flag`` when it cannot be completed here (no write permission)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / READY_DIR).is_dir():
        return
    try:
        finished = finish_pending_install(checkpoint_dir)
    except OSError as error:
        raise UserError(
            f"{flag} {checkpoint_dir}: a kill interrupted the install of its latest checkpoint (the complete one is "
            f"in {READY_DIR}/, the folder mixes two saves) and it cannot be finished here ({error.strerror or error}): "
            "expected write permission there, so that the install is finished first"
        ) from None
    if finished:
        logger.warning("%s: finished the install of its latest checkpoint (a kill had interrupted it)", checkpoint_dir)
