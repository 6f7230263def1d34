"""EventWriter's hand-written scalar events, byte for byte against tensorboardX's."""

import struct

import pytest
from conftest import read_scalars
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.record_writer import masked_crc32c as tensorboardx_masked_crc32c

from mlx_sched_callbacks import events
from mlx_sched_callbacks.events import EventWriter

WALL_TIME = 1_754_000_000.123456


def records(data):
    """Split an event file into its records, checking lengths and checksums as TensorBoard does."""
    out = []
    while data:
        header, data = data[:8], data[8:]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[:4])[0] == tensorboardx_masked_crc32c(header)
        record, data = data[4 : 4 + length], data[4 + length :]
        assert struct.unpack("<I", data[:4])[0] == tensorboardx_masked_crc32c(record)
        out.append(record)
        data = data[4:]
    return out


def tensorboardx_bytes(tag, value, step):
    summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
    return Event(wall_time=WALL_TIME, step=step, summary=summary).SerializeToString()


POINTS = [
    ("train/learning_rate", 1e-3, 1),
    ("train/learning_rate", 0.1, 127),
    ("train/learning_rate", 1 / 3, 128),
    ("train/loss", 2.5, 16_384),
    ("train/loss", 0.0, 0),
    ("", -0.0, 5),
    ("é/ünïcode ✓", 1e-45, 2**31),
    ("a" * 200, 3.4028235e38, 2**63 - 1),
    ("big", 1e300, -1),
    ("small", -1e300, -(2**63)),
    ("inf", float("inf"), 3),
    ("nan", float("nan"), 4),
    ("int value", 7, 300),
]


def test_scalar_events_are_tensorboardx_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(events.time, "time", lambda: WALL_TIME)
    writer = EventWriter(tmp_path)
    for point in POINTS:
        writer.add_scalar(*point)
    writer.close()
    written = records(writer.path.read_bytes())
    assert len(written) == 1 + len(POINTS)  # the file_version event first
    for record, point in zip(written[1:], POINTS):
        assert record == tensorboardx_bytes(*point), point


def test_tensorboard_reads_the_points_back(tmp_path):
    writer = EventWriter(tmp_path, start_step=1)
    steps = [1, 2, 3, 200, 70_000]
    for step in steps:
        writer.add_scalar("train/lr", step / 1000, step)
        writer.add_scalar("ü", -step, step)
    writer.close()
    assert read_scalars(tmp_path, "train/lr") == [(s, pytest.approx(s / 1000)) for s in steps]
    assert read_scalars(tmp_path, "ü") == [(s, -s) for s in steps]


def test_bad_tags_and_steps_are_refused(tmp_path):
    writer = EventWriter(tmp_path)
    with pytest.raises(TypeError, match="tag must be a str"):
        writer.add_scalar(b"bytes", 1.0, 1)
    with pytest.raises(ValueError, match="int64"):
        writer.add_scalar("a", 1.0, 2**63)
    with pytest.raises(TypeError):
        writer.add_scalar("a", 1.0, 1.5)
    writer.close()
    assert len(records(writer.path.read_bytes())) == 1  # nothing half-written


def test_the_checksum_is_tensorboards():
    for data in [b"", b"a", bytes(range(256)) * 3]:
        assert events.masked_crc32c(data) == tensorboardx_masked_crc32c(data)
