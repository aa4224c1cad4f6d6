"""A run folder that protects itself: a write check before any computation, a lock, and no
silent overwrite of another run's checkpoint.

* :func:`check_writable`: ``--out`` must be a folder (created if missing) that this process can
  write to; checked before the data is loaded or anything is compiled.
* :class:`RunLock`: ``rcig.lock`` in the folder holds the PID of the run using it, under an
  exclusive ``fcntl.flock``. The kernel releases the lock when that process ends, however it
  ends (SIGKILL included), so the lock of a dead process is simply taken over; a second live run
  is refused with the first one's PID.
* :func:`open_run_folder`: the three, plus the rule that a folder holding another run's
  checkpoint is only continued (``resume``) or explicitly discarded (``overwrite``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from distillation._checkpoint import (
    CHECKPOINT_NAME,
    LEGACY_NAMES,
    has_checkpoint,
    has_legacy_checkpoint,
    read_checkpoint_meta,
    remove_temporary_files,
)

LOCK_NAME = "rcig.lock"
# What `rcig distill` writes besides the checkpoint: removed with it by `overwrite`.
OUTPUT_NAMES = ("distilled.npz", "distilled.png", "curves.png", "metrics.json")


def check_writable(folder: Path, what: str = "--out") -> None:
    """Create ``folder`` if needed and check that a file can be written in it.

    Raises:
        ValueError: ``folder`` is an existing file, cannot be created, or cannot be written to.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"{what} {folder}: is an existing file, not a folder; expected a folder for the "
            "run's outputs."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"{what} {folder}: cannot create the folder ({exc.strerror or exc}); choose a "
            "folder you can write to."
        ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.tmp-", dir=folder)
        try:
            os.write(fd, b"rcig")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise ValueError(
            f"{what} {folder}: cannot write into the folder ({exc.strerror or exc}); choose a "
            "folder you can write to."
        ) from None


class RunLock:
    """An exclusive lock on a run folder; see the module docstring.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with RunLock(folder):
        ...     (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
        True
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            ValueError: another live process holds it (the message names its PID).
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ValueError(
                f"{self.path}: cannot create the run's lock file ({exc.strerror or exc})."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise ValueError(_busy_message(self.path.parent, holder)) from None
            # A file system without flock: fall back on whether the recorded PID is alive.
            if holder is not None and holder != os.getpid() and _alive(holder):
                os.close(fd)
                raise ValueError(_busy_message(self.path.parent, holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (the file stays, holding the last PID; it is taken over next time:
        removing it could let two runs lock two different files)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@contextlib.contextmanager
def open_run_folder(
    folder: Path, *, resume: bool, overwrite: bool, what: str = "--out"
) -> Iterator[Path]:
    """Check, lock and prepare ``folder`` for a run; the lock is held inside the ``with``.

    Args:
        folder: the run folder.
        resume: the run continues the checkpoint in ``folder`` (if there is one).
        overwrite: a checkpoint in ``folder`` (and the outputs beside it) is discarded.
        what: how the folder was named by the user, for messages.

    Raises:
        ValueError: the folder cannot be written, is used by a live run, or holds another run's
            checkpoint while neither ``resume`` nor ``overwrite`` was given.
    """
    folder = Path(folder)
    check_writable(folder, what)
    with RunLock(folder):
        remove_temporary_files(folder)
        if overwrite:
            for name in (CHECKPOINT_NAME, *LEGACY_NAMES, *OUTPUT_NAMES):
                (folder / name).unlink(missing_ok=True)
        elif has_legacy_checkpoint(folder):
            raise ValueError(
                f"{folder}: holds a checkpoint written by an earlier version of rcig "
                f"({' + '.join(LEGACY_NAMES)}), which this version cannot continue; finish it "
                "with that version, pass --overwrite to start over, or choose another --out."
            )
        elif has_checkpoint(folder) and not resume:
            raise ValueError(
                f"{folder}: holds the checkpoint of an earlier run ({_describe(folder)}); pass "
                "--resume to continue it, --overwrite to discard it and start over, or choose "
                "another --out."
            )
        yield folder


def _describe(folder: Path) -> str:
    try:
        meta = read_checkpoint_meta(folder) or {}
    except ValueError:
        return "unreadable"
    settings = meta.get("settings") or {}
    parts = [f"step {meta.get('step')} of {settings.get('steps', '?')}"]
    parts += [f"{k} {settings[k]}" for k in ("method", "dataset", "ipc", "seed") if k in settings]
    return ", ".join(parts)


def _busy_message(folder: Path, pid: int | None) -> str:
    who = f"PID {pid}" if pid is not None else "a process that has not written its PID yet"
    return (
        f"{folder}: in use by another rcig run ({who}); wait for it to finish, stop it, or "
        "choose another --out."
    )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
