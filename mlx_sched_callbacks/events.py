"""A small synchronous TensorBoard event writer built on tensorboardX's protos.

tensorboardX's ``SummaryWriter`` writes from a background queue, and its
``flush()`` does not drain that queue, so a checkpoint taken right after a flush
can still lose points. This writer has no queue: ``flush()`` puts every point
on disk (``fsync``) before it returns.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.record_writer import masked_crc32c


def _event_file_name() -> str:
    # TensorBoard reads a directory's files in name order; the nanosecond field
    # keeps two files opened in the same second in the order they were opened.
    now = time.time_ns()
    return f"events.out.tfevents.{now // 10**9}.{socket.gethostname()}.{now:019d}.{os.getpid()}"


class EventWriter:
    """Writes scalar events to a new file in ``log_dir``; never touches an existing file.

    ``start_step`` writes a restart marker first: TensorBoard hides the events of
    earlier files of the same run at steps ``>= start_step``, so a resumed run
    continues one clean curve instead of drawing over the points it repeats.
    """

    def __init__(self, log_dir: str | os.PathLike, start_step: int | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.log_dir / _event_file_name()
        self._file = open(self.path, "xb")  # "x": an earlier run's file is never overwritten
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if start_step is not None:
            marker = SessionLog(status=SessionLog.START)
            self._write(Event(wall_time=time.time(), step=start_step, session_log=marker))

    def _write(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(
            header
            + struct.pack("<I", masked_crc32c(header))
            + data
            + struct.pack("<I", masked_crc32c(data))
        )

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        self._write(Event(wall_time=time.time(), step=step, summary=summary))

    def push(self) -> None:
        """Hand buffered events to the operating system: they survive a killed process."""
        self._file.flush()

    def flush(self) -> None:
        """Put every event written so far on disk (fsync): it survives a power cut too."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed
