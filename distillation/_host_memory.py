"""Keep the host memory of XLA:CPU's per-step buffers instead of mapping it anew every step.

A compiled program on XLA:CPU gets one temporary buffer per execution (the RCIG step's is
~600 MiB at width 32 with the released code's settings: ``compiled.memory_analysis()``), which
XLA frees when the step ends. glibc serves an allocation that large with its own ``mmap`` and
returns it with ``munmap``, so every step touches the whole buffer as new memory: one page
fault per 4 KiB page, each page zeroed by the kernel, ~0.3 s of system time per CIFAR-10 step
on this project's 2-core machine (docs/performance.md, "The step's temporary buffer").

:func:`reuse_host_memory` stops that, for the process it is called in, with two settings that
only work together:

* **glibc** (``mallopt``): ``M_MMAP_MAX = 0`` (no block gets its own ``mmap``) and
  ``M_TRIM_THRESHOLD = -1`` (the heap is never shrunk), so a freed buffer stays in the heap and
  the next step's buffer reuses its pages;
* **JAX**: ``jax_cpu_enable_async_dispatch = False``, so a compiled program runs on the thread
  that calls it. With asynchronous dispatch XLA allocates the buffer on one of its worker
  threads, whose glibc arena cannot hold one block larger than ~64 MiB (its heaps' size) and
  serves such a block with ``mmap`` whatever ``M_MMAP_MAX`` says
  (``benchmarks/malloc_threads.py``); on the calling (main) thread it comes from the main heap,
  which the settings above keep.

The computed values do not change (the same programs run). The costs: the process's resident
memory stays at its peak (the heap is not returned to the system until the process ends), and
Python no longer runs ahead of the computation (it waits for each program instead of queueing
the next; negligible against steps of a second). ``rcig`` calls it first thing; scripts that
use the library can call it before anything runs on JAX.

Where it gains nothing but still keeps the heap: JAX applies the dispatch setting to
single-device programs only, so programs over several CPU devices (``--devices``, a sharded or
multi-host run) still run on XLA's worker threads; on a GPU the step's buffers are device
memory. With another allocator preloaded in place of glibc's (``LD_PRELOAD``), ``mallopt`` may
be a stub that reports success and does nothing.

It does nothing (and returns ``False``) when

* the environment variable ``RCIG_HOST_MEMORY`` is ``system`` (keep the defaults),
* JAX's backends have already started (the dispatch setting is read when the CPU client is
  made, and the ``mallopt`` settings alone do not keep a worker thread's buffer), or
* the C library is not glibc (no ``mallopt``).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

ENV = "RCIG_HOST_MEMORY"
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_MAX = -4


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return libc


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - jax's layout changed: do nothing rather than guess
        return True
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return True if started is None else bool(started())


def reuse_host_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Keep XLA:CPU's per-execution buffers in the heap instead of mapping them anew each step.

    XLA:CPU gives every execution of a compiled program a fresh temporary buffer (~600 MiB for
    the RCIG step at width 32), which glibc maps with ``mmap`` and unmaps afterwards, so each
    step page-faults and zeroes it all again. This sets ``jax_cpu_enable_async_dispatch`` to
    ``False`` (programs run on the calling thread, so the buffer comes from the main heap) and
    glibc's ``M_MMAP_MAX = 0`` and ``M_TRIM_THRESHOLD = -1`` (that heap keeps its memory), so
    the next step reuses the pages: 0.86× the time per CIFAR-10 step and 0.92× per MNIST step
    at width 32 on the 2-core machine of docs/performance.md, the same values. The costs: the
    process's resident memory stays at its peak, and Python waits for each program instead of
    queueing the next. ``rcig`` calls it first thing.

    Call it before anything runs on JAX. Returns whether the settings were applied: nothing is
    done when ``environ["RCIG_HOST_MEMORY"]`` (default ``os.environ``) is ``"system"``, when
    JAX's backends have already started, or without glibc. Raises ``ValueError`` for another
    value than ``"reuse"`` or ``"system"``.

    Example:
        >>> reuse_host_memory({"RCIG_HOST_MEMORY": "system"})
        False
    """
    environ = os.environ if environ is None else environ
    choice = environ.get(ENV, "reuse")
    if choice not in ("reuse", "system"):
        raise ValueError(f"{ENV}={choice!r}: expected 'reuse' (the default) or 'system'")
    if choice == "system" or _backends_started():
        return False
    libc = _glibc()
    if libc is None:
        return False
    # glibc first: the dispatch setting alone costs a little and keeps nothing
    if libc.mallopt(_M_MMAP_MAX, 0) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, -1) != 1:
        return False
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
