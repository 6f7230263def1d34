"""Best adapter, early stopping and the non-finite guard in mlx-lm's real train(), killed and
resumed (tests/lm_run.py runs it in a subprocess)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_scalars

from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model

HERE = Path(__file__).resolve().parent
# A constant rate high enough that validation loss falls, then wanders above its minimum.
SHAPE = ["--iters", "60", "--save-every", "8", "--steps-per-eval", "4",
         "--steps-per-report", "4", "--learning-rate", "3e-2"]  # fmt: skip
PATIENCE = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "model"), build_tiny_dataset(root / "data")


def lm_run(tiny, out, *extra, check=True):
    model, data = tiny
    command = [sys.executable, str(HERE / "lm_run.py"), "--model", str(model),
               "--data", str(data), "--out", str(out), *SHAPE, *extra]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if check and result.returncode:
        raise AssertionError(result.stdout[-2000:] + result.stderr[-3000:])
    return result


def expected_stop(validations, patience, threshold=0.0):
    """Hugging Face's rule, written again: the validation at which the run stops, and the best."""
    best, stale = None, 0
    for iteration, loss in validations:
        if best is None or (loss < best[1] and best[1] - loss > threshold):
            stale = 0
        else:
            stale += 1
        if best is None or loss < best[1]:
            best = (iteration, loss)
        if stale >= patience:
            return iteration, best
    return None, best


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def final_files(out: Path) -> dict:
    names = ["adapters.safetensors", "best_adapters.safetensors", "best_adapters.json"]
    found = {name: digest(out / name) for name in names}
    for folder in sorted((out / "checkpoints").glob("step_*")):
        for file in sorted(folder.iterdir()):
            if file.name != "manifest.json":  # it records mtimes
                found[f"{folder.name}/{file.name}"] = digest(file)
    return found


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The run without early stopping, and the same run with it."""
    root = tmp_path_factory.mktemp("reference")
    lm_run(tiny, root / "free")
    validations = read_scalars(root / "free" / "tensorboard", "val/loss")
    stopped = lm_run(tiny, root / "early", "--early-stopping-patience", str(PATIENCE))
    return validations, root / "early", stopped


def test_early_stopping_stops_at_the_validation_the_rule_names(reference):
    validations, out, result = reference
    stop, (best_iteration, best_loss) = expected_stop(validations, PATIENCE)
    assert stop is not None and stop < 60, "the curve must rise after its minimum"
    assert f"stopped: Early stopping at iteration {stop}:" in result.stdout
    assert f"best {best_loss:.4f} at iteration {best_iteration}" in result.stdout
    assert str(out / "best_adapters.safetensors") in result.stdout
    # It stops at the end of the update under way: here on the report grid, at once.
    assert (out / "checkpoints" / f"step_{stop:09d}").is_dir()
    assert max(s for s, _ in read_scalars(out / "tensorboard")) == stop
    assert read_scalars(out / "tensorboard", "val/loss") == [v for v in validations if v[0] <= stop]
    best = json.loads((out / "best_adapters.json").read_text())
    assert best == {"iteration": best_iteration, "val_loss": pytest.approx(best_loss, rel=1e-7)}
    best_curve = read_scalars(out / "tensorboard", "val/best_loss")
    assert best_curve[-1] == (stop, pytest.approx(best_loss, rel=1e-7))
    assert [v for _, v in best_curve] == sorted((v for _, v in best_curve), reverse=True)


def test_the_best_adapter_is_the_one_validated(reference, tiny, tmp_path):
    """Validation at iteration N sees the adapters after N - 1 iterations: the same run,
    checkpointed at N - 1, holds those adapters byte for byte."""
    _, out, _ = reference
    best = json.loads((out / "best_adapters.json").read_text())["iteration"]
    short = tmp_path / "short"
    lm_run(tiny, short, "--iters", str(best), "--save-every", str(best - 1))
    checkpoint = short / "checkpoints" / f"step_{best - 1:09d}" / "adapters.safetensors"
    assert digest(checkpoint) == digest(out / "best_adapters.safetensors")
    assert digest(out / "best_adapters.safetensors") != digest(out / "adapters.safetensors")


@pytest.mark.parametrize("kill_at", [21, 30])
def test_killed_and_resumed_it_decides_the_same_and_ends_with_the_same_files(
    reference, tiny, tmp_path, kill_at
):
    # 21: after the checkpoint at 16 and a new best at 20 (on disk, past the checkpoint);
    # 30: after the checkpoint at 24, between validations.
    _, uninterrupted, result = reference
    out = tmp_path / "run"
    early = ["--early-stopping-patience", str(PATIENCE)]
    killed = lm_run(tiny, out, *early, "--stop-at", str(kill_at), "--stop-with", "KILL",
                    check=False)  # fmt: skip
    assert killed.returncode == -9
    resumed = lm_run(tiny, out, *early, "--resume")
    last = resumed.stdout.splitlines()[-1].replace(str(out), "RUN")
    assert last == result.stdout.splitlines()[-1].replace(str(uninterrupted), "RUN")
    assert final_files(out) == final_files(uninterrupted)


def test_non_finite_updates_are_skipped_then_the_run_stops_with_the_last_good_state(tiny, tmp_path):
    out = tmp_path / "run"
    result = lm_run(tiny, out, "--save-every", "9", "--max-skipped-updates", "3",
                    "--poison", "10", "11", "12", check=False)  # fmt: skip
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1] + result.stderr
    assert "3 updates in a row had a non-finite gradient norm" in last
    assert "(iteration 12)" in last
    log = out / "tensorboard"
    assert read_scalars(log, "train/skipped_updates") == [(10, 1.0), (11, 2.0), (12, 3.0)]
    # The rate was logged at every applied update, not at the skipped ones.
    assert [s for s, _ in read_scalars(log)] == list(range(1, 10))
    good, stopped = out / "checkpoints" / "step_000000009", out / "checkpoints" / "step_000000012"
    for name in ("adapters.safetensors", "optimizer.safetensors"):
        assert digest(stopped / name) == digest(good / name), name


def test_a_single_bad_batch_is_skipped_and_training_goes_on(tiny, tmp_path):
    out = tmp_path / "run"
    lm_run(tiny, out, "--iters", "16", "--max-skipped-updates", "3", "--poison", "5")
    log = out / "tensorboard"
    assert read_scalars(log, "train/skipped_updates") == [(5, 1.0)]
    norms = dict(read_scalars(log, "train/grad_norm"))
    assert 5 not in norms and len(norms) == 15  # the norm is logged with each applied update
    callback = json.loads((out / "checkpoints" / "step_000000016" / "callback.json").read_text())
    assert (callback["step"], callback["skipped_updates"]) == (15, 1)
