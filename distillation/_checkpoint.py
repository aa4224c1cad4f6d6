"""A distillation run's checkpoint: its state and its record, committed together in one file.

``checkpoint.npz`` in the run folder holds two members, both bytes (no pickle):

* ``state``: the :class:`~distillation.DistillState`, serialised by
  :func:`equinox.tree_serialise_leaves`;
* ``meta``: a JSON object: ``step``, ``history`` (the logged rows), ``seconds`` (wall-clock time
  of the run so far, summed over resumed segments), ``segments``, ``fingerprint`` and
  ``settings`` (what the run was started with, so that ``--resume`` can name what differs).

A checkpoint is written to a temporary file in the same folder, flushed to disk (``fsync``), and
committed by one ``os.replace``: a process killed at any moment leaves either the previous
checkpoint or the new one, never a new state paired with an old history.

Test hook (for the fault-injection tests, not for users): the environment variable
``RCIG_TEST_CHECKPOINT_HOOK`` makes the writer pause or die between writing the temporary file
and committing it: ``pause=SECONDS`` sleeps there on every write (so that a signal sent from
outside lands inside a write), ``kill=N`` sends ``SIGKILL`` to the process itself there, during
its ``N``-th write (counted from 1 in each process).
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

CHECKPOINT_NAME = "checkpoint.npz"
# The two-file checkpoint of earlier versions: refused, never silently paired or overwritten.
LEGACY_NAMES = ("checkpoint.eqx", "checkpoint.json")
TEMPORARY_PREFIX = ".checkpoint.npz.tmp-"
HOOK_ENV = "RCIG_TEST_CHECKPOINT_HOOK"

_writes_in_this_process = 0


def checkpoint_path(directory: Path) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def has_checkpoint(directory: Path) -> bool:
    return checkpoint_path(directory).is_file()


def has_legacy_checkpoint(directory: Path) -> bool:
    return any((Path(directory) / name).exists() for name in LEGACY_NAMES)


def save_checkpoint(directory: Path, state: Any, meta: Mapping[str, Any]) -> Path:
    """Commit ``state`` and ``meta`` together, atomically (see the module docstring).

    Raises:
        RunFailed: when a floating-point leaf of ``state`` holds NaN or infinity (a
            diverged run is never written over a good checkpoint).
    """
    global _writes_in_this_process
    directory = Path(directory)
    host = gather_to_host(state)
    bad = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(host)
        if isinstance(leaf, np.ndarray)
        and np.issubdtype(leaf.dtype, np.inexact)
        and not np.isfinite(leaf).all()
    ]
    if bad:
        raise RunFailed(
            f"the run diverged: its state holds NaN or infinite values (in {', '.join(bad[:3])}) "
            f"at step {meta.get('step')} and is not checkpointed."
        )
    if jax.process_index() != 0:  # across hosts, process 0 writes; the others only gathered
        return checkpoint_path(directory)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, host)
    meta_bytes = json.dumps(dict(meta)).encode()
    temporary = directory / f"{TEMPORARY_PREFIX}{os.getpid()}"
    with open(temporary, "wb") as f:
        np.savez(
            f,
            state=np.frombuffer(buffer.getbuffer(), np.uint8),
            meta=np.frombuffer(meta_bytes, np.uint8),
        )
        f.flush()
        os.fsync(f.fileno())
    _writes_in_this_process += 1
    _test_hook(_writes_in_this_process)
    os.replace(temporary, checkpoint_path(directory))
    _fsync_directory(directory)
    return checkpoint_path(directory)


def gather_to_host(tree: Any) -> Any:
    """``tree`` as numpy on this host. Across processes (``jax.distributed``), a leaf split over
    other hosts' devices is gathered from all of them (every process must call this together);
    replicated leaves are read locally."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(leaf):
        if isinstance(leaf, jax.Array) and not (
            leaf.is_fully_addressable or leaf.is_fully_replicated
        ):
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return jax.device_get(leaf)

    return jax.tree_util.tree_map(one, tree)


def read_checkpoint_meta(directory: Path) -> dict[str, Any] | None:
    """The record of the checkpoint in ``directory`` (``None`` when there is none)."""
    if not has_checkpoint(directory):
        return None
    return _read(directory)[1]


def load_checkpoint(directory: Path, like: Any) -> tuple[Any, dict[str, Any]]:
    """The state (with the structure of ``like``) and the record of the checkpoint."""
    state_bytes, meta = _read(directory)
    try:
        state = eqx.tree_deserialise_leaves(io.BytesIO(state_bytes), like)
    except Exception as exc:  # a structure that does not fit: say which file, not eqx's internals
        raise ValueError(
            f"{checkpoint_path(directory)}: the saved state does not fit this run "
            f"({type(exc).__name__}); use --overwrite to start over or choose another --out."
        ) from None
    return state, meta


def settings_mismatch(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``"name: checkpoint value vs now"`` for each setting that differs (JSON-normalised)."""
    now = json.loads(json.dumps(dict(now)))
    missing = "(not set)"
    return [
        f"{name}: {saved.get(name, missing)!r} in the checkpoint vs {now.get(name, missing)!r} now"
        for name in sorted(set(saved) | set(now))
        if saved.get(name, missing) != now.get(name, missing)
    ]


def remove_temporary_files(directory: Path) -> None:
    """Remove the temporary files (``.NAME.tmp-PID``: checkpoints, exports) left by killed
    processes. Call while holding the run folder's lock: then no other process is writing."""
    for path in Path(directory).glob(".*.tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)


class RunFailed(RuntimeError):
    """A run stopped because it produced NaN or infinite values, or because a solve reported a
    failure (``bilevel``'s result codes); its last good checkpoint is kept."""


def _read(directory: Path) -> tuple[bytes, dict[str, Any]]:
    path = checkpoint_path(directory)
    try:
        with np.load(path, allow_pickle=False) as data:
            state_bytes = data["state"].tobytes()
            meta = json.loads(data["meta"].tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}); use --overwrite to start "
            "over or choose another --out."
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: unreadable checkpoint (its record is not a JSON object).")
    return state_bytes, meta


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform / file system: the replace still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _test_hook(write_number: int) -> None:
    spec = os.environ.get(HOOK_ENV, "")
    if not spec:
        return
    action, _, value = spec.partition("=")
    if action == "pause":
        time.sleep(float(value))
    elif action == "kill":
        if write_number == int(value):
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise ValueError(f"{HOOK_ENV}={spec!r}: expected pause=SECONDS or kill=N.")
