"""One SIGTERM / Ctrl-C handling for a whole ``rcig`` command.

A signal ends the command promptly with one line on stderr and exit status 130, at any moment
(loading, compiling, stepping, writing, evaluating), with a checkpoint when there is work to save.

Why not a Python handler that raises ``KeyboardInterrupt`` (as this command once did): Python runs
a signal handler in the main thread between two bytecodes, and while XLA compiles it runs them
from inside the compiler's calls back into Python. An exception raised there unwinds through
XLA's C++ frames, and the interpreter's shutdown then tears down a half-finished compilation: the
segmentation fault (exit status 139) seen after a SIGTERM in the first seconds of a run. And a
handler only runs when the main thread returns to Python, so a compilation that does not call
back delays it by as long as the compilation takes.

How instead: the Python-level handlers only keep Python from raising. Python's C-level handler
also writes the signal's number to a socket (:func:`signal.set_wakeup_fd`), which a watcher
thread reads at once, even while the main thread is inside XLA (which releases the GIL while it
compiles and runs). The watcher decides:

* while the run holds work not yet in a checkpoint (:meth:`InterruptGuard.set_unsaved`), it only
  records the signal: the loop finishes the step in flight, writes a checkpoint and stops (the
  caller prints one line and exits with 130);
* otherwise nothing would be lost: it writes one line and ends the process at once with
  ``os._exit(130)``, without Python's shutdown (all files are written atomically, so a write cut
  short leaves the previous file);
* a second signal while a checkpoint is awaited ends the process at once too (the previous
  checkpoint is kept).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from types import FrameType, TracebackType

EXIT_STATUS = 130
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing (the watcher thread acts; see the module docstring)."""


class InterruptGuard:
    """Installs the handling described in the module docstring for the duration of a ``with``.

    Outside the main thread (where signal handlers cannot be installed) it does nothing and
    :attr:`requested` stays ``None``.

    Args:
        prog: the name that starts the line written on an interrupt.
    """

    def __init__(self, prog: str = "rcig"):
        self.prog = prog
        self.phase = "starting"
        self.note = "nothing was saved"
        self._signal: int | None = None
        self._unsaved = False
        self._done = False
        self._lock = threading.Lock()
        self._installed = False
        self._previous_handlers: dict[int, object] = {}
        self._previous_wakeup = -1
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._watcher: threading.Thread | None = None

    @property
    def requested(self) -> int | None:
        """The number of the signal received while work was unsaved, or ``None``."""
        return self._signal

    def set_phase(self, phase: str, note: str | None = None) -> None:
        """What the command is doing (``"compiling"``), and what an interrupt now leaves
        (``"the checkpoint at step 12 is kept; ..."``), for the line written on an interrupt."""
        self.phase = phase
        if note is not None:
            self.note = note

    def set_done(self) -> None:
        """The command has said how it ends (for instance the line of an interrupted run): a
        further signal ends the process at once, without another line."""
        with self._lock:
            self._done = True

    def set_unsaved(self, unsaved: bool) -> None:
        """Whether the run holds work not yet in a checkpoint (then a signal is deferred)."""
        with self._lock:
            self._unsaved = unsaved

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        receive, send = socket.socketpair()
        send.setblocking(False)
        receive.setblocking(True)
        self._sockets = (receive, send)
        for signum in _SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, _ignore)
        self._previous_wakeup = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        self._watcher = threading.Thread(
            target=self._watch, args=(receive,), name="rcig-interrupts", daemon=True
        )
        self._watcher.start()
        self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._installed:
            return
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        assert self._sockets is not None
        receive, send = self._sockets
        send.close()  # the watcher's recv returns b"" and it ends
        try:
            receive.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        receive.close()
        self._installed = False

    def _watch(self, receive: socket.socket) -> None:
        while True:
            try:
                data = receive.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in _SIGNALS:
                    self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        with self._lock:
            if self._done:
                os._exit(EXIT_STATUS)
            first = self._signal is None
            if first:
                self._signal = signum
            if self._unsaved and first:
                return  # the loop saves after the step in flight, then stops
            name = signal.Signals(signum).name
            if first:
                line = f"{self.prog}: interrupted by {name} while {self.phase}; {self.note}"
            else:
                line = (
                    f"{self.prog}: interrupted again by {name}: stopping without waiting for the "
                    f"checkpoint; {self.note}"
                )
            exit_now(line)


def exit_now(line: str) -> None:
    """Write ``line`` to stderr and end the process with status 130 at once (no Python shutdown:
    see the module docstring). Writes with ``os.write``, so no lock held by another thread can
    block it."""
    try:
        os.write(2, (line.rstrip("\n") + "\n").encode(errors="replace"))
    finally:
        os._exit(EXIT_STATUS)
