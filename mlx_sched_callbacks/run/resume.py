"""Resuming a run: the newest sound checkpoint found, checked against this run, restored."""

from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx

from .._files import read_json
from .checkpoint import checkpoint_problem, list_checkpoints, load_optimizer_state
from .lock import hold_run_folders
from .state import (
    _FIELDS,
    TRAINER_STATE,
    TRAINER_STATE_VERSION,
    _check_random_keys,
    _mx_seed,
    load_adapters_checked,
    set_mx_random_key,
)


class Resume:
    """Finding, checking and restoring a checkpoint, for :class:`TrainingRun`."""

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
        self._restore_best(state, folder)
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
        best, stale = state.get("best"), state.get("stale_validations", 0)
        best_fits = best is None or (
            isinstance(best, dict)
            and _is_count(best.get("iteration"))
            and isinstance(best.get("val_loss"), (int, float))
        )
        if not best_fits or not _is_count(stale):
            raise ValueError(
                f"{where}: best ({best!r}) or stale_validations ({stale!r}) is malformed."
            )
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
        callback = read_json(where.parent / "callback.json", "callback state")
        callback_step, skipped = callback.get("step"), callback.get("skipped_updates", 0)
        if not isinstance(skipped, int) or callback_step != updates - skipped:
            raise ValueError(
                f"{where.parent / 'callback.json'}: step {callback_step!r} (and "
                f"{skipped!r} skipped updates) does not match "
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


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
