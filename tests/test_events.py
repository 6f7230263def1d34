"""EventWriter's hand-written scalar events, byte for byte against tensorboardX's."""

import gc
import struct
import threading
import time

import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import read_scalars
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.record_writer import masked_crc32c as tensorboardx_masked_crc32c

from mlx_sched_callbacks import LRScheduleCallback, events
from mlx_sched_callbacks import schedules as S
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


def test_a_new_file_sorts_after_a_file_from_a_clock_ahead(tmp_path):
    """A killed run's file named 10 minutes "later" than the resumed run's clock."""
    ahead = EventWriter(tmp_path, start_step=1)
    for step in range(1, 56):
        ahead.add_scalar("train/lr", -step, step)
    ahead.close()
    seconds = int(ahead.path.name.split(".")[3]) + 600
    ahead_path = ahead.path.with_name(f"events.out.tfevents.{seconds}.a-host.1.2")
    ahead.path.rename(ahead_path)
    (tmp_path / "events.out.tfevents.0x").write_bytes(b"")  # no seconds: passed over

    resumed = EventWriter(tmp_path, start_step=41)
    for step in range(41, 101):
        resumed.add_scalar("train/lr", step, step)
    resumed.close()
    assert resumed.path.name.startswith(f"events.out.tfevents.{seconds + 1}.")
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == resumed.path.name
    assert read_scalars(tmp_path, "train/lr") == [(s, -s) for s in range(1, 41)] + [
        (s, s) for s in range(41, 101)
    ]


def test_files_opened_in_one_second_on_two_hosts_sort_in_the_order_opened(tmp_path):
    first = EventWriter(tmp_path)
    first.close()
    seconds, ns_pid = first.path.name.split(".")[3], first.path.name.rsplit(".", 2)[1:]
    other_host = first.path.with_name(".".join(["events.out.tfevents", seconds, "zzzz", *ns_pid]))
    first.path.rename(other_host)  # the same seconds, a host name that sorts last
    opened = [other_host.name]
    for _ in range(5):
        writer = EventWriter(tmp_path)
        writer.close()
        opened.append(writer.path.name)
    assert sorted(opened) == opened


def test_points_reach_the_file_within_flush_secs_while_nothing_is_logged(tmp_path):
    callback = LRScheduleCallback(
        S.constant(0.5), optim.SGD(learning_rate=0.0), tmp_path, flush_secs=0.5
    )
    for _ in range(3):
        callback.on_step_begin()
        callback.on_step_end()
    thread_name = f"push {callback.writer.path.name}"
    assert [t for t in threading.enumerate() if t.name == thread_name]
    time.sleep(3 * 0.5)
    # A reader of its own, as TensorBoard is: only what reached the file counts.
    assert read_scalars(tmp_path) == [(1, 0.5), (2, 0.5), (3, 0.5)]
    callback.close()
    assert not [t for t in threading.enumerate() if t.name == thread_name]


def test_flush_secs_0_pushes_every_point(tmp_path):
    callback = LRScheduleCallback(
        S.constant(0.25), optim.SGD(learning_rate=0.0), tmp_path, flush_secs=0
    )
    for step in range(1, 4):
        callback.on_step_begin()
        callback.on_step_end()
        assert read_scalars(tmp_path) == [(s, 0.25) for s in range(1, step + 1)]
    thread_name = f"push {callback.writer.path.name}"
    assert not [t for t in threading.enumerate() if t.name == thread_name]
    callback.close()


def test_the_pushing_thread_never_splits_a_record(tmp_path):
    writer = EventWriter(tmp_path, push_every=1e-4)  # pushes while the points are written
    steps = range(1, 10_001)
    for step in steps:
        writer.add_scalar("train/lr", step / 7, step)
    writer.close()
    events = [Event.FromString(r) for r in records(writer.path.read_bytes())[1:]]
    assert [e.step for e in events] == list(steps)
    assert [e.summary.value[0].simple_value for e in events] == [
        float(np.float32(step / 7)) for step in steps
    ]


def test_a_dropped_writer_stops_its_thread_and_keeps_its_points(tmp_path):
    writer = EventWriter(tmp_path, push_every=60)
    writer.add_scalar("a", 1.5, 1)
    thread_name = f"push {writer.path.name}"
    assert [t for t in threading.enumerate() if t.name == thread_name]
    del writer
    gc.collect()
    assert not [t for t in threading.enumerate() if t.name == thread_name]
    assert read_scalars(tmp_path, "a") == [(1, 1.5)]


def test_bad_push_every_is_refused(tmp_path):
    for bad in [0, -1, float("inf"), "10"]:
        with pytest.raises(ValueError, match="push_every must be a finite number"):
            EventWriter(tmp_path, push_every=bad)
