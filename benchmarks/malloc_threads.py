"""Why glibc's ``mallopt`` cannot keep XLA:CPU's step buffer mapped from inside the process.

Each case runs in a fresh interpreter: a thread mallocs and fills a 256 MiB block, frees it,
mallocs and fills one of the same size again, and the minor page faults of the second fill are
counted (one per 4 KiB page when the block was mapped afresh; ~0 when its pages were reused).

* ``main``/``worker``: on the main thread or on a second thread (which gets its own arena,
  as XLA's worker threads do);
* ``mallopt``: after ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, -1)``;
* ``arena1``: the same two calls with ``MALLOC_ARENA_MAX=1`` in the environment (one heap for
  every thread).

A thread's own arena grows by at most 64 MiB; glibc serves a larger block for it with ``mmap``
even when ``M_MMAP_MAX`` is 0, so only one arena for all threads keeps the block (which cost more
time than it saved: docs/performance.md, "The step's temporary buffer").

    python benchmarks/malloc_threads.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = """
import ctypes, json, resource, sys, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
where, mallopt = sys.argv[1], sys.argv[2] == "1"
if mallopt:
    assert libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, -1) == 1  # M_MMAP_MAX, M_TRIM_THRESHOLD
size = 256 * 2**20
out = {}
def work():
    libc.free(libc.malloc(1000))  # the thread's arena
    a = libc.malloc(size); ctypes.memset(a, 1, size); libc.free(a)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = libc.malloc(size); ctypes.memset(b, 2, size)
    out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
    libc.free(b)
if where == "main":
    work()
else:
    t = threading.Thread(target=work); t.start(); t.join()
out["pages"] = size // resource.getpagesize()
print(json.dumps(out))
"""


def main() -> None:
    rows = []
    for where in ("main", "worker"):
        for setting in ("default", "mallopt", "arena1"):
            env = dict(os.environ)
            if setting == "arena1":
                env["MALLOC_ARENA_MAX"] = "1"
            flag = "0" if setting == "default" else "1"
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, where, flag],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            row = {"thread": where, "setting": setting, **json.loads(out.strip())}
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
