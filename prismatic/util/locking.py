"""An exclusive lock on a run, held by one process for its lifetime (``flock``: the kernel drops it when the process
dies, however it dies, so a killed run never leaves a stale lock)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from prismatic.util.cli import UserError


@contextlib.contextmanager
def hold_run_lock(lock_path: str | Path, what: str) -> Iterator[None]:
    """Holds an exclusive lock on ``lock_path`` (created if needed) for the block; raises a UserError naming the
    process that holds it when another one does."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip() or "another process"
            raise UserError(
                f"{what} is in use by {holder} (lock {lock_path}): expected it to finish first, or another --run_id"
            ) from None
        os.ftruncate(descriptor, 0)
        command = " ".join(sys.argv[:1])
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()} ({command})\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
