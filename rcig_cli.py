"""The ``rcig`` command's launcher: signal handling from the first line, then the command.

``rcig`` (and ``python -m rcig_cli``) start here rather than in :mod:`distillation.cli`, because
importing any module of ``distillation`` first imports the package, and with it JAX (about 2 s).
A Ctrl-C in that window used to raise ``KeyboardInterrupt`` inside JAX's import, sometimes from
inside a callback of its C++ extension, which then aborted the interpreter (exit status -6,
``terminate called after throwing an instance of 'nanobind::python_error'``).

So this module imports nothing heavy. It first installs a SIGTERM / SIGINT handler that writes one
line and ends the process with status 130 at once (nothing has been computed yet, so nothing can
be lost, and :func:`os._exit` raises nothing through C++ frames); then it imports the command,
whose :class:`distillation.InterruptGuard` takes over for the rest of the run. What is
left is Python's own start-up before this module runs (tens of milliseconds), where a signal gets
Python's default action.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_STATUS = 130  # equal to distillation._interrupts.EXIT_STATUS (checked by the tests)
_line = "while starting; nothing was saved"


def _stop(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    try:
        os.write(2, f"rcig: interrupted by {name} {_line}\n".encode())
    finally:
        os._exit(EXIT_STATUS)


def main(argv: list[str] | None = None) -> int:
    """Run the ``rcig`` command (``argv`` as in :func:`distillation.cli.main`)."""
    global _line
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    from distillation.cli._commands import main as command

    try:
        return command(argv)
    finally:
        # The command's guard has put this module's handlers back; what is left is writing the
        # last lines of output and Python's shutdown, with everything already saved.
        _line = "while finishing; nothing more to save"


if __name__ == "__main__":
    sys.exit(main())
