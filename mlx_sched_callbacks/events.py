"""A small synchronous TensorBoard event writer built on tensorboardX's protos.

tensorboardX's ``SummaryWriter`` writes from a background queue, and its
``flush()`` does not drain that queue, so a checkpoint taken right after a flush
can still lose points. This writer has no queue: ``flush()`` puts every point
on disk (``fsync``) before it returns. With ``push_every`` a timer thread hands
the buffer to the operating system (no ``fsync``) every so many seconds, so
points reach the file while the training loop logs nothing.

A scalar event is written once per logged step, so ``add_scalar`` writes its
protocol-buffer bytes by hand (a proto object costs several microseconds) and
checksums them with a C crc32c (tensorboardX's fallback is pure Python). The
tests compare these bytes with tensorboardX's own serialisation.
"""

from __future__ import annotations

import math
import operator
import os
import socket
import struct
import threading
import time
import weakref
from pathlib import Path

import google_crc32c
from tensorboardX.proto.event_pb2 import Event, SessionLog

_PACK_WALL_TIME = struct.Struct("<Bd").pack  # the key of Event field 1 (double), then the value
_PACK_FLOAT = struct.Struct("<f").pack
_PACK_U32 = struct.Struct("<I").pack
_PACK_U64 = struct.Struct("<Q").pack
_FLOAT_INF = _PACK_FLOAT(float("inf"))
_FLOAT_MINUS_INF = _PACK_FLOAT(float("-inf"))


def masked_crc32c(data: bytes) -> int:
    """The checksum of TensorBoard's record format: crc32c, rotated and offset."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    if n < 0x4000:  # most steps: one or two bytes, without the loop
        return bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _step_field(step: int) -> bytes:
    """Event field 2, int64: left out when 0 (proto3), two's complement when negative."""
    step = operator.index(step)
    if not -(2**63) <= step < 2**63:
        raise ValueError(f"EventWriter: step must fit in an int64, got {step}.")
    return b"\x10" + _varint(step % 2**64) if step else b""


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _scalar_summary_field(tag: str) -> bytes:
    """Event field 5, ``Summary{value: [Value{tag, simple_value}]}``, less the 4 float bytes.

    As protobuf does, an empty tag is left out; ``simple_value`` sits in a oneof,
    so it is written even when it is 0.
    """
    if not isinstance(tag, str):
        raise TypeError(f"EventWriter: tag must be a str, got {type(tag).__name__}.")
    tag_field = _length_delimited(1, tag.encode()) if tag else b""
    value = tag_field + b"\x15" + bytes(4)  # field 2, fixed32: a float
    return _length_delimited(5, _length_delimited(1, value))[:-4]


_NAME_PREFIX = "events.out.tfevents."


def _event_file_name(log_dir: Path) -> str:
    """A name that sorts after every event file already in ``log_dir``.

    TensorBoard reads a run's files in name order (the Python loader sorts the
    paths, the Rust one keeps them in a BTreeMap), and a later file's points
    replace an earlier file's from its first step on. The clock alone does not
    give that order: set back, it names a resumed run's file before the killed
    run's, and in a tie of seconds the host names decide. So the seconds field
    is at least one more than the largest in ``log_dir``, zero-padded to ten
    digits so that names sort as their seconds do.
    """
    latest = -1
    for name in os.listdir(log_dir):
        seconds = name[len(_NAME_PREFIX) :].partition(".")[0]
        if name.startswith(_NAME_PREFIX) and seconds.isascii() and seconds.isdigit():
            latest = max(latest, int(seconds))
    now = time.time_ns()
    seconds = max(now // 10**9, latest + 1)
    return f"{_NAME_PREFIX}{seconds:010d}.{socket.gethostname()}.{now:019d}.{os.getpid()}"


def _push_until_stopped(file, seconds: float, stopped: threading.Event) -> None:
    # BufferedWriter holds a lock around flush() and write(), so this thread and
    # the one logging never interleave inside the buffer; an empty buffer's
    # flush() makes no system call.
    while not stopped.wait(seconds):
        try:
            file.flush()
        except OSError:  # a full disk, say: the logging thread meets it at its next write
            return


def _close(file, stopped: threading.Event, pusher: threading.Thread | None) -> None:
    stopped.set()
    if pusher is not None:
        pusher.join()
    try:
        file.flush()
        os.fsync(file.fileno())
    finally:
        file.close()


class EventWriter:
    """Writes scalar events to a new file in ``log_dir``; never touches an existing file.

    The new file's name sorts after every event file already in ``log_dir``,
    whatever the wall clock says, and ``start_step`` writes a restart marker
    first: TensorBoard hides the events of earlier files of the same run at steps
    ``>= start_step``, so a resumed run continues one clean curve instead of
    drawing over the points it repeats.

    ``push_every`` (seconds) starts a daemon thread that pushes the buffered
    events to the operating system that often, until :meth:`close`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        start_step: int | None = None,
        push_every: float | None = None,
    ):
        if push_every is not None and not (
            isinstance(push_every, (int, float)) and 0 < push_every < math.inf
        ):
            raise ValueError(
                f"EventWriter: push_every must be a finite number of seconds > 0 or None, "
                f"got {push_every!r}."
            )
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.log_dir / _event_file_name(self.log_dir)
        self._file = open(self.path, "xb")  # "x": an earlier run's file is never overwritten
        stopped, pusher = threading.Event(), None
        if push_every is not None:
            pusher = threading.Thread(
                target=_push_until_stopped,
                args=(self._file, push_every, stopped),
                name=f"push {self.path.name}",
                daemon=True,
            )
            pusher.start()
        # At close(), at garbage collection or at exit, whichever comes first:
        # the thread holds the file, not the writer, so a dropped writer is closed too.
        self._close = weakref.finalize(self, _close, self._file, stopped, pusher)
        self._summary_fields: dict[str, bytes] = {}
        self._record_headers: dict[int, bytes] = {}
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if start_step is not None:
            marker = SessionLog(status=SessionLog.START)
            self._write(Event(wall_time=time.time(), step=start_step, session_log=marker))

    def _write(self, event: Event) -> None:
        self._write_record(event.SerializeToString())

    def _write_record(self, data: bytes) -> None:
        # A record: the length, its checksum, the data, its checksum. Scalar
        # events of one tag come in a few sizes, so each header is made once.
        header = self._record_headers.get(len(data))
        if header is None:
            length = _PACK_U64(len(data))
            header = length + _PACK_U32(masked_crc32c(length))
            self._record_headers[len(data)] = header
        crc = google_crc32c.value(data)
        crc = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # masked_crc32c, inlined
        self._file.write(header + data + _PACK_U32(crc))

    def add_summary(self, summary, step: int) -> None:
        """Write a ``Summary`` proto (text, a custom-scalars layout) as one event."""
        self._write(Event(wall_time=time.time(), step=step, summary=summary))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Write one point: the bytes tensorboardX's ``Event`` proto would give."""
        summary = self._summary_fields.get(tag)
        if summary is None:
            summary = self._summary_fields[tag] = _scalar_summary_field(tag)
        try:
            value = _PACK_FLOAT(value)
        except OverflowError:  # beyond float32's range: protobuf stores an infinity
            value = _FLOAT_INF if value > 0 else _FLOAT_MINUS_INF
        wall_time = _PACK_WALL_TIME(0x09, time.time())  # field 1, double
        self._write_record(wall_time + _step_field(step) + summary + value)

    def push(self) -> None:
        """Hand buffered events to the operating system: they survive a killed process."""
        self._file.flush()

    def flush(self) -> None:
        """Put every event written so far on disk (fsync): it survives a power cut too."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Stop the pushing thread, put every event on disk and close the file."""
        self._close()

    @property
    def closed(self) -> bool:
        return self._file.closed
