"""Distributed runs through mlx's own engine: ``mlx.launch -n 2`` over loopback (ring backend).

Each run is two real processes driving mlx-lm's unmodified ``train()`` through
MlxLmTraining (tests/dist_run.py). The launcher exits 0 even when a worker
fails, so every rank writes its own result file, last and only on success; a
missing one fails the test with that rank's output.

mlx-lm's batches under ``n`` ranks: ``batch_size`` is the global batch. Every
rank draws the same permutation of batches (numpy's global random state, seeded
alike on every rank) and takes rows ``r, r + n, ...`` of each, so a rank's batch
has ``batch_size / n`` rows (``batch_size`` must be divisible by ``n``) and the
ranks together see the batch one process would. Gradients are averaged
(``average_gradients``) and reported losses and token counts summed over ranks.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import read_scalars

from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model

HERE = Path(__file__).resolve().parent
DIST_RUN = HERE / "dist_run.py"
sys.path.insert(0, str(HERE))
from lm_run import SCHEDULE  # noqa: E402

RANKS = 2
ITERS, SAVE_EVERY, BATCH = 20, 10, 4
LAUNCH_TIMEOUT = 180  # seconds; a warm launch takes 5-10 s on 2 busy cores
RATES = [float(np.float32(SCHEDULE(i - 1))) for i in range(1, ITERS + 1)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    # Built here, once: the ranks would race to build it.
    return build_tiny_model(root / "model"), build_tiny_dataset(root / "data")


# -- launching -------------------------------------------------------------


def mlx_launch() -> str:
    found = shutil.which("mlx.launch", path=str(Path(sys.executable).parent))
    found = found or shutil.which("mlx.launch")
    if found is None:
        pytest.fail("mlx.launch not found beside the interpreter nor on PATH (pip install mlx)")
    return found


def free_port_pair() -> int:
    """A port P with P and P + 1 free: the ring backend has rank r listen on P + r."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port + 1 > 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


class Launch:
    """One ``mlx.launch -n 2`` of dist_run.py: the launcher's outcome and each rank's."""

    def __init__(self, tiny, out, results, *extra):
        self.results = Path(results)
        model, data = tiny
        worker = [str(DIST_RUN), "--model", str(model), "--data", str(data), "--out", str(out),
                  "--results", str(results), "--iters", str(ITERS),
                  "--save-every", str(SAVE_EVERY), "--batch-size", str(BATCH), *extra]  # fmt: skip
        for _ in range(3):  # another process may take a free port before the ranks bind it
            shutil.rmtree(self.results, ignore_errors=True)
            self._run(worker, free_port_pair())
            if not any("Couldn't bind socket" in self.log(r) for r in range(RANKS)):
                break

    def _run(self, worker, port):
        command = [mlx_launch(), "-n", str(RANKS), "--hosts", "127.0.0.1", "--backend", "ring",
                   "--starting-port", str(port), "--python", sys.executable, *worker]  # fmt: skip
        # The launcher leaves a pidfile and a hostfile per rank behind (mktemp): here,
        # in this test's folder. dist_run.py gives the ranks their own TMPDIR back, so
        # mlx's compiled-kernel cache stays warm.
        mktemp = self.results.with_name(self.results.name + "-mktemp")
        mktemp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(mktemp), "DIST_RUN_TMPDIR": os.environ.get("TMPDIR", "")}
        # Its own session: on a timeout, the launcher and both ranks go in one killpg.
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            self.stdout, self.stderr = process.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            self.stdout, self.stderr = process.communicate()
            pytest.fail(f"mlx.launch ran past {LAUNCH_TIMEOUT} s\n{self.report()}")
        self.returncode = process.returncode

    def log(self, rank: int) -> str:
        path = self.results / f"rank{rank}.log"
        return path.read_text(errors="replace") if path.exists() else "<no log>"

    def result(self, rank: int) -> dict | None:
        path = self.results / f"rank{rank}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def report(self) -> str:
        logs = "".join(f"\n--- rank {r} ---\n{self.log(r)[-3000:]}" for r in range(RANKS))
        return f"--- mlx.launch stderr ---\n{self.stderr[-3000:]}{logs}"

    def ok(self) -> list[dict]:
        """Every rank's result; fails with the ranks' output if any rank has none."""
        results = [self.result(r) for r in range(RANKS)]
        failed = [r for r, result in enumerate(results) if result is None]
        if failed or self.returncode != 0:
            pytest.fail(
                f"rank(s) {failed} wrote no result, mlx.launch exited {self.returncode}\n"
                + self.report()
            )
        assert [(x["rank"], x["size"]) for x in results] == [(r, RANKS) for r in range(RANKS)]
        return results


# -- reading results -------------------------------------------------------


def load(path) -> dict:
    arrays = mx.load(str(path))
    assert arrays, path
    return {k: np.array(v) for k, v in arrays.items()}


def assert_bitwise_equal(path_a, path_b):
    a, b = load(path_a), load(path_b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].tobytes() == b[key].tobytes(), f"{key}: {path_a} != {path_b}"


def event_files(log_dir) -> list[str]:
    return sorted(p.name for p in Path(log_dir).iterdir() if p.name.startswith("events.out."))


def checkpoint_folders(out) -> list[str]:
    # Hidden names too: a staging folder left behind would show here.
    return sorted(p.name for p in (Path(out) / "checkpoints").iterdir())


def checkpoints_renamed_into_place(result) -> list[str]:
    """Checkpoint folders this rank moved into place, in order (each rename is one save)."""
    return [
        Path(w[2]).name
        for w in result["writes"]
        if w[0] == "os.rename" and Path(w[2]).parent.name == "checkpoints"
    ]


def global_batches(tiny, n):
    """The first ``n`` batches one process draws with mlx-lm's iterate_batches (seed 0)."""
    from mlx_lm.tuner.datasets import CacheDataset, load_dataset
    from mlx_lm.tuner.trainer import iterate_batches

    from mlx_sched_callbacks.tiny import load_tiny

    model_dir, data_dir = tiny
    _, tokenizer = load_tiny(model_dir)
    data = argparse.Namespace(
        data=str(data_dir), train=True, test=False, hf_dataset=None, mask_prompt=False
    )
    train_set, _, _ = load_dataset(data, tokenizer)
    saved = np.random.get_state()
    np.random.seed(0)
    try:
        batches = []
        for (tokens, lengths), _ in zip(iterate_batches(CacheDataset(train_set), BATCH, 2048),
                                        range(n)):  # fmt: skip
            rows = zip(np.array(tokens), np.array(lengths))
            batches.append([row[:length].tolist() for row, (_, length) in rows])
    finally:
        np.random.set_state(saved)
    return batches


# -- the runs --------------------------------------------------------------


@pytest.fixture(scope="module")
def whole(tiny, tmp_path_factory):
    """An uninterrupted 2-rank run of ITERS iterations."""
    root = tmp_path_factory.mktemp("whole")
    launch = Launch(tiny, root / "out", root / "results")
    return root / "out", root / "results", launch.ok()


def test_every_rank_sets_the_same_rates_and_ends_with_the_same_parameters(whole):
    out, results, ranks = whole
    for result in ranks:
        assert result["resumed"] is None
        rates = [(x["iteration"], x["learning_rate"]) for x in result["reports"]]
        assert rates == list(zip(range(1, ITERS + 1), RATES)), result["rank"]
    # Losses and token counts are summed over ranks, so the reports agree whole.
    assert ranks[0]["reports"] == ranks[1]["reports"]
    assert_bitwise_equal(results / "rank0.safetensors", results / "rank1.safetensors")
    assert_bitwise_equal(
        results / "rank0.optimizer.safetensors", results / "rank1.optimizer.safetensors"
    )
    assert_bitwise_equal(results / "rank0.safetensors", out / "adapters.safetensors")


def test_each_rank_trains_on_its_share_of_the_global_batch(whole, tiny):
    _, _, ranks = whole
    expected = global_batches(tiny, ITERS)
    for r, result in enumerate(ranks):
        assert [len(b) for b in result["batches"]] == [BATCH // RANKS] * ITERS
        assert result["batches"] == [batch[r::RANKS] for batch in expected], r


def test_only_rank_0_writes_tensorboard_and_checkpoints(whole):
    out, _, (rank0, rank1) = whole
    assert rank1["writes"] == []  # nothing under out/: no event file, no checkpoint
    assert sorted(p.name for p in out.iterdir()) == [
        "0000010_adapters.safetensors", "0000020_adapters.safetensors",
        "adapters.safetensors", "best_adapters.json", "best_adapters.safetensors",
        "checkpoints", "tensorboard",
    ]  # fmt: skip
    assert checkpoint_folders(out) == ["step_000000010", "step_000000020"]
    assert checkpoints_renamed_into_place(rank0) == ["step_000000010", "step_000000020"]
    opened = [Path(w[1]).name for w in rank0["writes"] if w[0] == "open"]
    assert [name for name in opened if name.startswith("events.out.")] == event_files(
        out / "tensorboard"
    )
    assert len(event_files(out / "tensorboard")) == 1
    assert read_scalars(out / "tensorboard") == list(zip(range(1, ITERS + 1), RATES))
    losses = read_scalars(out / "tensorboard", "train/loss")
    assert losses == [
        (x["iteration"], float(np.float32(x["train_loss"]))) for x in rank0["reports"]
    ]
    assert [s for s, _ in read_scalars(out / "tensorboard", "val/loss")] == [1, ITERS]


def test_every_rank_resumes_from_rank_0s_checkpoint_after_a_stop_and_a_kill(whole, tiny, tmp_path):
    whole_out, whole_results, whole_ranks = whole
    out = tmp_path / "out"

    # 1. Both ranks stop at 13: rank 0 writes checkpoints 10 and 13, rank 1 nothing.
    first = Launch(tiny, out, tmp_path / "first", "--until", "13").ok()
    for result in first:
        assert [x["iteration"] for x in result["reports"]] == list(range(1, 14))
    assert first[1]["writes"] == []
    assert checkpoints_renamed_into_place(first[0]) == ["step_000000010", "step_000000013"]

    # 2. Both resume at 13; rank 0 is SIGKILLed after iteration 17. The launcher then
    # stops rank 1, whatever its own exit status says.
    killed = Launch(tiny, out, tmp_path / "killed", "--resume", "--kill-rank", "0",
                    "--kill-at", "17")  # fmt: skip
    assert killed.result(0) is None and killed.result(1) is None, killed.report()
    for r in range(RANKS):
        assert f"rank {r} resumed at 13" in killed.log(r), killed.report()
    assert "iteration 17" in killed.log(0), killed.report()
    assert "iteration 18" not in killed.log(0) + killed.log(1), killed.report()
    assert checkpoint_folders(out) == ["step_000000010", "step_000000013"]

    # 3. A fresh launch: both ranks resume at 13 from rank 0's checkpoint and finish.
    last_results = tmp_path / "last"
    last = Launch(tiny, out, last_results, "--resume").ok()
    for r, result in enumerate(last):
        assert result["resumed"] == 13
        assert result["reports"] == whole_ranks[r]["reports"][13:]
        assert result["batches"] == whole_ranks[r]["batches"][13:]
    assert last[1]["writes"] == []
    assert checkpoints_renamed_into_place(last[0]) == ["step_000000020"]
    assert checkpoint_folders(out) == ["step_000000010", "step_000000013", "step_000000020"]

    # Identical on both ranks, and bit for bit what the uninterrupted run has.
    for r in range(RANKS):
        assert_bitwise_equal(
            last_results / f"rank{r}.safetensors", whole_results / "rank0.safetensors"
        )
        assert_bitwise_equal(
            last_results / f"rank{r}.optimizer.safetensors",
            whole_results / "rank0.optimizer.safetensors",
        )
    assert_bitwise_equal(out / "adapters.safetensors", whole_out / "adapters.safetensors")
    # One event file per launch, all rank 0's, reading as the uninterrupted run's curves.
    assert len(event_files(out / "tensorboard")) == 3
    for tag in ("train/learning_rate", "train/loss", "val/loss", "train/trained_tokens"):
        assert read_scalars(out / "tensorboard", tag) == read_scalars(
            whole_out / "tensorboard", tag
        ), tag


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_iteration(whole, tiny, tmp_path):
    whole_out, whole_results, whole_ranks = whole
    out = tmp_path / "out"

    # Rank 1, which writes nothing, gets SIGTERM after iteration 14: both ranks stop before
    # the next batch is drawn, at 14 (just reported), and rank 0 writes a checkpoint there.
    stopped = Launch(tiny, out, tmp_path / "stopped", "--term-rank", "1", "--term-at", "14")
    assert stopped.result(0) is None and stopped.result(1) is None, stopped.report()
    for r in range(RANKS):
        done = [line for line in stopped.log(r).splitlines() if line.startswith("iteration ")]
        assert done[-1] == "iteration 14", stopped.report()
    said = [line for line in stopped.log(0).splitlines() if line.startswith("Stopped by")]
    assert len(said) == 1 and "SIGTERM after iteration 14" in said[0], stopped.report()
    assert "Stopped by" not in stopped.log(1)  # only rank 0 speaks
    assert checkpoint_folders(out) == ["step_000000010", "step_000000014"]

    last_results = tmp_path / "last"
    last = Launch(tiny, out, last_results, "--resume").ok()
    for r, result in enumerate(last):
        assert result["resumed"] == 14
        assert result["reports"] == whole_ranks[r]["reports"][14:]
        assert_bitwise_equal(
            last_results / f"rank{r}.safetensors", whole_results / "rank0.safetensors"
        )
    assert_bitwise_equal(out / "adapters.safetensors", whole_out / "adapters.safetensors")
    for tag in ("train/learning_rate", "train/loss", "val/loss"):
        assert read_scalars(out / "tensorboard", tag) == read_scalars(
            whole_out / "tensorboard", tag
        ), tag
