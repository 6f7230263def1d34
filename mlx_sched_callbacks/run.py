"""What every trainer shares: counting, the rate at update boundaries, checkpoints and resume.

A trainer of the mlx-lm family runs its own loop and has no per-step hook, but it
pulls one batch per iteration from a function it is given (or that its module
calls). An adapter wraps that function: it calls :meth:`TrainingRun.before_next_batch`
when the trainer asks for a batch, before drawing it, and
:meth:`TrainingRun.begin_iteration` before handing it over; everything else lives here:

* iterations and optimizer updates are counted on the run's global count, and
  the schedule's rate is set at the start of every accumulation group;
* validation and the trainer's numbered adapter saves happen on that count, so a
  resumed run keeps them where an uninterrupted run has them;
* a checkpoint (adapters, optimizer state, callback state, the trainer's data
  position and mlx's random key on every rank) is written
  every ``steps_per_save`` iterations, at the end, and at a polite stop (SIGINT,
  SIGTERM); only rank 0 writes. State is carried, never reconstructed: nothing is
  reseeded, so a checkpoint changes nothing in the run that writes it;
* the trainer is called in segments that end on its report grid (and at
  checkpoints off that grid), so that after any resume its reports land on the
  iterations of an uninterrupted run and the trained tokens are known at every
  checkpoint; a polite stop shortens the call under way so that the trainer
  reports the iterations it ran before it stops;
* ``resume()`` verifies the newest checkpoint (checksums, fields against each
  other and against this run), skips a damaged one, and restores every part;
* the trainer's reports go to TensorBoard beside the rate, on the update axis,
  and on to another callback with global iteration numbers;
* one process at a time writes a run folder.

An adapter subclasses :class:`TrainingRun` and says only what is particular to
its trainer: how to run it (:meth:`run_trainer`), how its data position is
captured and replayed (:meth:`data_state`, :meth:`restore_data`), how to
validate (:meth:`evaluate`) and how its reports map to tags (``report_tags``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from . import schedules
from ._files import read_json, write_bytes_atomic
from .callback import LRScheduleCallback
from .checkpoint import (
    check_fit,
    checkpoint_problem,
    list_checkpoints,
    load_optimizer_state,
    prune_checkpoints,
    read_arrays,
    save_optimizer_state,
    write_checkpoint,
)
from .lock import hold_run_folders
from .stopping import DEFAULT_SIGNALS, StopSignals, TrainingStopped, signal_name

TRAINER_STATE = "trainer.json"

# The report fields of mlx-lm's train() (and trainers shaped like it) and their tags.
MLX_LM_REPORT_TAGS = {
    "train_loss": "train/loss",
    "iterations_per_second": "train/iterations_per_second",
    "tokens_per_second": "train/tokens_per_second",
    "trained_tokens": "train/trained_tokens",
    "peak_memory": "train/peak_memory_gb",
}

TRAINER_STATE_VERSION = 2  # version 1 reseeded mlx from the iteration; still read

# Fields every trainer state holds; adapters add their data position's.
_FIELDS = {
    "iteration": int,
    "iters": int,
    "grad_accumulation_steps": int,
    "batch_size": int,
    "trained_tokens": (int, float),
    "mx_random_keys": list,
}


class _Stop(BaseException):
    """Raised through the trainer's loop to leave it at an update boundary.

    A BaseException, so a trainer's ``except Exception`` cannot swallow it.
    """


def numpy_state_to_json(state) -> list:
    kind, keys, position, has_gauss, cached = state
    return [kind, [int(k) for k in keys], int(position), int(has_gauss), float(cached)]


def numpy_state_from_json(state, where: str) -> tuple:
    """numpy's global random state from its JSON form, refusing anything numpy would not take."""
    try:
        kind, keys, position, has_gauss, cached = state
        parsed = (kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached)
        ok = (
            kind == "MT19937"
            and len(keys) == 624
            and all(isinstance(k, int) and 0 <= k < 2**32 for k in keys)
            and isinstance(position, int)
            and 0 <= position <= 624
        )
        if ok:
            np.random.RandomState().set_state(parsed)  # numpy's own checks
            return parsed
    except (TypeError, ValueError, OverflowError):
        pass
    raise ValueError(f"{where} is not a valid numpy MT19937 random state.")


def _mx_seed(iteration: int) -> int:
    """The seed a version 1 checkpoint reseeded mlx with (read, never written)."""
    return int(np.random.default_rng(iteration).integers(2**31))


def mx_random_key() -> list[int]:
    """mlx's current random key as ``[hi, lo]``; :func:`set_mx_random_key` sets it again."""
    return [int(word) for word in mx.random.state[0].tolist()]


def set_mx_random_key(key) -> None:
    """Make ``key`` (``[hi, lo]``) mlx's random key: the next draws are the saved run's."""
    hi, lo = key
    mx.random.seed((hi << 32) | lo)


def _check_random_keys(keys, where: str) -> None:
    words = [word for key in keys for word in (key if isinstance(key, list) else [None])]
    pairs = all(isinstance(key, list) and len(key) == 2 for key in keys)
    if not keys or not pairs or not all(_is_uint32(word) for word in words):
        raise ValueError(f"{where}: mx_random_keys must be a list of [hi, lo] uint32 pairs.")


def _is_uint32(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


def load_adapters_checked(model, path: str | os.PathLike) -> None:
    """Load trainable weights, refusing names, shapes or dtypes this model does not have.

    (``model.load_weights(..., strict=False)`` would skip the checks.)
    """
    path = Path(path)
    loaded = read_arrays(path, "adapters")
    expected = dict(tree_flatten(model.trainable_parameters()))
    check_fit(loaded, expected, f"adapters {path}", "this model")
    model.load_weights(list(loaded.items()), strict=False)


class NumpyEpochs:
    """The data position of trainers that shuffle with numpy's global random state.

    mlx-lm and mlx-lm-lora draw a permutation per epoch from ``np.random``: the
    position is numpy's state at the start of the current epoch, the batches drawn
    since, and its state now. Mixed into a :class:`TrainingRun` adapter before it.
    """

    data_fields = {"epoch_position": int, "numpy_epoch_start": list, "numpy_now": list}
    _epoch_start_state = None
    _epoch_position = 0

    def numpy_epochs(self, new_epoch, per_epoch: int | None = None):
        """Batches from epoch after epoch of ``new_epoch()``, after replaying a saved position.

        An epoch ends when its generator does, or after ``per_epoch`` batches (a
        trainer that calls its batch function afresh each iteration and takes one
        batch has epochs of 1).
        """
        resume, self._resume_data = self._resume_data, None
        epoch = None
        if resume is not None:
            position = resume["epoch_position"]
            if position and (per_epoch is None or position < per_epoch):
                np.random.set_state(numpy_state_from_json(resume["numpy_epoch_start"], "data"))
                self._epoch_start_state, epoch = np.random.get_state(), new_epoch()
                for _ in range(position):
                    next(epoch)
                self._epoch_position = position
            np.random.set_state(numpy_state_from_json(resume["numpy_now"], "data"))
        while True:
            if epoch is None or (per_epoch is not None and self._epoch_position >= per_epoch):
                self._epoch_start_state, epoch = np.random.get_state(), new_epoch()
                self._epoch_position = 0
            try:
                batch = next(epoch)
            except StopIteration:
                epoch = None
                continue
            self._epoch_position += 1
            yield batch

    def data_state(self) -> dict:
        return {
            "epoch_position": self._epoch_position,
            "numpy_epoch_start": numpy_state_to_json(self._epoch_start_state),
            "numpy_now": numpy_state_to_json(np.random.get_state()),
        }

    def check_data_state(self, state: dict, where: str) -> None:
        for name in ("numpy_epoch_start", "numpy_now"):
            numpy_state_from_json(state[name], f"{where}: {name}")
        per_epoch = len(self.train_dataset) // self.args.batch_size
        if not 0 <= state["epoch_position"] <= per_epoch:
            raise ValueError(
                f"{where}: epoch_position {state['epoch_position']} is outside an epoch of "
                f"this data (0..{per_epoch} batches)."
            )


@contextmanager
def global_progress(run: TrainingRun, module):
    """A trainer module's tqdm bar and ``Iter N`` lines, on the run's global count.

    The trainer counts from 1 in every call: its bar gets the whole run as total
    and starts where the call does, and the iteration and trained tokens in the
    lines it writes through ``tqdm.write`` are shifted to the run's.
    """
    base = getattr(module, "tqdm", None)
    if not isinstance(base, type):
        yield
        return
    start, tokens = run._start_iteration, run._tokens_before

    class GlobalProgress(base):
        def __init__(self, iterable=None, *args, **kwargs):
            if isinstance(iterable, range) and iterable.start == 1:  # the training loop
                kwargs.update(initial=start, total=run.args.iters)
            super().__init__(iterable, *args, **kwargs)

        @classmethod
        def write(cls, s, *args, **kwargs):
            s = re.sub(r"^(\s*)Iter (\d+)", lambda m: f"{m[1]}Iter {int(m[2]) + start}", s)
            s = re.sub(r"trained_tok (\d+)", lambda m: f"trained_tok {int(m[1]) + tokens}", s)
            base.write(s, *args, **kwargs)

    with replaced(module, "tqdm", GlobalProgress):
        yield


@contextmanager
def replaced(owner, name: str, value):
    """``owner.name = value`` for the duration: how an adapter reaches into a trainer."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


class TrainingRun:
    """One training run of a trainer that pulls one batch per iteration, under a schedule.

    ``args`` carries mlx-lm's ``TrainingArgs`` fields: ``iters`` (the whole run),
    ``batch_size``, ``grad_accumulation_steps``, ``steps_per_report``,
    ``steps_per_save``, ``steps_per_eval``, ``val_batches`` and ``adapter_file``.
    The schedule counts optimizer updates; TensorBoard's x-axis is the update
    (``ceil(iteration / k)`` for a report of an iteration).
    """

    #: trainer.json's format name; the data fields an adapter adds, with their types.
    format = "mlx_sched_callbacks.TrainingRun"
    data_fields: dict = {}
    #: report field -> TensorBoard tag, for the trainer's loss reports.
    report_tags: dict = {}
    #: whether the trainer applies a last, incomplete accumulation group (mlx-lm does not)
    applies_leftover_group = False

    def __init__(
        self,
        model,
        optimizer,
        schedule: schedules.Schedule,
        args,
        train_dataset,
        val_dataset=None,
        *,
        log_dir: str | os.PathLike | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        keep_checkpoints: int = 3,
        training_callback=None,
        log_every: int = 1,
        flush_secs: float = 10.0,
        hyperparameters: dict | None = None,
        names: list[str] | None = None,
        stop_signals=DEFAULT_SIGNALS,
        resume_command: str | None = None,
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
        self.next_callback = training_callback
        self.keep_checkpoints = keep_checkpoints
        self.stop_signals = tuple(stop_signals)
        self.resume_command = resume_command
        self.rank = mx.distributed.init().rank()
        self.adapter_dir = Path(args.adapter_file).parent
        self.checkpoint_dir = Path(checkpoint_dir or self.adapter_dir / "checkpoints")
        self.log_dir = None if log_dir is None else Path(log_dir)
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
        self._start_iteration = 0  # where the trainer call under way began
        self._segment_stop = 0  # where it ends
        self._stop = args.iters  # where the train() call ends
        self._stop_at = None  # where a polite stop ends the run, once one is agreed
        self._call_args = None  # the trainer's own args for the call under way
        self._pulled = 0  # global iterations whose batch was handed to the trainer
        self._tokens_before = 0  # trained tokens reported before the call under way
        self._last_trained_tokens = 0
        self._saved_at = None  # the iteration of the last checkpoint written
        self._signals: StopSignals | None = None
        self._failure: str | None = None
        self._resume_data: dict | None = None  # the data position to replay, once

    # -- what an adapter says ------------------------------------------------

    def run_trainer(self, iters: int) -> None:
        """Run the trainer for ``iters`` iterations with the hook in place.

        The trainer's own arguments for the call come from :meth:`call_args`.
        """
        raise NotImplementedError

    def call_args(self, args, iters: int, **changes):
        """The trainer's own ``args`` (a dataclass) for one call of ``iters`` iterations.

        Saves are numbered by the global iteration here; the trainer would restart at 1.
        The object is kept: a polite stop lowers its ``iters``, which these trainers
        read at every iteration, so that the trainer reports the iterations it ran.
        """
        self._call_args = dataclasses.replace(
            args, iters=iters, steps_per_save=iters + 1, **changes
        )
        return self._call_args

    def data_state(self) -> dict:
        """The data position, as JSON fields of trainer.json (``data_fields``)."""
        return {}

    def restore_data(self, state: dict) -> None:
        """Replay the data position saved in ``state`` before the next batch is drawn."""
        self._resume_data = state

    def check_data_state(self, state: dict, where: str) -> None:
        """Refuse a data position that cannot belong to this run's data."""

    def evaluate(self) -> float:
        """The validation loss on ``val_dataset``."""
        raise NotImplementedError

    # -- resume ------------------------------------------------------------

    def _hold_folders(self) -> None:
        # The adapter folder stands for the run; a checkpoint or log folder elsewhere
        # is held as well.
        if self.rank != 0:
            return
        run = self.adapter_dir.resolve()
        elsewhere = [
            folder
            for folder in (self.checkpoint_dir, self.log_dir)
            if folder is not None and not folder.resolve().is_relative_to(run)
        ]
        hold_run_folders(self.adapter_dir, *elsewhere)

    def resume(
        self, checkpoint: str | os.PathLike | None = None, *, allow_schedule_change=False
    ) -> int:
        """Continue from ``checkpoint``, or from the newest sound one; return the iteration.

        Without a sound checkpoint this is a fresh start (iteration 0), said so on
        stdout; incomplete or damaged ones are skipped with a message naming the
        file and the problem. A checkpoint named explicitly must be sound. One that
        does not fit this run (another model, batch size, schedule...) is an error
        naming the file. Call it before :meth:`train`. In a distributed run every
        rank calls it and reads rank 0's checkpoint folder, which must be on a file
        system they share.
        """
        self._hold_folders()
        if checkpoint is not None:
            folder = Path(checkpoint)
            state = self._read_sound_checkpoint(folder)
            if isinstance(state, str):
                raise ValueError(f"cannot resume from {folder}: {state}.")
        else:
            folder, state = self._latest_sound_checkpoint()
        self._check_ranks_agree(0 if state is None else state["iteration"])
        if state is None:
            self._say(f"No complete checkpoint in {self.checkpoint_dir}; starting at 1")
            return 0
        self._check_fits_this_run(state, folder)
        load_adapters_checked(self.model, folder / "adapters.safetensors")
        load_optimizer_state(
            self.optimizer,
            folder / "optimizer.safetensors",
            self.model.trainable_parameters(),
        )
        self.callback.load(folder / "callback.json", allow_schedule_change=allow_schedule_change)
        self.iteration = self._pulled = state["iteration"]
        # A run killed after the checkpoint and before the trainer's adapter files
        # were written would lose them for good: write them again from the checkpoint.
        if self.rank == 0:
            self._write_adapter_files(folder)
        self._last_trained_tokens = state["trained_tokens"]
        self._saved_at = self.iteration
        self.restore_data(state)
        self._restore_random(state)
        self._say(f"Resuming at iteration {self.iteration} from {folder}")
        return self.iteration

    def _restore_random(self, state: dict) -> None:
        if "mx_random_seed" in state:  # version 1
            mx.random.seed(state["mx_random_seed"])
            return
        keys = state["mx_random_keys"]
        set_mx_random_key(keys[self.rank] if len(keys) > 1 else keys[0])

    def _say(self, line: str) -> None:
        if self.rank == 0:
            print(line, flush=True)

    def _latest_sound_checkpoint(self) -> tuple[Path | None, dict | None]:
        """The newest checkpoint whose files verify, with its state; what is skipped is said."""
        for _, folder in reversed(list_checkpoints(self.checkpoint_dir)):
            found = self._read_sound_checkpoint(folder)
            if not isinstance(found, str):
                return folder, found
            self._say(f"Skipping {folder}: {found}")
        return None, None

    def _read_sound_checkpoint(self, folder: Path) -> dict | str:
        """The trainer state of ``folder`` if every file verifies, else what is wrong."""
        problem = checkpoint_problem(folder, verify=True)
        if problem is not None:
            return problem
        where = folder / TRAINER_STATE
        try:
            state = read_json(where, "trainer state")
            return self._validate_state(state, where)
        except (ValueError, OSError) as error:
            return str(error).rstrip(".")

    def _validate_state(self, state, where: Path) -> dict:
        """Fields present, of their types, and consistent with each other."""
        if not isinstance(state, dict):
            raise ValueError(f"{where} must be a JSON object, got {type(state).__name__}.")
        version = state.get("version")
        if state.get("format") != self.format or version not in (1, TRAINER_STATE_VERSION):
            raise ValueError(
                f"{where} has format {state.get('format')!r} version {version!r}, "
                f"expected {self.format!r} version 1 or {TRAINER_STATE_VERSION}."
            )
        fields = {**_FIELDS, **self.data_fields}
        if version == 1:
            del fields["mx_random_keys"]
            fields["mx_random_seed"] = int
        missing = sorted(set(fields) - set(state))
        if missing:
            raise ValueError(f"{where} is missing field(s) {missing}.")
        for name, kind in fields.items():
            if isinstance(state[name], bool) or not isinstance(state[name], kind):
                raise ValueError(f"{where}: {name} has the wrong type: {state[name]!r}.")
        iteration, iters, k = state["iteration"], state["iters"], state["grad_accumulation_steps"]
        if not (1 <= k <= 2**31 and 1 <= iters <= 2**53 and 0 < iteration <= iters):
            raise ValueError(
                f"{where}: iteration {iteration}, iters {iters} and grad_accumulation_steps "
                f"{k} do not fit together (1 <= iteration <= iters, k >= 1)."
            )
        if iteration % k and iteration != iters:
            raise ValueError(
                f"{where}: iteration {iteration} is inside an accumulation group of {k}; "
                "checkpoints are written at update boundaries."
            )
        if not 1 <= state["batch_size"] <= 2**31 or not 0 <= state["trained_tokens"] < 2**63:
            raise ValueError(f"{where}: batch_size or trained_tokens is out of range.")
        if version == 1 and state["mx_random_seed"] != _mx_seed(iteration):
            raise ValueError(f"{where}: mx_random_seed does not belong to iteration {iteration}.")
        if version != 1:
            _check_random_keys(state["mx_random_keys"], str(where))
            world = mx.distributed.init().size()
            if len(state["mx_random_keys"]) not in (1, world):
                raise ValueError(
                    f"{where}: mx_random_keys holds the keys of "
                    f"{len(state['mx_random_keys'])} ranks, this run has {world}."
                )
        updates = iteration // k
        if self.applies_leftover_group and iteration % k:
            updates += 1
        callback_step = read_json(where.parent / "callback.json", "callback state").get("step")
        if callback_step != updates:
            raise ValueError(
                f"{where.parent / 'callback.json'}: step {callback_step!r} does not match "
                f"iteration {iteration} with grad_accumulation_steps {k} (expected {updates})."
            )
        self.check_data_state(state, str(where))
        return state

    def _check_fits_this_run(self, state: dict, folder: Path) -> None:
        for name in ("grad_accumulation_steps", "batch_size"):
            if state[name] != getattr(self.args, name):
                raise ValueError(
                    f"{folder}: the checkpoint was trained with {name}={state[name]}, "
                    f"this run has {getattr(self.args, name)}; the data order would differ."
                )
        iteration, k = state["iteration"], state["grad_accumulation_steps"]
        if iteration > self.args.iters:
            raise ValueError(
                f"{folder}: the checkpoint is at iteration {iteration}, past this "
                f"run's iters={self.args.iters}; raise --iters to train on from it."
            )
        if iteration == state["iters"] < self.args.iters and iteration % k:
            ended = (
                "was applied as a smaller update"
                if self.applies_leftover_group
                else "was never applied"
            )
            raise ValueError(
                f"{folder}: the run ended at iteration {iteration}, inside an accumulation "
                f"group of {k} (its last {iteration % k} iteration(s) {ended}), so a run of "
                f"iters={self.args.iters} cannot continue it exactly; train iters="
                f"{self.args.iters} from the start instead (a run can be extended when its "
                f"iters is a multiple of {k})."
            )

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
        """Run the trainer from the current iteration to ``until`` (default: ``iters``).

        Stopping at ``until`` writes a checkpoint there; a later ``train()`` (in this
        process, or in another after :meth:`resume`) continues exactly. SIGINT or
        SIGTERM stop it at the end of the accumulation group under way, with a
        checkpoint, and raise :class:`~mlx_sched_callbacks.stopping.TrainingStopped`
        (a ``SystemExit`` with code 130 or 143).
        """
        stop = self.args.iters if until is None else min(until, self.args.iters)
        if stop % self.args.grad_accumulation_steps and stop != self.args.iters:
            raise ValueError(
                "until must be a multiple of grad_accumulation_steps="
                f"{self.args.grad_accumulation_steps}, got {until}."
            )
        if stop <= self.iteration:
            self.callback.close()
            return
        self._hold_folders()
        self._stop, self._stop_at = stop, None
        self._set_aside_later_checkpoints()
        self.optimizer.init(self.model.trainable_parameters())
        stopped = None
        with self.callback, StopSignals(self.stop_signals) as self._signals:
            try:
                while self.iteration < stop:
                    self._start_iteration = self.iteration
                    self._segment_stop = self._segment_end(self.iteration, stop)
                    # Trainers count their tokens from 0 in every call.
                    self._tokens_before = self._last_trained_tokens
                    self.run_trainer(self._segment_stop - self.iteration)
                    self._guarded(self._finish_iteration)
                    if self.iteration == self._stop_at:
                        raise _Stop
                    # The next call picks up the data stream mid-epoch, as after a resume.
                    self.restore_data(self.trainer_state())
            except _Stop:
                stopped = self._stopped()
            finally:
                self._signals = None
        if stopped is not None:
            self._say(stopped.reason)
            raise stopped

    def _segment_end(self, start: int, stop: int) -> int:
        """Where the trainer call that starts at ``start`` ends: an update boundary.

        A trainer reports every ``steps_per_report`` of its own iterations: a call
        that starts off that grid (after a resume or a polite stop) ends at the next
        point on it, so that later reports land where an uninterrupted run has them.
        Checkpoints off the grid end a call too, so that the trainer reports, and the
        checkpoint holds, every token trained before it.
        """
        k = self.args.grad_accumulation_steps
        report, save = self.args.steps_per_report, self.args.steps_per_save
        ends = [stop]
        if start % report:
            grid = math.lcm(report, k)
            ends.append((start // grid + 1) * grid)
        if save % report:
            ends.append((start // save + 1) * save)
        return min(ends)

    def _stopped(self) -> TrainingStopped:
        checkpoint = self.checkpoint_dir / f"step_{self.iteration:09d}"
        saved = self._saved_at == self.iteration and checkpoint.is_dir()
        where = f"checkpoint {checkpoint}" if saved else "no checkpoint written"
        how = self.resume_command or "resume() then train() on a new run object"
        if self._failure is not None:
            reason = (
                f"Stopped after iteration {self.iteration}: {self._failure} ({where}). "
                f"Once it can be written, continue with: {how}"
            )
            code = 1
        else:
            signum = self._signals.requested
            reason = (
                f"Stopped by {signal_name(signum)} after iteration {self.iteration} ({where}). "
                f"Continue with: {how}"
            )
            code = 128 + signum
        return TrainingStopped(code, self.iteration, checkpoint if saved else None, reason)

    def _guarded(self, step, step_ran: bool = True) -> None:
        """Run a hook step; a disk failure stops the run politely instead of with tracebacks.

        ``step_ran``: the trainer has run the step of the iteration last handed over,
        so it can be counted and checkpointed; otherwise the data has moved on to an
        iteration not run yet, and a checkpoint now would skip it.
        """
        try:
            step()
        except OSError as error:
            self._failure = error.strerror or str(error)
            self.callback.abandon_log()  # the log may be what failed; the rest is on disk
            self._signals = None  # no stop vote now: the other ranks are not voting
            try:
                if step_ran:
                    self._finish_iteration()
                done = self._pulled == self.iteration != self._saved_at
                if done and self.iteration % self.args.grad_accumulation_steps == 0:
                    self.save_checkpoint()
            except OSError as again:
                self._failure += f"; the checkpoint failed too: {again.strerror or again}"
            raise _Stop from error

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
            f"{self.iteration} to {aside}. Starting a fresh run; to continue the earlier one "
            f"instead, stop this run, move them back into {self.checkpoint_dir} and resume "
            "(--resume).",
            flush=True,
        )

    def begin_iteration(self) -> None:
        """Call before handing the next training batch to the trainer."""
        self._guarded(self._begin_iteration, step_ran=False)

    def _begin_iteration(self) -> None:
        self._finish_iteration()
        k = self.args.grad_accumulation_steps
        self._pulled += 1
        # Validation first: a plateau phase it feeds may lower this very update's rate.
        self._maybe_evaluate(self._pulled)
        if (self._pulled - 1) % k == 0:
            self.callback.on_step_begin()

    def end_iteration(self) -> None:
        """Call when the trainer is known to have finished the iteration it was handed."""
        self._guarded(self._finish_iteration)

    def before_next_batch(self) -> None:
        """Call when the trainer asks for its next training batch, before drawing it.

        Ends the iteration under way; a polite stop that is due leaves the trainer
        here, before the data (and its random state) moves on.
        """
        self._guarded(self._finish_or_stop)

    def _finish_or_stop(self) -> None:
        self._finish_iteration()
        if self.iteration == self._stop_at:
            raise _Stop
        self._maybe_stop_after(self.iteration + 1)

    def _finish_iteration(self) -> None:
        """Count the iteration whose step just ran, once, and checkpoint when due."""
        if self.iteration == self._pulled:
            return
        self.iteration = self._pulled
        at_update = self.iteration % self.args.grad_accumulation_steps == 0 or (
            self.applies_leftover_group and self.iteration == self.args.iters
        )
        if at_update:
            self.callback.on_step_end()
        due = self.iteration % self.args.steps_per_save == 0 or self.iteration == self._stop
        if due or (self.iteration == self._stop_at and self._saved_at != self.iteration):
            self.save_checkpoint()

    def _maybe_stop_after(self, iteration: int) -> None:
        """Before ``iteration``'s batch is drawn: where to stop, if a stop is asked for.

        Asked on every rank at every iteration, so that all ranks stop together. The
        run stops at an update boundary: right away if the trainer has just reported,
        else at the end of ``iteration``'s accumulation group, with the trainer's call
        shortened to end there, so that it reports what it ran.
        """
        if self._signals is None or self._stop_at is not None or iteration > self._stop:
            return
        signum = self._signals.agreed()
        if signum is None:
            return
        self._signals.requested = signum
        k, done = self.args.grad_accumulation_steps, iteration - 1
        reported = (done - self._start_iteration) % self.args.steps_per_report == 0
        if done % k == 0 and reported:
            self._stop_at = done
            if self._saved_at != done:
                self.save_checkpoint()
            raise _Stop
        self._stop_at = min(math.ceil(iteration / k) * k, self._segment_stop)
        if self._call_args is not None:
            self._call_args.iters = self._stop_at - self._start_iteration

    def x(self, iteration: int) -> int:
        """The TensorBoard step of an iteration: the optimizer update it belongs to."""
        return math.ceil(iteration / self.args.grad_accumulation_steps)

    def _maybe_evaluate(self, iteration: int) -> None:
        args = self.args
        due = iteration == 1 or iteration % args.steps_per_eval == 0 or iteration == args.iters
        if not self.val_dataset or not due:
            return
        tic = time.perf_counter()
        val_loss = self.evaluate()
        self.model.train()
        val_time = time.perf_counter() - tic
        self.show_validation(iteration, val_loss, val_time)
        self.callback.log_scalar("val/loss", val_loss, self.x(iteration))
        self.callback.on_validation(val_loss)  # feeds reduce_on_plateau phases
        if self.next_callback is not None:
            self.next_callback.on_val_loss_report(
                {"iteration": iteration - 1, "val_loss": val_loss, "val_time": val_time}
            )

    def show_validation(self, iteration: int, val_loss: float, val_time: float) -> None:
        self._say(f"Iter {iteration}: Val loss {val_loss:.3f}, Val took {val_time:.3f}s")

    # -- reports -------------------------------------------------------------

    def report(self, info: dict) -> dict:
        """Log a trainer's loss report beside the rate; return it with global counts.

        ``info["iteration"]`` is the trainer's own count in this ``train()`` call.
        """
        info = dict(info)
        info["iteration"] = self._start_iteration + info["iteration"]
        if "trained_tokens" in info:
            info["trained_tokens"] = self._tokens_before + info["trained_tokens"]
            self._last_trained_tokens = info["trained_tokens"]
        x = self.x(info["iteration"])

        def log():
            for field, tag in self.report_tags.items():
                value = info.get(field)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.callback.log_scalar(tag, value, x)

        self._guarded(log)
        return info

    # -- checkpoints -------------------------------------------------------

    def trainer_state(self) -> dict:
        """Where the run is: iteration, data position, and what must match on resume."""
        return {
            "format": self.format,
            "version": TRAINER_STATE_VERSION,
            "iteration": self.iteration,
            "iters": self.args.iters,
            "grad_accumulation_steps": self.args.grad_accumulation_steps,
            "batch_size": self.args.batch_size,
            "trained_tokens": self._last_trained_tokens,
            **self.data_state(),
        }

    def _random_keys(self) -> list:
        """mlx's random key on every rank (one, where all ranks hold the same)."""
        mine = mx_random_key()
        world = mx.distributed.init()
        if world.size() == 1 or self._failure is not None:  # after a failure, no collective
            return [mine]
        gathered = mx.distributed.all_gather(
            mx.array([mine], dtype=mx.int64), group=world, stream=mx.cpu
        ).tolist()
        return [mine] if all(key == gathered[0] for key in gathered) else gathered

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current iteration; only rank 0 writes files."""
        keys = self._random_keys()  # on every rank: a collective
        if self.rank != 0:
            self._saved_at = self.iteration
            return None
        adapters = dict(tree_flatten(self.model.trainable_parameters()))
        state = {
            **self.trainer_state(),
            "mx_random_keys": keys,
        }
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
        self._saved_at = self.iteration
        self._write_adapter_files(folder)
        prune_checkpoints(self.checkpoint_dir, self.keep_checkpoints)
        return folder

    def _write_adapter_files(self, folder: Path) -> None:
        """The trainer's own adapter files for ``folder``, numbered by the global iteration."""
        adapter_file = Path(self.args.adapter_file)
        data = (folder / "adapters.safetensors").read_bytes()
        write_bytes_atomic(adapter_file, data)
        if self.iteration % self.args.steps_per_save == 0:
            numbered = adapter_file.parent / f"{self.iteration:07d}_adapters.safetensors"
            write_bytes_atomic(numbered, data)
