"""mlx-lm: a per-step schedule in the unmodified ``mlx_lm.tuner.trainer.train``, and exact resume.

mlx-lm's trainer has no per-step hook, but it pulls exactly one batch per
iteration from the ``iterate_batches`` it is given. :class:`MlxLmTraining` wraps
that function: between two pulls, one iteration has finished and the next has
not begun, which is where the rate is set, the update counted, validation run
and checkpoints written. It is also the ``TrainingCallback`` that receives
mlx-lm's loss reports, logs them beside the rate and passes them on to another
callback (wandb, say).

A checkpoint holds the adapters, the optimizer state, the callback state and
the data position (numpy's global random state at the start of the current
epoch, the batches drawn since, and its state now), so a resumed run draws the
same batches, sets the same rates and updates the same moments as a run that
was never stopped. mlx-lm's own saves and validation are done here, numbered by
the global iteration, so a resumed run keeps them where an uninterrupted run
has them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner import trainer as mlx_lm_trainer
from mlx_lm.tuner.callbacks import TrainingCallback

from . import schedules
from ._files import read_json, write_bytes_atomic
from .callback import LRScheduleCallback
from .checkpoint import (
    check_fit,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    load_optimizer_state,
    prune_checkpoints,
    read_arrays,
    save_optimizer_state,
    write_checkpoint,
)

TRAINER_STATE = "trainer.json"
TRAINER_FORMAT = "mlx_sched_callbacks.MlxLmTraining"

# mlx-lm report fields and the TensorBoard tags they go to.
TRAIN_TAGS = {
    "train_loss": "train/loss",
    "iterations_per_second": "train/iterations_per_second",
    "tokens_per_second": "train/tokens_per_second",
    "trained_tokens": "train/trained_tokens",
    "peak_memory": "train/peak_memory_gb",
}


_TRAINER_FIELDS = {
    "iteration": int,
    "iters": int,
    "grad_accumulation_steps": int,
    "batch_size": int,
    "trained_tokens": (int, float),
    "epoch_position": int,
    "numpy_epoch_start": list,
    "numpy_now": list,
    "mx_random_seed": int,
}


def _validate_trainer_state(state) -> dict:
    where = f"trainer state ({TRAINER_STATE})"
    if not isinstance(state, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(state).__name__}.")
    if state.get("format") != TRAINER_FORMAT or state.get("version") != 1:
        raise ValueError(
            f"{where} has format {state.get('format')!r} version {state.get('version')!r}, "
            f"expected {TRAINER_FORMAT!r} version 1."
        )
    missing = sorted(set(_TRAINER_FIELDS) - set(state))
    if missing:
        raise ValueError(f"{where} is missing field(s) {missing}.")
    for name, kind in _TRAINER_FIELDS.items():
        if isinstance(state[name], bool) or not isinstance(state[name], kind):
            raise ValueError(f"{where}: {name} has the wrong type: {state[name]!r}.")
    return state


def load_adapters_checked(model, path: str | os.PathLike) -> None:
    """Load trainable weights, refusing names or shapes this model does not have.

    (``model.load_weights(..., strict=False)`` would skip the shape check.)
    """
    path = Path(path)
    loaded = read_arrays(path, "adapters")
    expected = dict(tree_flatten(model.trainable_parameters()))
    check_fit(loaded, expected, f"adapters {path}", "this model")
    model.load_weights(list(loaded.items()), strict=False)


def _numpy_state_to_json(state) -> list:
    kind, keys, position, has_gauss, cached = state
    return [kind, [int(k) for k in keys], int(position), int(has_gauss), float(cached)]


def _numpy_state_from_json(state) -> tuple:
    kind, keys, position, has_gauss, cached = state
    return (kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached)


class MlxLmTraining(TrainingCallback):
    """Train with mlx-lm's ``train()`` under a schedule, with logs and exact resume.

    ``args`` is mlx-lm's ``TrainingArgs``: ``iters`` is the length of the whole
    run, and ``steps_per_save`` sets how often a checkpoint is written to
    ``checkpoint_dir`` (default: ``checkpoints/`` beside ``args.adapter_file``).
    The schedule counts optimizer updates: with ``grad_accumulation_steps = k``
    an update happens every ``k`` iterations, and every iteration of a group
    sees the rate of the update it contributes to.

    TensorBoard's x-axis is the optimizer update: the rate at the update count
    after its update (1-based), losses at the update their iteration belongs to
    (``ceil(iteration / k)``; with ``k = 1`` that is the iteration, as mlx-lm's
    console prints it).

    Typical use::

        training = MlxLmTraining(model, optimizer, schedule, args, train_set, val_set,
                                 log_dir="runs/lora")
        training.resume()   # no-op without a checkpoint
        training.train()    # calls mlx_lm.tuner.trainer.train
    """

    def __init__(
        self,
        model,
        optimizer,
        schedule: schedules.Schedule,
        args: mlx_lm_trainer.TrainingArgs,
        train_dataset,
        val_dataset=None,
        *,
        log_dir: str | os.PathLike | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        keep_checkpoints: int = 3,
        loss=mlx_lm_trainer.default_loss,
        iterate_batches=mlx_lm_trainer.iterate_batches,
        training_callback: TrainingCallback | None = None,
        log_every: int = 1,
        flush_secs: float = 10.0,
        hyperparameters: dict | None = None,
        names: list[str] | None = None,
    ):
        k = args.grad_accumulation_steps
        if args.steps_per_save % k:
            raise ValueError(
                f"steps_per_save must be a multiple of grad_accumulation_steps={k} (a "
                "checkpoint inside an accumulation group would lose its gradients), "
                f"got {args.steps_per_save}."
            )
        if keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {keep_checkpoints}.")
        self.model = model
        self.optimizer = optimizer
        self.args = args
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.loss = loss
        self.inner_iterate_batches = iterate_batches
        self.next_callback = training_callback
        self.keep_checkpoints = keep_checkpoints
        self.rank = mx.distributed.init().rank()
        adapter_dir = Path(args.adapter_file).parent
        self.checkpoint_dir = Path(checkpoint_dir or adapter_dir / "checkpoints")
        self.callback = LRScheduleCallback(
            schedule,
            optimizer,
            log_dir if self.rank == 0 else None,  # one writer for the whole run
            log_every=log_every,
            flush_secs=flush_secs,
            hyperparameters=hyperparameters,
            names=names,
        )
        self.iteration = 0  # global iterations finished
        self._start_iteration = 0  # where the current train() call began
        self._stop = args.iters  # where it ends
        self._pulled = 0  # global iterations whose batch was handed to train()
        self._tokens_before = 0  # trained tokens reported before this train() call
        self._last_trained_tokens = 0
        self._epoch_start_state = None
        self._epoch_position = 0
        self._resume_data = None

    # -- resume ------------------------------------------------------------

    def resume(
        self, checkpoint: str | os.PathLike | None = None, *, allow_schedule_change=False
    ) -> int:
        """Continue from ``checkpoint``, or from the newest complete one; return the iteration.

        Without a complete checkpoint this is a fresh start (iteration 0); incomplete
        ones are skipped with a message saying why. A checkpoint that does not fit
        this run (another model, batch size, schedule...) is an error naming the file.
        Call it before :meth:`train`. In a distributed run every rank calls it and
        reads rank 0's checkpoint folder, which must be on a file system they share.
        """
        if checkpoint is not None:
            folder = Path(checkpoint)
            if (problem := checkpoint_problem(folder)) is not None:
                raise ValueError(f"cannot resume from {folder}: {problem}.")
        else:
            folder = latest_checkpoint(self.checkpoint_dir)
            for _, newer in list_checkpoints(self.checkpoint_dir):
                if (folder is None or newer.name > folder.name) and self.rank == 0:
                    print(f"Skipping {newer}: {checkpoint_problem(newer)}", flush=True)
        state = None
        if folder is not None:
            state = _validate_trainer_state(read_json(folder / TRAINER_STATE, "trainer state"))
        self._check_ranks_agree(0 if state is None else state["iteration"])
        if state is None:
            return 0
        for name in ("grad_accumulation_steps", "batch_size"):
            if state[name] != getattr(self.args, name):
                raise ValueError(
                    f"{folder}: the checkpoint was trained with {name}={state[name]}, "
                    f"this run has {getattr(self.args, name)}; the data order would differ."
                )
        load_adapters_checked(self.model, folder / "adapters.safetensors")
        load_optimizer_state(
            self.optimizer,
            folder / "optimizer.safetensors",
            self.model.trainable_parameters(),
        )
        self.callback.load(folder / "callback.json", allow_schedule_change=allow_schedule_change)
        self.iteration = self._pulled = state["iteration"]
        # A run killed after the checkpoint and before mlx-lm's adapter files were
        # written would lose them for good: write them again from the checkpoint.
        if self.rank == 0:
            self._write_adapter_files(folder)
        self._last_trained_tokens = state["trained_tokens"]
        self._resume_data = state
        mx.random.seed(state["mx_random_seed"])
        return self.iteration

    def _check_ranks_agree(self, iteration: int) -> None:
        # Every rank reads rank 0's checkpoints: a rank that finds another one (or
        # none) would train another model, and the ranks' collectives would block
        # each other for ever. Fail on every rank instead, before training.
        world = mx.distributed.init()
        if world.size() == 1:
            return
        mine = mx.array([iteration], dtype=mx.int64)
        seen = mx.distributed.all_gather(mine, group=world, stream=mx.cpu).tolist()
        if len(set(seen)) > 1:
            raise RuntimeError(
                f"rank {world.rank()}: the ranks would resume at iterations {seen} (by rank); "
                f"every rank must read rank 0's checkpoints in {self.checkpoint_dir} "
                "(a file system all ranks share)."
            )

    # -- the run -----------------------------------------------------------

    def train(self, until: int | None = None) -> None:
        """Run mlx-lm's ``train()`` from the current iteration to ``until`` (default: ``iters``).

        Stopping at ``until`` writes a checkpoint there; a later ``train()`` (in this
        process, or in another after :meth:`resume`) continues exactly.
        """
        stop = self.args.iters if until is None else min(until, self.args.iters)
        if stop % self.args.grad_accumulation_steps and stop != self.args.iters:
            raise ValueError(
                "until must be a multiple of grad_accumulation_steps="
                f"{self.args.grad_accumulation_steps}, got {until}."
            )
        remaining = stop - self.iteration
        if remaining <= 0:
            self.callback.close()
            return
        local_args = dataclasses.replace(
            self.args,
            iters=remaining,
            # Saves are numbered by the global iteration here; mlx-lm would restart at 1.
            steps_per_save=remaining + 1,
        )
        self._start_iteration, self._stop = self.iteration, stop
        # train() counts its tokens from 0 in every call.
        self._tokens_before = self._last_trained_tokens
        self._set_aside_later_checkpoints()
        self.optimizer.init(self.model.trainable_parameters())
        with self.callback:
            mlx_lm_trainer.train(
                model=self.model,
                optimizer=self.optimizer,
                train_dataset=self.train_dataset,
                val_dataset=None,  # validation runs here, on the global schedule
                args=local_args,
                loss=self.loss,
                iterate_batches=self.iterate_batches,
                training_callback=self,
            )
            self._finish_iteration()
        # A later train() call picks up the data stream mid-epoch, as after a resume.
        self._resume_data = self.trainer_state()

    def _set_aside_later_checkpoints(self) -> None:
        # Checkpoints past the point this run starts from belong to an earlier run
        # (a fresh start in a used folder): left in place, a later resume would pick
        # them up. Moved aside, not deleted.
        later = [f for step, f in list_checkpoints(self.checkpoint_dir) if step > self.iteration]
        if not later or self.rank != 0:
            return
        aside = self.checkpoint_dir / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        aside.mkdir()
        for folder in later:
            os.replace(folder, aside / folder.name)
        print(
            f"Moved {len(later)} checkpoint(s) of an earlier run past iteration "
            f"{self.iteration} to {aside}",
            flush=True,
        )

    def iterate_batches(
        self, dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None
    ):
        """The per-step hook: drop-in for mlx-lm's ``iterate_batches``."""
        batches = dict(dataset=dataset, batch_size=batch_size, max_seq_length=max_seq_length)
        if not loop:  # evaluate() draws its batches through here too
            yield from self.inner_iterate_batches(**batches, seed=seed, comm_group=comm_group)
            return
        if seed is not None:
            np.random.seed(seed)
        k = self.args.grad_accumulation_steps
        for batch in self._training_batches(batches, comm_group):
            self._pulled += 1
            # Validation first: a plateau phase it feeds may lower this very update's rate.
            self._maybe_evaluate(self._pulled)
            if (self._pulled - 1) % k == 0:
                self.callback.on_step_begin()
            yield batch
            self._finish_iteration()

    def _training_batches(self, batches, comm_group):
        # One loop=False pass per epoch draws the same permutations, at the same
        # moments, as mlx-lm's loop=True, and shows where each epoch starts.
        resume, self._resume_data = self._resume_data, None
        while True:
            if resume is not None:
                np.random.set_state(_numpy_state_from_json(resume["numpy_epoch_start"]))
            self._epoch_start_state = np.random.get_state()
            self._epoch_position = 0
            epoch = iter(self.inner_iterate_batches(**batches, comm_group=comm_group))
            if resume is not None:
                for _ in range(resume["epoch_position"]):
                    next(epoch)
                self._epoch_position = resume["epoch_position"]
                np.random.set_state(_numpy_state_from_json(resume["numpy_now"]))
                resume = None
            for batch in epoch:
                self._epoch_position += 1
                yield batch

    def _finish_iteration(self) -> None:
        """Count the iteration whose step just ran, once, and checkpoint when due."""
        if self.iteration == self._pulled:
            return
        self.iteration = self._pulled
        if self.iteration % self.args.grad_accumulation_steps == 0:
            self.callback.on_step_end()
        if self.iteration % self.args.steps_per_save == 0 or self.iteration == self._stop:
            self.save_checkpoint()

    def _x(self, iteration: int) -> int:
        return math.ceil(iteration / self.args.grad_accumulation_steps)

    def _maybe_evaluate(self, iteration: int) -> None:
        args = self.args
        due = iteration == 1 or iteration % args.steps_per_eval == 0 or iteration == args.iters
        if not self.val_dataset or not due:
            return
        tic = time.perf_counter()
        val_loss = mlx_lm_trainer.evaluate(
            model=self.model,
            dataset=self.val_dataset,
            loss=self.loss,
            batch_size=args.batch_size,
            num_batches=args.val_batches,
            max_seq_length=args.max_seq_length,
            iterate_batches=self.inner_iterate_batches,
        )
        self.model.train()
        val_time = time.perf_counter() - tic
        if self.rank == 0:
            print(
                f"Iter {iteration}: Val loss {val_loss:.3f}, Val took {val_time:.3f}s", flush=True
            )
        self.callback.log_scalar("val/loss", val_loss, self._x(iteration))
        self.callback.on_validation(val_loss)  # feeds reduce_on_plateau phases
        if self.next_callback is not None:
            self.next_callback.on_val_loss_report(
                {"iteration": iteration - 1, "val_loss": val_loss, "val_time": val_time}
            )

    # -- mlx-lm's TrainingCallback -----------------------------------------

    def on_train_loss_report(self, train_info: dict) -> None:
        # train() numbers its iterations from 1 in every process; ours are global.
        info = dict(train_info)
        info["iteration"] = self._start_iteration + train_info["iteration"]
        info["trained_tokens"] = self._tokens_before + train_info["trained_tokens"]
        self._last_trained_tokens = info["trained_tokens"]
        x = self._x(info["iteration"])
        for field, tag in TRAIN_TAGS.items():
            if field in info:
                self.callback.log_scalar(tag, info[field], x)
        # The report comes after the step: the last iteration ends here, as no batch follows.
        self._finish_iteration()
        if self.next_callback is not None:
            self.next_callback.on_train_loss_report(info)

    def on_val_loss_report(self, val_info: dict) -> None:
        # Validation runs in _maybe_evaluate; train() is given no validation set.
        if self.next_callback is not None:
            self.next_callback.on_val_loss_report(val_info)

    # -- checkpoints -------------------------------------------------------

    def trainer_state(self) -> dict:
        """Where the run is: iteration, data position, and what must match on resume."""
        return {
            "format": TRAINER_FORMAT,
            "version": 1,
            "iteration": self.iteration,
            "iters": self.args.iters,
            "grad_accumulation_steps": self.args.grad_accumulation_steps,
            "batch_size": self.args.batch_size,
            "trained_tokens": self._last_trained_tokens,
            "epoch_position": self._epoch_position,
            "numpy_epoch_start": _numpy_state_to_json(self._epoch_start_state),
            "numpy_now": _numpy_state_to_json(np.random.get_state()),
            "mx_random_seed": _mx_seed(self.iteration),
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current iteration; only rank 0 writes files."""
        # mlx's random state cannot be read back (for LoRA dropout, say), so every
        # run, resumed or not, reseeds it at each checkpoint from the iteration.
        mx_seed = _mx_seed(self.iteration)
        if self.rank != 0:
            mx.random.seed(mx_seed)
            return None
        adapters = dict(tree_flatten(self.model.trainable_parameters()))
        state = self.trainer_state()
        folder = write_checkpoint(
            self.checkpoint_dir,
            self.iteration,
            {
                "adapters.safetensors": lambda p: mx.save_safetensors(str(p), adapters),
                "optimizer.safetensors": lambda p: save_optimizer_state(self.optimizer, p),
                "callback.json": self.callback.save,
                TRAINER_STATE: lambda p: p.write_text(json.dumps(state)),
            },
        )
        mx.random.seed(mx_seed)
        self._write_adapter_files(folder)
        prune_checkpoints(self.checkpoint_dir, self.keep_checkpoints)
        return folder

    def _write_adapter_files(self, folder: Path) -> None:
        """mlx-lm's own adapter files for ``folder``, numbered by the global iteration."""
        adapter_file = Path(self.args.adapter_file)
        data = (folder / "adapters.safetensors").read_bytes()
        write_bytes_atomic(adapter_file, data)
        if self.iteration % self.args.steps_per_save == 0:
            numbered = adapter_file.parent / f"{self.iteration:07d}_adapters.safetensors"
            write_bytes_atomic(numbered, data)


def _mx_seed(iteration: int) -> int:
    return int(np.random.default_rng(iteration).integers(2**31))
