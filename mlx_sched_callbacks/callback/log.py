"""The callback's TensorBoard log: one writer, opened on first use, every point on disk at a
checkpoint."""

from __future__ import annotations

from ..events import EventWriter


class EventLog:
    """The TensorBoard half of :class:`LRScheduleCallback`: ``log_dir``, ``flush_secs``,
    ``step`` and ``_next_file_start`` are the callback's."""

    @property
    def writer(self) -> EventWriter | None:
        """The open event writer, opened on first use; ``None`` without a ``log_dir``."""
        if self.log_dir is None:
            return None
        if self._writer is None or self._writer.closed:
            # The writer's own thread pushes every flush_secs; with 0, log_scalar does.
            self._writer = EventWriter(
                self.log_dir, start_step=self._next_file_start, push_every=self.flush_secs or None
            )
        return self._writer

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        """Log another value into the same run, on the same x-axis."""
        writer = self._writer
        if writer is None or writer.closed:
            writer = self.writer
        if writer is not None:
            try:
                writer.add_scalar(tag, float(value), step)
                if not self.flush_secs:
                    writer.push()
            except OSError as error:
                raise _naming(error, writer) from error

    def flush(self) -> None:
        """Put every logged point on disk."""
        if self._writer is not None and not self._writer.closed:
            try:
                self._writer.flush()
            except OSError as error:
                raise _naming(error, self._writer) from error

    def close(self) -> None:
        """Put every logged point on disk and close the event file."""
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as error:
                raise _naming(error, self._writer) from error
        self._next_file_start = self.step + self.skipped_updates + 1

    def abandon_log(self) -> None:
        """Stop logging after a write failed: close the event file, whatever it says."""
        self.log_dir = None
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _naming(error: OSError, writer: EventWriter) -> OSError:
    """``error`` with the event file it happened to, for a message that names it."""
    return OSError(
        error.errno, f"cannot write TensorBoard events {writer.path}: {error.strerror or error}"
    )
