"""Bad checkpoints give a clear error naming the file and the problem, never a silent restart.

Each test here backs a row of README's "Bad input and what you see" table.
"""

import json
import pickle
import re
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_sched_callbacks import schedules
from mlx_sched_callbacks.checkpoint import MANIFEST, latest_checkpoint
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
    manifest["files"][name] = (folder / name).stat().st_size
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
    assert f"Skipping {newest}" in said and "callback.json has" in said and "manifest says" in said


def test_truncated_json_with_a_matching_manifest_names_the_file(run):
    out, fresh = run
    newest = out / "checkpoints/step_000000010"
    rewrite(newest, "callback.json", '{"format": "mlx_sched')
    with pytest.raises(ValueError, match=r"callback.json is not valid JSON.*truncated"):
        fresh().resume()


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
        ValueError, match=r"trainer.json\) is missing field\(s\) \['epoch_position'\]"
    ):
        fresh().resume()


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
