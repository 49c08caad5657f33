"""Atomic file writes: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prismatic.util.cli import writing

logger = logging.getLogger(__name__)
# Temporaries named by their process: checkpoint saves and merges (``*.tmp-<pid>``, ``*.trash-<pid>``,
# ``.merged-staging-<pid>``) and atomic_output's files (``.<stem>.tmp<pid><suffix>``).
STALE_TEMPORARY = re.compile(r"(?:\.tmp-|\.trash-|^\.merged-staging-)(\d+)$")
ATOMIC_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(?:\.[^.]+)?$")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same suffix); moves it onto ``path`` once the block succeeds.

    A full disk or a refused write is raised as a UserError naming ``path``.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield temporary
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Writes ``payload`` as indented JSON, atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2) + "\n")


def file_sha256(path: str | Path, chunk_bytes: int = 16 * 2**20) -> str:
    """SHA-256 of a file's bytes, read in chunks (a 5 GB VGGT checkpoint takes seconds)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


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
        match = STALE_TEMPORARY.search(path.name) or ATOMIC_TEMPORARY.match(path.name)
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
