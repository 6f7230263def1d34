"""A polite stop: SIGINT and SIGTERM end a run at the next update boundary, with a checkpoint.

A first Ctrl-C (or SIGTERM, or any signal named) only asks for a stop: training
finishes the iteration under way and the accumulation group it belongs to,
writes a checkpoint there, puts every logged point on disk, says how to resume
and exits with the conventional code (128 + the signal: 130 for Ctrl-C, 143 for
SIGTERM). A second Ctrl-C aborts at once, as Ctrl-C always does.

``StopSignals`` is the piece every loop shares; a hand-written loop gets it
through ``LRScheduleCallback.catch_signals()`` and asks
``callback.stop_requested`` between steps.
"""

from __future__ import annotations

import signal
import sys
import threading

import mlx.core as mx

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(SystemExit):
    """Training stopped at an update boundary because of ``signal`` (or a failure).

    A ``SystemExit``: uncaught, the process ends with ``code`` (130 for SIGINT,
    143 for SIGTERM) and no traceback, after ``finally`` blocks have run.
    """

    def __init__(self, code: int, iteration: int, checkpoint=None, reason: str = ""):
        super().__init__(code)
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.reason = reason


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """While entered, the named signals ask for a stop instead of ending the process.

    ``requested`` is the first such signal received (``None`` before). A second
    SIGINT raises ``KeyboardInterrupt`` at once. The previous handlers come back on
    exit. Outside the main thread (where Python cannot install handlers) it does
    nothing.
    """

    def __init__(self, signals=DEFAULT_SIGNALS):
        self.signals = tuple(signals)
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested = signum
            again = " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
            print(
                f"\n{signal_name(signum)}: stopping at the next update boundary, with a "
                f"checkpoint{again}.",
                file=sys.stderr,
                flush=True,
            )

    def agreed(self) -> int | None:
        """The stop signal, as every rank of a distributed run sees it.

        Call it on every rank at the same step: in a distributed run a signal
        reaching one rank stops them all at that step (the highest signal number
        wins), so no rank waits for ever in a collective the others left.
        """
        world = mx.distributed.init()
        if world.size() == 1:
            return self.requested
        mine = mx.array([self.requested or 0], dtype=mx.int32)
        seen = mx.distributed.all_gather(mine, group=world, stream=mx.cpu).tolist()
        return max(seen) or None


class CatchesSignals:
    """``catch_signals`` and ``stop_requested`` for a hand-written loop's callback."""

    _signals: StopSignals | None = None

    def catch_signals(self, signals=DEFAULT_SIGNALS) -> StopSignals:
        """A context manager under which SIGINT and SIGTERM ask for a stop instead of killing.

        For a hand-written loop: ask :attr:`stop_requested` after each update, and
        when it is set, checkpoint and exit with ``128 + signal`` (130 for Ctrl-C,
        143 for SIGTERM). A second Ctrl-C aborts at once; the previous handlers
        come back when the block ends::

            with callback, callback.catch_signals():
                for step in range(callback.step, total):
                    ...
                    if signum := callback.stop_requested:
                        save_checkpoint()
                        raise SystemExit(128 + signum)
        """
        self._signals = StopSignals(signals)
        return self._signals

    @property
    def stop_requested(self) -> int | None:
        """The signal that asked for a stop, or ``None``; see :meth:`catch_signals`.

        In a distributed run, read it on every rank at the same step: a signal
        reaching any rank is seen by all of them there.
        """
        return None if self._signals is None else self._signals.agreed()
