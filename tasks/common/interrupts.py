"""Ctrl-C (SIGINT) and SIGTERM, the signals that ask a program to stop.

SIGTERM is what ``kill``, ``timeout``, job schedulers and container stops send; the CLIs treat it
as Ctrl-C (``run_cli`` in ``tasks.common.errors``): a ``KeyboardInterrupt`` that becomes one line on
stderr. Work that must not stop half-way (a training step) runs under ``DeferredStop``: the first
signal is only recorded and the work finishes; a second one interrupts at once.
"""
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupt(signum, frame):
    """A signal handler that raises ``KeyboardInterrupt`` naming the signal, as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


class Handlers:
    """Inside the block, ``handler`` handles SIGINT and SIGTERM; the previous handlers come back after."""

    def __init__(self, handler):
        self.handler = handler

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class DeferredStop(Handlers):
    """Inside the block, the first SIGINT or SIGTERM is recorded in ``requested`` (its name) for the
    work to stop at its next safe point; a second one raises ``KeyboardInterrupt`` at once."""

    def __init__(self):
        super().__init__(self._record)
        self.requested = None

    def _record(self, signum, frame):
        if self.requested:
            interrupt(signum, frame)
        self.requested = signal.Signals(signum).name
