"""Stopping a run between updates: polite stops (signals) and disk failures, agreed by every
rank, with a checkpoint where the run stops."""

from __future__ import annotations

import math

from ..stopping import TrainingStopped, signal_name


class _Stop(BaseException):
    """Raised through the trainer's loop to leave it at an update boundary.

    A BaseException, so a trainer's ``except Exception`` cannot swallow it.
    """


class Stopping:
    """Where and how a run stops early, for :class:`TrainingRun`."""

    def request_stop(self, reason: str, code: int = 0) -> None:
        """Stop at the next update boundary, as a polite stop does, with a checkpoint there.

        For a decision the run makes itself (early stopping, a diverged range test), made
        alike on every rank. ``reason`` opens the line the run prints. With ``code`` 0,
        :meth:`train` returns; otherwise it raises ``TrainingStopped(code)``.
        """
        if self._requested is None:
            self._requested = (reason, code)

    def _stopped(self) -> TrainingStopped:
        checkpoint = self.checkpoint_dir / f"step_{self.iteration:09d}"
        saved = self._saved_at == self.iteration and checkpoint.is_dir()
        where = f"checkpoint {checkpoint}" if saved else "no checkpoint written"
        how = self.resume_command or "resume() then train() on a new run object"
        if self._failure is not None:
            reason = (
                f"Stopped after iteration {self.iteration}: {self._failure} ({where}). "
                f"Once it can be written, continue with: {how}"
            )
            code = 1
        elif self._signals.requested is None:
            said, code = self._requested
            reason = f"{said}: stopped after iteration {self.iteration} ({where})."
        else:
            signum = self._signals.requested
            reason = (
                f"Stopped by {signal_name(signum)} after iteration {self.iteration} ({where}). "
                f"Continue with: {how}"
            )
            code = 128 + signum
        return TrainingStopped(code, self.iteration, checkpoint if saved else None, reason)

    def _guarded(self, step, step_ran: bool = True) -> None:
        """Run a hook step; a disk failure stops the run politely instead of with tracebacks.

        ``step_ran``: the trainer has run the step of the iteration last handed over,
        so it can be counted and checkpointed; otherwise the data has moved on to an
        iteration not run yet, and a checkpoint now would skip it.
        """
        try:
            step()
        except OSError as error:
            self._failure = error.strerror or str(error)
            self.callback.abandon_log()  # the log may be what failed; the rest is on disk
            self._signals = None  # no stop vote now: the other ranks are not voting
            try:
                if step_ran:
                    self._finish_iteration()
                done = self._pulled == self.iteration != self._saved_at
                if done and self.iteration % self.args.grad_accumulation_steps == 0:
                    self.save_checkpoint()
            except OSError as again:
                self._failure += f"; the checkpoint failed too: {again.strerror or again}"
            raise _Stop from error

    def before_next_batch(self) -> None:
        """Call when the trainer asks for its next training batch, before drawing it.

        Ends the iteration under way; a polite stop that is due leaves the trainer
        here, before the data (and its random state) moves on.
        """
        self._guarded(self._finish_or_stop)

    def _finish_or_stop(self) -> None:
        self._finish_iteration()
        if self.iteration == self._stop_at:
            raise _Stop
        self._maybe_stop_after(self.iteration + 1)

    def _maybe_stop_after(self, iteration: int) -> None:
        """Before ``iteration``'s batch is drawn: where to stop, if a stop is asked for.

        Asked on every rank at every iteration, so that all ranks stop together. The
        run stops at an update boundary: right away if the trainer has just reported,
        else at the end of ``iteration``'s accumulation group, with the trainer's call
        shortened to end there, so that it reports what it ran.
        """
        if self._signals is None or self._stop_at is not None or iteration > self._stop:
            return
        signum = self._signals.agreed()
        if signum is None and self._requested is None:
            return
        self._signals.requested = signum
        k, done = self.args.grad_accumulation_steps, iteration - 1
        reported = (done - self._start_iteration) % self.args.steps_per_report == 0
        if done % k == 0 and reported:
            self._stop_at = done
            if self._saved_at != done:
                self.save_checkpoint()
            raise _Stop
        self._stop_at = min(math.ceil(iteration / k) * k, self._segment_stop)
        if self._call_args is not None:
            self._call_args.iters = self._stop_at - self._start_iteration
