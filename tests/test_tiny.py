"""The tiny offline model and dataset, exercised through the real mlx-lm."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import CacheDataset, load_dataset
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlx_sched_callbacks import tiny
from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model, load_tiny

REPO = Path(__file__).resolve().parents[1]
SENTENCE = "Anna has three red cats. count: one two three."

# Runs in a fresh interpreter with the hub switched off and an empty HF cache.
OFFLINE_SCRIPT = """
import json, sys
import mlx.core as mx
from mlx_sched_callbacks.tiny import load_tiny

model, tok = load_tiny(sys.argv[1], seed=0)
ids = tok.encode(sys.argv[2])
logits = model(mx.array([ids]))
print(json.dumps({
    "ids": ids,
    "shape": logits.shape,
    "finite": mx.all(mx.isfinite(logits)).item(),
    "text": tok.decode(ids, skip_special_tokens=True),
    "bos": tok.bos_token_id,
}))
"""


@pytest.fixture(scope="module")
def offline_build(tmp_path_factory):
    """Build and run the model in a subprocess under HF_HUB_OFFLINE=1."""
    root = tmp_path_factory.mktemp("offline")
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(root / "hf_home"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(root / "model"), SENTENCE],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return root / "model", json.loads(proc.stdout.strip().splitlines()[-1])


def test_model_loads_offline_and_gives_logits_over_the_vocab(offline_build):
    _, out = offline_build
    ids = out["ids"]
    assert ids[0] == out["bos"] == 0
    assert out["shape"] == [1, len(ids), 512]
    assert out["finite"]
    assert out["text"] == SENTENCE


def test_build_is_identical_across_processes_and_differs_by_seed(offline_build, tmp_path):
    offline_dir, _ = offline_build
    same = build_tiny_model(tmp_path / "same", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (same / name).read_bytes() == (offline_dir / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (same / "model.safetensors").read_bytes()
    # Only the weights depend on the seed.
    assert (other / "tokenizer.json").read_bytes() == (same / "tokenizer.json").read_bytes()


def test_complete_build_is_reused_and_incomplete_one_rebuilt(tmp_path):
    path = build_tiny_model(tmp_path / "m", seed=0)
    weights = path / "model.safetensors"
    built = weights.read_bytes()

    weights.write_bytes(b"stale")
    assert build_tiny_model(path, seed=0) == path
    assert weights.read_bytes() == b"stale"  # complete, same seed: left as it is

    (path / tiny.lm._MARKER).unlink()  # as if a build was interrupted
    build_tiny_model(path, seed=0)
    assert weights.read_bytes() == built

    build_tiny_model(path, seed=1)
    assert weights.read_bytes() not in (built, b"stale")


def test_tokenizer_round_trips_every_dataset_text(tmp_path):
    _, tok = load_tiny(tmp_path / "m")
    data = build_tiny_dataset(tmp_path / "d")
    texts = [json.loads(line)["text"] for line in (data / "valid.jsonl").read_text().splitlines()]
    for text in [SENTENCE, "Unseen words: zebra, 42 & ünïcode!", *texts]:
        ids = tok.encode(text)
        assert max(ids) < 512
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_dataset_loads_through_mlx_lm(tmp_path):
    _, tok = load_tiny(tmp_path / "m")
    data = build_tiny_dataset(tmp_path / "d")
    args = SimpleNamespace(data=str(data), train=True, test=True)
    splits = load_dataset(args, tok)
    assert [len(s) for s in splits] == [200, 40, 20]
    for split in splits:
        for i in range(len(split)):
            tokens, offset = split.process(split[i])
            assert offset == 0
            assert tokens[0] == tok.bos_token_id and tokens[-1] == tok.eos_token_id
            assert 5 < len(tokens) < 60


def test_dataset_is_deterministic_and_sized(tmp_path):
    a = build_tiny_dataset(tmp_path / "a", n_train=9, n_valid=3, n_test=2, seed=7)
    b = build_tiny_dataset(tmp_path / "b", n_train=9, n_valid=3, n_test=2, seed=7)
    c = build_tiny_dataset(tmp_path / "c", n_train=9, n_valid=3, n_test=2, seed=8)
    for name, n in [("train", 9), ("valid", 3), ("test", 2)]:
        text = (a / f"{name}.jsonl").read_text()
        assert len(text.splitlines()) == n
        assert text == (b / f"{name}.jsonl").read_text()
    assert (a / "train.jsonl").read_text() != (c / "train.jsonl").read_text()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_valid must be a positive int, got 0"):
        build_tiny_dataset(tmp_path / "d", n_valid=0)
    with pytest.raises(TypeError, match="seed must be an int, got '0'"):
        build_tiny_model(tmp_path / "m", seed="0")
    assert not (tmp_path / "m").exists()


class _Recorder(TrainingCallback):
    def __init__(self):
        self.train_losses = []
        self.val_losses = []

    def on_train_loss_report(self, train_info):
        self.train_losses.append(train_info["train_loss"])

    def on_val_loss_report(self, val_info):
        self.val_losses.append((val_info["iteration"], val_info["val_loss"]))


def _lora_run(model_dir, data_dir, adapter_file):
    model, tok = load_tiny(model_dir)
    mx.random.seed(0)  # LoRA's lora_a init draws from mlx's global random state
    np.random.seed(0)  # iterate_batches shuffles with numpy's global state
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 8, "dropout": 0.0, "scale": 20.0})
    train_set, valid_set, _ = load_dataset(
        SimpleNamespace(data=str(data_dir), train=True, test=False), tok
    )
    recorder = _Recorder()
    train(
        model,
        optim.Adam(learning_rate=1e-3),
        CacheDataset(train_set),
        CacheDataset(valid_set),
        args=TrainingArgs(
            batch_size=4,
            iters=10,
            val_batches=-1,
            steps_per_report=1,
            steps_per_eval=10,
            adapter_file=str(adapter_file),
        ),
        training_callback=recorder,
    )
    return recorder, mx.load(str(adapter_file))


def test_lora_training_lowers_loss_and_is_deterministic(tmp_path):
    model_dir = build_tiny_model(tmp_path / "m")
    data_dir = build_tiny_dataset(tmp_path / "d")
    first, adapters = _lora_run(model_dir, data_dir, tmp_path / "a1.safetensors")
    second, again = _lora_run(model_dir, data_dir, tmp_path / "a2.safetensors")

    # Validation before the first step and before the last one.
    assert [it for it, _ in first.val_losses] == [0, 9]
    (_, start), (_, end) = first.val_losses
    assert start > math.log(512) - 0.5  # an untrained model is near uniform
    assert end < start - 1.0  # measured: 6.88 -> 5.03
    assert len(first.train_losses) == 10
    assert np.mean(first.train_losses[-3:]) < first.train_losses[0] - 1.0

    # 2 layers x 7 projections x (lora_a, lora_b)
    assert len(adapters) == 28
    assert second.train_losses == first.train_losses
    assert second.val_losses == first.val_losses
    assert adapters.keys() == again.keys()
    for name, value in adapters.items():
        assert mx.array_equal(value, again[name]).item(), name
