"""Writing a run's checkpoints: adapters, optimizer, callback and trainer state, and the
trainer's own adapter files beside them."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .._files import write_bytes_atomic
from .checkpoint import list_checkpoints, prune_checkpoints, save_optimizer_state, write_checkpoint
from .state import TRAINER_STATE, TRAINER_STATE_VERSION, mx_random_key

# A fresh start in a used folder sets the earlier run aside in checkpoints/superseded-*;
# this many of those folders are kept, the newest.
SET_ASIDE = "superseded-"
KEEP_SET_ASIDE = 3


class Saving:
    """Checkpoints of a :class:`TrainingRun`."""

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
            **self._best_state(),
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
        if not self.write_checkpoints:
            self._saved_at = self.iteration
            return None
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
                **self._best_writers(),
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

    def _set_aside_later_checkpoints(self) -> None:
        # What lies past the point this run starts from belongs to an earlier run (a fresh
        # start in a used folder): its checkpoints (a later resume would pick them up), its
        # numbered adapters and its best adapter. Moved aside together, not deleted; only
        # the newest KEEP_SET_ASIDE such folders are kept.
        if self.rank != 0:
            return
        later = [f for step, f in list_checkpoints(self.checkpoint_dir) if step > self.iteration]
        adapters = [
            path
            for path in self.adapter_dir.glob("[0-9]" * 7 + "_adapters.safetensors")
            if int(path.name[:7]) > self.iteration
        ]
        best = [p for p in (self.best_adapter_file, self._best_info_file) if p.is_file()]
        if self.iteration > 0:
            best = []
        elif best and not (later or adapters):
            # Alone, it is from a run killed before its first checkpoint (mlx-lm validates at
            # iteration 1): this fresh start redoes it, as it redoes its adapters.safetensors.
            for path in best:
                path.unlink()
            names = " and ".join(p.name for p in best)
            print(f"Removed {names} of an earlier run that reached no checkpoint.", flush=True)
            return
        if not (later or adapters or best):
            return
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        aside, n = self.checkpoint_dir / f"{SET_ASIDE}{stamp}", 0
        while aside.exists():  # a second fresh start within the second
            n += 1
            aside = self.checkpoint_dir / f"{SET_ASIDE}{stamp}-{n}"
        aside.mkdir(parents=True)
        for path in later + adapters + best:
            os.replace(path, aside / path.name)
        dropped = sorted(self.checkpoint_dir.glob(f"{SET_ASIDE}*"))[:-KEEP_SET_ASIDE]
        for folder in dropped:
            shutil.rmtree(folder, ignore_errors=True)
        dropped = f"; removed the oldest {len(dropped)} set aside" if dropped else ""
        print(
            f"Moved {len(later)} checkpoint(s) and {len(adapters + best)} adapter file(s) of an "
            f"earlier run past iteration {self.iteration} to {aside} (the newest "
            f"{KEEP_SET_ASIDE} such folders are kept{dropped}). Starting a fresh run; to "
            f"continue the earlier one instead, stop this run, move them back and resume "
            f"(--resume).",
            flush=True,
        )
