"""One rank of a LoRA run through mlx-lm's real train() and MlxLmTraining, for mlx.launch.

Run under ``mlx.launch -n 2 --backend ring``: every rank trains the same model on
its share of each batch (mlx-lm's ``iterate_batches`` gives rank ``r`` rows
``r, r + n, ...`` of every batch of ``batch_size``) and the ranks average their
gradients. Training files go to ``--out``, which all ranks share; only rank 0
writes there.

The launcher exits 0 even when a worker fails, so each rank reports on its own,
under ``--results``:

- ``rank{r}.log``: the rank's stdout and stderr, from before mlx is imported;
- ``rank{r}.safetensors``, ``rank{r}.optimizer.safetensors``: its trainable
  parameters and optimizer state at the end;
- ``rank{r}.json``, written last and only on success: the rank and world size,
  the iteration ``resume()`` returned, every loss report mlx-lm made on this
  rank (``steps_per_report=1``: iteration, learning rate, loss, tokens), the
  token rows of every training batch this rank got, and every file-system
  write this process made under ``--out`` (from Python's audit hooks).

``--kill-rank R --kill-at N``: rank ``R`` SIGKILLs itself after iteration ``N``;
``--term-rank R --term-at N``: rank ``R`` sends itself SIGTERM after iteration ``N``.
"""

import argparse
import os
import sys
from pathlib import Path

# Capture this rank's output before anything can fail: the launcher merges the
# ranks' output into one stream.
_parser = argparse.ArgumentParser()
_parser.add_argument("--model", type=Path, required=True)
_parser.add_argument("--data", type=Path, required=True)
_parser.add_argument("--out", type=Path, required=True)
_parser.add_argument("--results", type=Path, required=True)
_parser.add_argument("--iters", type=int, default=20)
_parser.add_argument("--save-every", type=int, default=10)
_parser.add_argument("--batch-size", type=int, default=4)
_parser.add_argument("--until", type=int, default=None)
_parser.add_argument("--resume", action="store_true")
_parser.add_argument("--kill-rank", type=int, default=None)
_parser.add_argument("--kill-at", type=int, default=None)
_parser.add_argument("--term-rank", type=int, default=None)
_parser.add_argument("--term-at", type=int, default=None)
ARGS = _parser.parse_args()
# The test points the launcher's own temporary files at its folder through TMPDIR;
# this rank gets the usual one back (mlx keeps its compiled kernels there).
if "DIST_RUN_TMPDIR" in os.environ:
    _tmpdir = os.environ.pop("DIST_RUN_TMPDIR")
    if _tmpdir:
        os.environ["TMPDIR"] = _tmpdir
    else:
        os.environ.pop("TMPDIR", None)
RANK = int(os.environ.get("MLX_RANK", "0"))
ARGS.results.mkdir(parents=True, exist_ok=True)
_log = os.open(ARGS.results / f"rank{RANK}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(_log, 1)
os.dup2(_log, 2)
sys.stdout = os.fdopen(1, "w", buffering=1)
sys.stderr = os.fdopen(2, "w", buffering=1)

import json  # noqa: E402
import signal  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.tuner.callbacks import TrainingCallback  # noqa: E402
from mlx_lm.tuner.datasets import CacheDataset, load_dataset  # noqa: E402
from mlx_lm.tuner.trainer import TrainingArgs  # noqa: E402
from mlx_lm.tuner.utils import linear_to_lora_layers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_run import SCHEDULE  # noqa: E402

from mlx_sched_callbacks.run.checkpoint import save_optimizer_state  # noqa: E402
from mlx_sched_callbacks.tiny import load_tiny  # noqa: E402
from mlx_sched_callbacks.trainers.mlx_lm import MlxLmTraining  # noqa: E402

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {
    "os.mkdir": 1,
    "os.rename": 2,
    "os.remove": 1,
    "os.rmdir": 1,
    "os.truncate": 1,
    "os.symlink": 2,
    "os.link": 2,
    "shutil.rmtree": 1,
    "shutil.copyfile": 2,
}


def watch_writes(root: Path) -> list:
    """Record ``[event, path...]`` for every Python-level write under ``root``.

    mlx's own C++ writes (``mx.save_safetensors``) are not seen, but the library
    writes checkpoints into a folder it creates (``os.mkdir``) and renames into
    place (``os.rename``), and opens event files with ``open``: those are.
    """
    root = str(root.resolve())
    seen = []

    def inside(path) -> bool:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return False  # a file descriptor
        path = os.path.abspath(os.fspath(path))
        return path == root or path.startswith(root + os.sep)

    def hook(event, args):
        if event == "open":
            path, _, flags = args
            if isinstance(flags, int) and flags & _WRITE_FLAGS and inside(path):
                seen.append([event, os.fspath(path)])
        elif event in _PATH_EVENTS:
            paths = args[: _PATH_EVENTS[event]]
            if any(inside(p) for p in paths):
                seen.append([event, *(os.fspath(p) for p in paths)])

    sys.addaudithook(hook)
    return seen


class Recorder(TrainingCallback):
    """Every loss report mlx-lm makes on this rank; optionally dies after one."""

    def __init__(self, rank: int, kill_rank, kill_at, term_rank=None, term_at=None):
        self.reports = []
        self.die = kill_rank == rank and kill_at is not None
        self.kill_at = kill_at
        self.term_at = term_at if term_rank == rank else None

    def on_train_loss_report(self, info):
        self.reports.append(
            {k: info[k] for k in ("iteration", "learning_rate", "train_loss", "trained_tokens")}
        )
        print(f"iteration {info['iteration']}", flush=True)
        if self.die and info["iteration"] == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if info["iteration"] == self.term_at:
            os.kill(os.getpid(), signal.SIGTERM)


class RecordingTraining(MlxLmTraining):
    """Keeps the token rows of each training batch this rank is handed."""

    batches: list

    def iterate_batches(
        self, dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None
    ):
        inner = super().iterate_batches(dataset, batch_size, max_seq_length, loop, seed, comm_group)
        if not loop:  # evaluate()
            yield from inner
            return
        for tokens, lengths in inner:
            rows = np.array(tokens)
            self.batches.append(
                [row[:length].tolist() for row, (_, length) in zip(rows, np.array(lengths))]
            )
            yield tokens, lengths


def main():
    group = mx.distributed.init()
    if group.rank() != RANK:
        raise RuntimeError(f"MLX_RANK={RANK} but mx.distributed.init() says {group.rank()}.")
    model, tokenizer = load_tiny(ARGS.model)
    np.random.seed(0)
    mx.random.seed(0)
    data = argparse.Namespace(
        data=str(ARGS.data), train=True, test=False, hf_dataset=None, mask_prompt=False
    )
    train_set, valid_set, _ = load_dataset(data, tokenizer)
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 8, "dropout": 0.0, "scale": 20.0})
    training_args = TrainingArgs(
        batch_size=ARGS.batch_size, iters=ARGS.iters, val_batches=2, steps_per_report=1,
        steps_per_eval=25, steps_per_save=ARGS.save_every,
        adapter_file=ARGS.out / "adapters.safetensors",
    )  # fmt: skip
    recorder = Recorder(group.rank(), ARGS.kill_rank, ARGS.kill_at, ARGS.term_rank, ARGS.term_at)
    # From here on every write under --out is the library's (or mlx-lm's).
    writes = watch_writes(ARGS.out)
    training = RecordingTraining(
        model, optim.Adam(learning_rate=0.0), SCHEDULE, training_args,
        CacheDataset(train_set), CacheDataset(valid_set),
        log_dir=ARGS.out / "tensorboard", training_callback=recorder,
    )  # fmt: skip
    training.batches = []
    resumed = training.resume() if ARGS.resume else None
    print(f"rank {group.rank()} resumed at {resumed}", flush=True)
    training.train(until=ARGS.until)

    results, r = ARGS.results, group.rank()
    mx.save_safetensors(
        str(results / f"rank{r}.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    save_optimizer_state(training.optimizer, results / f"rank{r}.optimizer.safetensors")
    result = {
        "rank": r,
        "size": group.size(),
        "resumed": resumed,
        "reports": recorder.reports,
        "batches": training.batches,
        "writes": writes,
    }
    staging = results / f".rank{r}.json.tmp"
    staging.write_text(json.dumps(result))
    os.replace(staging, results / f"rank{r}.json")  # only a rank that got here has one


if __name__ == "__main__":
    main()
