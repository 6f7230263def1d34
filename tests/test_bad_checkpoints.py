"""Bad checkpoints give a clear error naming the file and the problem, never a silent restart.

Each test here backs a row of README's "Bad input and what you see" table.
"""

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import google_crc32c
import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

from mlx_sched_callbacks import schedules
from mlx_sched_callbacks._files import read_json, write_bytes_atomic, write_json_atomic
from mlx_sched_callbacks.callback import LRScheduleCallback
from mlx_sched_callbacks.run import checkpoint
from mlx_sched_callbacks.run.checkpoint import (
    MANIFEST,
    checkpoint_name,
    checkpoint_problem,
    file_crc32c,
    latest_checkpoint,
    read_arrays,
    write_checkpoint,
)
from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lm_run import build  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 10-iteration run with checkpoints at 5 and 10."""
    root = tmp_path_factory.mktemp("trained")
    tiny = build_tiny_model(root / "model"), build_tiny_dataset(root / "data")
    training, _ = build(*tiny, root / "run", iters=10, save_every=5)
    training.train()
    return tiny, root / "run"


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run and a fresh training object to resume it."""
    tiny, source = trained
    shutil.copytree(source, tmp_path / "run")

    def fresh(**kwargs):
        training, _ = build(*tiny, tmp_path / "run", iters=20, save_every=5, **kwargs)
        return training

    return tmp_path / "run", fresh


def refresh_manifest(folder, name):
    """Make the manifest match a replaced file: a complete checkpoint with wrong content."""
    manifest = json.loads((folder / MANIFEST).read_text())
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"size": len(data), "crc32c": google_crc32c.value(data)}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def rewrite(folder, name, text):
    (folder / name).write_text(text)
    refresh_manifest(folder, name)


def test_a_good_checkpoint_resumes(run):
    out, fresh = run
    assert fresh().resume() == 10


def test_truncated_file_makes_the_checkpoint_incomplete_and_it_is_skipped(run, capsys):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    text = (newest / "callback.json").read_text()
    (newest / "callback.json").write_text(text[: len(text) // 2])
    assert fresh().resume() == 5
    said = capsys.readouterr().out
    assert f"Skipping {newest}: {newest / 'callback.json'} has" in said
    assert "bytes, manifest.json says" in said


def test_truncated_json_with_a_matching_manifest_names_the_file(run):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    rewrite(newest, "callback.json", '{"format": "mlx_sched')
    with pytest.raises(ValueError, match=r"callback.json is not valid JSON.*truncated"):
        fresh().resume(newest)


def test_wrong_version(run):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    state = json.loads((newest / "callback.json").read_text())
    rewrite(newest, "callback.json", json.dumps({**state, "version": 7}))
    with pytest.raises(
        ValueError, match=r"callback.json: .*version 7; this release reads version 1"
    ):
        fresh().resume()


def test_missing_field_in_trainer_state(run):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    state = json.loads((newest / "trainer.json").read_text())
    del state["epoch_position"]
    rewrite(newest, "trainer.json", json.dumps(state))
    with pytest.raises(
        ValueError, match=r"trainer.json\)? is missing field\(s\) \['epoch_position'\]"
    ):
        fresh().resume(newest)


def test_checkpoint_from_a_different_schedule(run):
    out, fresh = run
    training = fresh()
    training.callback.schedule = schedules.constant(1e-3)
    with pytest.raises(ValueError, match=r"step_000000010/callback.json: .*schedule differs") as e:
        training.resume()
    assert "allow_schedule_change=True" in str(e.value)
    assert "schedule.name: 'join_schedules' != 'constant'" in str(e.value)
    assert training.resume(allow_schedule_change=True) == 10


def test_optimizer_state_from_another_model(run):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    state = mx.load(str(newest / "optimizer.safetensors"))
    key = next(k for k in state if k.endswith("lora_a.m"))
    state[key] = mx.zeros((3, 3))
    mx.save_safetensors(str(newest / "optimizer.safetensors"), state)
    refresh_manifest(newest, "optimizer.safetensors")
    with pytest.raises(
        ValueError, match=rf"optimizer.safetensors does not fit .*{key} has shape \(3, 3\)"
    ):
        fresh().resume()


def test_adapters_from_another_model(run):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    mx.save_safetensors(str(newest / "adapters.safetensors"), {"layers.0.other": mx.zeros(2)})
    refresh_manifest(newest, "adapters.safetensors")
    with pytest.raises(
        ValueError, match=r"adapters.safetensors does not fit this model: .* is missing"
    ):
        fresh().resume()


def test_a_different_batch_size(run):
    out, fresh = run
    training = fresh()
    training.args.batch_size = 8
    with pytest.raises(ValueError, match=r"trained with batch_size=4, this run has 8"):
        training.resume()


def test_no_complete_checkpoint_is_a_fresh_start_that_says_so(run, capsys):
    out, fresh = run
    for folder in (out / "checkpoints").iterdir():
        (folder / MANIFEST).unlink()
    assert latest_checkpoint(out / "checkpoints") is None
    assert fresh().resume() == 0
    said = capsys.readouterr().out
    assert said.count("Skipping") == 2 and "manifest.json is missing" in said


def test_an_incomplete_checkpoint_named_explicitly_is_an_error(run):
    out, fresh = run
    folder = out / "checkpoints/step_000000010"
    (folder / MANIFEST).unlink()
    with pytest.raises(
        ValueError, match=rf"cannot resume from {folder}: .*manifest.json is missing"
    ):
        fresh().resume(folder)


def test_resuming_never_unpickles(run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    out, fresh = run
    assert fresh().resume() == 10
    package = Path(__file__).resolve().parents[1] / "mlx_sched_callbacks"
    uses_pickle = re.compile(r"^\s*(import|from)\s+(pickle|cloudpickle|dill)\b", re.M)
    assert not [p.name for p in package.glob("*.py") if uses_pickle.search(p.read_text())]


# -- checksums: a file changed after it was saved -------------------------------------------

CHECKPOINT_FILES = [
    "adapters.safetensors",
    "optimizer.safetensors",
    "callback.json",
    "trainer.json",
    MANIFEST,
]


def flip_bit(path, byte=None, bit=0):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if byte is None else byte] ^= 1 << bit
    path.write_bytes(data)


def skip_reason(said, folder):
    """What the resume said about skipping ``folder``."""
    found = re.search(rf"^Skipping {re.escape(str(folder))}: (.*)$", said, re.M)
    assert found, said
    return found.group(1)


def test_the_manifest_records_each_files_size_and_crc32c(trained):
    _, source = trained
    folders = sorted((source / "checkpoints").iterdir())
    assert [f.name for f in folders] == ["step_000000005", "step_000000010"]
    for folder in folders:
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["version"] == 2 and checkpoint_name(manifest["step"]) == folder.name
        expected = {
            p.name: {"size": len(p.read_bytes()), "crc32c": google_crc32c.value(p.read_bytes())}
            for p in folder.iterdir()
            if p.name != MANIFEST
        }
        assert manifest["files"] == expected


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_flipped_bit_skips_the_newest_checkpoint_for_the_previous_one(run, capsys, name):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    flip_bit(newest / name)
    assert latest_checkpoint(out / "checkpoints") == out / "checkpoints/step_000000005"
    assert fresh().resume() == 5
    assert name in skip_reason(capsys.readouterr().out, newest)


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_flipped_bit_in_a_checkpoint_named_explicitly_is_an_error(run, name):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    flip_bit(newest / name)
    with pytest.raises(ValueError, match=rf"cannot resume from {re.escape(str(newest))}: .*{name}"):
        fresh().resume(newest)


def test_every_single_bit_flip_in_the_manifest_is_caught(trained, tmp_path):
    _, source = trained
    folder = tmp_path / "step_000000010"
    shutil.copytree(source / "checkpoints/step_000000010", folder)
    good = (folder / MANIFEST).read_bytes()
    missed = []
    for i in range(len(good) * 8):
        flip_bit(folder / MANIFEST, i // 8, i % 8)
        problem = checkpoint_problem(folder)
        if problem is None or MANIFEST not in problem:
            missed.append((i // 8, i % 8, problem))
        (folder / MANIFEST).write_bytes(good)
    assert checkpoint_problem(folder) is None
    assert not missed


def test_an_edit_that_keeps_the_size_is_caught_by_the_checksum(run, capsys):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    text = (newest / "callback.json").read_text()
    assert '"step": 10,' in text
    (newest / "callback.json").write_text(text.replace('"step": 10,', '"step": 11,'))
    assert len((newest / "callback.json").read_text()) == len(text)
    assert fresh().resume() == 5
    said = skip_reason(capsys.readouterr().out, newest)
    assert re.fullmatch(
        rf"{re.escape(str(newest / 'callback.json'))} has crc32c [0-9a-f]{{8}}, manifest.json "
        r"says [0-9a-f]{8} \(the file changed after it was saved\)",
        said,
    ), said


def test_the_cheap_check_reads_sizes_and_the_full_check_contents(run):
    out, _ = run
    newest = out / "checkpoints/step_000000010"
    flip_bit(newest / "adapters.safetensors")
    assert checkpoint_problem(newest, verify=False) is None
    assert "adapters.safetensors has crc32c" in checkpoint_problem(newest, verify=True)
    (newest / "trainer.json").write_text("{}")
    assert "trainer.json has 2 bytes, manifest.json says" in checkpoint_problem(
        newest, verify=False
    )


def test_latest_checkpoint_reads_only_the_newest_good_one(run, monkeypatch):
    out, _ = run
    read = []

    def reading(path):
        read.append(Path(path))
        return file_crc32c(path)

    monkeypatch.setattr(checkpoint, "file_crc32c", reading)
    newest = out / "checkpoints/step_000000010"
    assert latest_checkpoint(out / "checkpoints") == newest
    assert sorted(read) == sorted(p for p in newest.iterdir() if p.name != MANIFEST)


def test_a_version_1_manifest_still_resumes_with_sizes_only(run):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    manifest = json.loads((newest / MANIFEST).read_text())
    sizes = {name: entry["size"] for name, entry in manifest["files"].items()}
    (newest / MANIFEST).write_text(json.dumps({**manifest, "version": 1, "files": sizes}))
    assert checkpoint_problem(newest) is None
    assert fresh().resume() == 10
    (newest / "trainer.json").write_text("{}")
    assert checkpoint_problem(newest) == (
        f"{newest / 'trainer.json'} has 2 bytes, manifest.json says {sizes['trainer.json']}"
    )


def test_checksums_stream_files_larger_than_a_chunk(tmp_path):
    data = np.random.default_rng(0).bytes(3 * 2**20 + 5)
    folder = write_checkpoint(tmp_path, 7, {"big.bin": lambda p: p.write_bytes(data)})
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"] == {
        "big.bin": {"size": len(data), "crc32c": google_crc32c.value(data)}
    }
    assert file_crc32c(folder / "big.bin") == google_crc32c.value(data)
    assert checkpoint_problem(folder) is None


# -- only regular files inside the folder ---------------------------------------------------


@contextlib.contextmanager
def no_hang(seconds=60):
    """Fail, rather than block the test run for ever, if something opens a FIFO and waits."""

    def stuck(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s (reading a FIFO?)")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_in_place_of_a_file_never_hangs_a_resume(run, capsys):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    (newest / "callback.json").unlink()
    os.mkfifo(newest / "callback.json")
    with no_hang():
        assert fresh().resume() == 5
        said = skip_reason(capsys.readouterr().out, newest)
        assert said == f"{newest / 'callback.json'} is a FIFO, not a regular file"
        with pytest.raises(ValueError, match=r"callback.json is a FIFO, not a regular file"):
            fresh().resume(newest)


def test_readers_refuse_what_is_not_a_regular_file_without_blocking(tmp_path):
    fifo = tmp_path / "callback.json"
    os.mkfifo(fifo)
    os.mkfifo(tmp_path / "adapters.safetensors")
    callback = LRScheduleCallback(schedules.constant(1e-3), optim.SGD(learning_rate=0.0))
    with no_hang():
        with pytest.raises(ValueError, match=rf"^callback state {fifo} is a FIFO, not a regular"):
            read_json(fifo, "callback state")
        with pytest.raises(ValueError, match=rf"^callback state {fifo} is a FIFO, not a regular"):
            callback.load(fifo)
        with pytest.raises(ValueError, match=r"^adapters .*adapters.safetensors is a FIFO, not a"):
            read_arrays(tmp_path / "adapters.safetensors", "adapters")
    with pytest.raises(ValueError, match=rf"^trainer state {tmp_path} is a directory, not a"):
        read_json(tmp_path, "trainer state")


@pytest.mark.parametrize("name", ["adapters.safetensors", MANIFEST])
def test_a_symlink_in_place_of_a_file_is_refused(run, capsys, name):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    elsewhere = out / "elsewhere"
    shutil.copy(newest / name, elsewhere)  # the same bytes, only not in the folder
    (newest / name).unlink()
    (newest / name).symlink_to(elsewhere)
    assert fresh().resume() == 5
    said = skip_reason(capsys.readouterr().out, newest)
    assert said.endswith(f"{newest / name} is a symbolic link, not a regular file"), said


def test_a_directory_listed_as_a_file_is_refused(run):
    out, _ = run
    newest = out / "checkpoints/step_000000010"
    (newest / "extra").mkdir()
    manifest = json.loads((newest / MANIFEST).read_text())
    manifest["files"]["extra"] = {"size": (newest / "extra").stat().st_size, "crc32c": 0}
    (newest / MANIFEST).write_text(json.dumps(manifest))
    assert checkpoint_problem(newest) == f"{newest / 'extra'} is a directory, not a regular file"


@pytest.mark.parametrize("kind", ["parent", "absolute", "subfolder"])
def test_a_manifest_may_list_only_plain_names_in_its_folder(run, capsys, kind):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    target = {
        "parent": newest.parent / "outside.json",
        "absolute": out / "outside.json",
        "subfolder": newest / "sub" / "inside.json",
    }[kind]
    target.parent.mkdir(exist_ok=True)
    target.write_text("{}")  # a real file of the right size and checksum: only its place is wrong
    listed = {"parent": "../outside.json", "absolute": str(target), "subfolder": "sub/inside.json"}
    manifest = json.loads((newest / MANIFEST).read_text())
    manifest["files"][listed[kind]] = {"size": 2, "crc32c": google_crc32c.value(b"{}")}
    (newest / MANIFEST).write_text(json.dumps(manifest))
    assert fresh().resume() == 5
    said = skip_reason(capsys.readouterr().out, newest)
    assert said == (
        f"{newest / MANIFEST} lists {listed[kind]!r}, not a plain file name in the checkpoint "
        "folder (no '/', '..' or absolute path; not manifest.json)"
    )


def test_write_checkpoint_refuses_a_file_name_outside_the_folder(tmp_path):
    for name in ["../x", "/tmp/x", "a/b", "..", "", MANIFEST]:
        with pytest.raises(ValueError, match=r"write_checkpoint: a file is named .*not a plain"):
            write_checkpoint(tmp_path, 1, {name: lambda p: p.write_text("x")})
    assert list(tmp_path.iterdir()) == []


# -- the step in the manifest ----------------------------------------------------------------


def test_a_step_beyond_2_53_in_the_manifest_names_the_file(run, capsys):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    huge = out / "checkpoints" / checkpoint_name(10**30)
    shutil.copytree(newest, huge)
    manifest = json.loads((huge / MANIFEST).read_text())
    (huge / MANIFEST).write_text(json.dumps({**manifest, "step": 10**30}))
    assert fresh().resume() == 10
    said = skip_reason(capsys.readouterr().out, huge)
    expected = f"{huge / MANIFEST} step must be an integer from 0 to 2**53, got {10**30}"
    assert said == expected
    with pytest.raises(ValueError, match=re.escape(f"cannot resume from {huge}: {expected}.")):
        fresh().resume(huge)


@pytest.mark.parametrize("step", [-1, 2**53 + 1, 10.0, True, "10", None])
def test_a_manifest_step_must_be_a_whole_number_in_range(run, step):
    out, _ = run
    newest = out / "checkpoints/step_000000010"
    manifest = json.loads((newest / MANIFEST).read_text())
    (newest / MANIFEST).write_text(json.dumps({**manifest, "step": step}))
    assert checkpoint_problem(newest) == (
        f"{newest / MANIFEST} step must be an integer from 0 to 2**53, got {step!r}"
    )


def test_write_checkpoint_refuses_a_step_out_of_range(tmp_path):
    with pytest.raises(ValueError, match=r"step must be an integer from 0 to 2\*\*53, got 1000"):
        write_checkpoint(tmp_path, 10**30, {})


# -- dtypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, what, target",
    [
        ("optimizer.safetensors", "optimizer state", "this model and optimizer"),
        ("adapters.safetensors", "adapters", "this model"),
    ],
)
def test_arrays_converted_to_float16_are_refused(run, name, what, target):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    arrays = mx.load(str(newest / name))
    floats = sorted(k for k, v in arrays.items() if v.dtype == mx.float32 and v.ndim)
    assert floats and all(".lora_" in k for k in floats)
    converted = {k: v.astype(mx.float16) if k in floats else v for k, v in arrays.items()}
    mx.save_safetensors(str(newest / name), converted)
    refresh_manifest(newest, name)
    with pytest.raises(ValueError) as error:
        fresh().resume(newest)
    message = str(error.value)
    assert message.startswith(f"{what} {newest / name} does not fit {target}: "), message
    named = re.findall(r"(\S+) has dtype float16, expected float32", message)
    assert len(named) == 5 and set(named) <= set(floats), message


# -- nesting ---------------------------------------------------------------------------------


def nested_joins(depth):
    spec = {"name": "constant", "value": 1.0}
    for _ in range(depth):
        spec = {
            "name": "join_schedules",
            "schedules": [spec, {"name": "constant", "value": 0.5}],
            "boundaries": [1],
        }
    return spec


def test_deeply_nested_json_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "callback.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=rf"^callback state {path} is JSON nested too deeply"):
        read_json(path, "callback state")


def test_from_dict_refuses_joins_nested_past_100():
    assert schedules.from_dict(nested_joins(100)).at(0) == 1.0
    assert schedules.from_dict(nested_joins(100)).at(1) == 0.5
    for depth in (101, 100_000):
        with pytest.raises(
            ValueError, match=r"^from_dict: join_schedules are nested more than 100"
        ):
            schedules.from_dict(nested_joins(depth))
    looped = {"name": "join_schedules", "boundaries": [1]}
    looped["schedules"] = [looped, looped]
    with pytest.raises(ValueError, match=r"nested more than 100 deep"):
        schedules.from_dict(looped)


@pytest.mark.parametrize(
    "depth, said", [(100_000, "is JSON nested too deeply"), (150, "nested more than 100 deep")]
)
def test_a_deeply_nested_schedule_in_a_checkpoint_names_the_file(run, depth, said):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    state = json.loads((newest / "callback.json").read_text())
    state["schedule"] = "NESTED"
    join = '{"name": "join_schedules", "schedules": ['
    end = ', {"name": "constant", "value": 0.5}], "boundaries": [1]}'
    nested = join * depth + '{"name": "constant", "value": 1.0}' + end * depth
    rewrite(newest, "callback.json", json.dumps(state).replace('"NESTED"', nested))
    with pytest.raises(ValueError, match=rf"callback.json.*{said}"):
        fresh().resume(newest)


# -- failed writes leave nothing behind ------------------------------------------------------


def out_of_space(path):
    path.write_bytes(b"half")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_failed_write_leaves_nothing_and_names_the_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    final = root / "step_000000040"
    writers = {"a.bin": lambda p: p.write_bytes(b"a"), "b.bin": out_of_space}
    with pytest.raises(OSError) as error:
        write_checkpoint(root, 40, writers)
    assert str(error.value) == f"cannot write checkpoint {final} (b.bin): No space left on device"
    assert error.value.errno == errno.ENOSPC
    assert list(root.iterdir()) == []
    # A failed save of a step that already has a checkpoint keeps the old one whole.
    write_checkpoint(root, 40, {"a.bin": lambda p: p.write_bytes(b"old")})
    with pytest.raises(OSError, match=r"\(b.bin\): No space left on device"):
        write_checkpoint(root, 40, writers)
    assert list(root.iterdir()) == [final] and checkpoint_problem(final) is None
    assert (final / "a.bin").read_bytes() == b"old"


def test_a_writer_that_raises_anything_leaves_nothing(tmp_path):
    def mlx_full_disk(path):  # what mx.save_safetensors raises on a full disk
        path.write_bytes(b"half")
        raise RuntimeError("[write] Unable to write 334556 bytes to file.")

    with pytest.raises(OSError) as error:
        write_checkpoint(tmp_path, 40, {"a.safetensors": mlx_full_disk})
    assert str(error.value) == (
        f"cannot write checkpoint {tmp_path / 'step_000000040'} (a.safetensors): "
        "[write] Unable to write 334556 bytes to file."
    )
    assert isinstance(error.value.__cause__, RuntimeError)

    def interrupted(path):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, 40, {"a.bin": interrupted})
    assert list(tmp_path.iterdir()) == []


def test_write_bytes_atomic_leaves_no_temporary_file(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "inside").write_text("x")  # a folder cannot be replaced by a file
    with pytest.raises(OSError) as error:
        write_bytes_atomic(tmp_path / "taken", b"data")
    assert str(error.value) == f"cannot write {tmp_path / 'taken'}: Is a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.fixture
def small_filesystem(tmp_path):
    """Mount a small tmpfs with the given options (needs root); skip where mount is refused."""
    mounted = []

    def mount(options):
        if shutil.which("mount") is None:
            pytest.skip("no mount command to make a small file system")
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_a_full_disk_leaves_nothing_behind(small_filesystem):
    disk = small_filesystem("size=64k")
    (disk / "adapters.safetensors").write_bytes(b"old")
    with pytest.raises(OSError) as error:
        write_bytes_atomic(disk / "adapters.safetensors", bytes(200_000))
    message = f"cannot write {disk / 'adapters.safetensors'}: No space left on device"
    assert str(error.value) == message and error.value.errno == errno.ENOSPC
    assert os.listdir(disk) == ["adapters.safetensors"]
    assert (disk / "adapters.safetensors").read_bytes() == b"old"

    callback = LRScheduleCallback(schedules.constant(1e-3), optim.SGD(learning_rate=0.0))
    writers = {
        "callback.json": callback.save,
        "adapters.safetensors": lambda p: mx.save_safetensors(str(p), {"w": mx.zeros(50_000)}),
    }
    with pytest.raises(OSError) as error:
        write_checkpoint(disk / "checkpoints", 40, writers)
    final = disk / "checkpoints" / "step_000000040"
    assert str(error.value).startswith(f"cannot write checkpoint {final} (adapters.safetensors): ")
    assert os.listdir(disk / "checkpoints") == []


def test_a_read_only_disk_names_the_path(small_filesystem):
    disk = small_filesystem("size=64k,ro")
    with pytest.raises(OSError) as error:
        write_json_atomic(disk / "callback.json", {})
    assert str(error.value) == f"cannot write {disk / 'callback.json'}: Read-only file system"
    assert error.value.errno == errno.EROFS
    with pytest.raises(OSError) as error:
        write_checkpoint(disk, 40, {"a.bin": lambda p: p.write_bytes(b"a")})
    final = disk / "step_000000040"
    assert str(error.value) == f"cannot write checkpoint {final}: Read-only file system"
    assert os.listdir(disk) == []
