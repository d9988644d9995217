"""SIGTERM and SIGINT (a preempted VM, Colab stopping a cell, Ctrl-C) during a training run.

    with StopSignals() as stop:
        ...                      # setup, first compile: a signal raises Interrupted at once
        stop.defer = True        # in the step loop: a signal only sets stop.requested; the loop
        ...                      # finishes its step, saves a checkpoint and raises Interrupted
        stop.defer = False
A second signal while a stop is pending exits the process at once (exit code 128 + signal number,
one line on stderr): the user asked twice. Handlers are installed only in the main thread (Python
allows no other) and the previous ones are restored on leaving.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A run stopped by a signal. `exit_code` is 128 + the signal number (130 for SIGINT, 143 for
    SIGTERM: what a shell or a scheduler reports for a process the signal ended); `saved_step` is
    the checkpoint written on the way out (None: none was needed, or the run had not yet begun).
    A BaseException, like KeyboardInterrupt: raised from a signal handler anywhere, it must not be
    taken for a failure by an `except Exception` on its way out (a checkpoint read would be set
    aside as unreadable)."""

    def __init__(self, signum: int, saved_step: int | None = None, message: str = ""):
        self.signum, self.saved_step = signum, saved_step
        self.exit_code = 128 + signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name} before the first step; "
                                    "nothing new to save")


class StopSignals:
    """Context manager turning SIGTERM/SIGINT into a clean stop (see the module docstring)."""

    def __init__(self):
        self.defer = False
        self.requested: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested is not None:  # the second signal: leave now, whatever is in flight
            print(f"\n{signal.Signals(signum).name} again: exiting at once, without a checkpoint", file=sys.stderr,
                  flush=True)
            os._exit(128 + signum)
        self.requested = signum
        if not self.defer:
            raise Interrupted(signum)
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


__all__ = ["StopSignals", "Interrupted", "SIGNALS"]
