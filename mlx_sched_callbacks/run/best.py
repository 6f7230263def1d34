"""What a run does with its validation losses: it keeps the best adapter and stops early.

The adapters of the lowest validation loss so far are ``best_adapters.safetensors`` in the
adapter folder, with ``best_adapters.json`` beside it (the iteration and the loss); every
checkpoint holds a copy of them (a hard link where the disk allows), so a resume puts back
the best adapter of its own point in the run, and pruning a checkpoint removes no other's.

Early stopping counts validations since the loss last fell by more than ``threshold`` below
the best so far, as Hugging Face's ``EarlyStoppingCallback`` does; after ``patience`` of them
the run stops at the end of the update under way, with a checkpoint, as a polite stop does.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .._files import write_bytes_atomic

BEST_ADAPTERS = "best_adapters.safetensors"
BEST_INFO = "best_adapters.json"


def checked_patience(patience) -> int | None:
    if patience is None:
        return None
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(
            f"early_stopping_patience must be an integer >= 1 (validations), got {patience!r}."
        )
    return patience


def checked_threshold(threshold) -> float:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not 0 <= threshold < math.inf
    ):
        raise ValueError(
            f"early_stopping_threshold must be a finite number >= 0, got {threshold!r}."
        )
    return float(threshold)


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` with ``source``'s bytes: a hard link (the file is never changed in place,
    only replaced), or a copy where the disk cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class BestAdapter:
    """The best adapter and early stopping of a :class:`TrainingRun`."""

    best: dict | None = None  # {"iteration", "val_loss"} of the best validation so far
    stale_validations = 0  # validations since the last improvement > threshold

    @property
    def best_adapter_file(self) -> Path:
        return self.adapter_dir / BEST_ADAPTERS

    @property
    def _best_info_file(self) -> Path:
        return self.adapter_dir / BEST_INFO

    def _after_validation(self, iteration: int, val_loss: float) -> None:
        best = None if self.best is None else self.best["val_loss"]
        if best is None or (val_loss < best and best - val_loss > self.early_stopping_threshold):
            self.stale_validations = 0
        else:
            self.stale_validations += 1
        if best is None or val_loss < best:  # NaN never is
            self.best = {"iteration": iteration, "val_loss": val_loss}
            if self.rank == 0:
                self._write_best()
        if self.best is not None:
            self.callback.log_scalar("val/best_loss", self.best["val_loss"], self.x(iteration))
        patience = self.early_stopping_patience
        if patience is not None and self.stale_validations >= patience:
            self.request_stop(
                f"Early stopping at iteration {iteration}: {self.stale_validations} "
                f"validations without a validation loss below {self._below()} (best "
                f"{self.best['val_loss']:.4f} at iteration {self.best['iteration']}, "
                f"in {self.best_adapter_file})"
            )

    def _below(self) -> str:
        threshold = self.early_stopping_threshold
        best = self.best["val_loss"]
        return f"{best:.4f} - {threshold:g}" if threshold else f"{best:.4f}"

    def _write_best(self) -> None:
        adapters = dict(tree_flatten(self.model.trainable_parameters()))
        staging = self.adapter_dir / f".{BEST_ADAPTERS}.tmp-{os.getpid()}.safetensors"
        mx.save_safetensors(str(staging), adapters)
        os.replace(staging, self.best_adapter_file)
        write_bytes_atomic(self.adapter_dir / BEST_INFO, self._best_info())

    def _best_info(self) -> bytes:
        return json.dumps(self.best, indent=1).encode()

    def _best_state(self) -> dict:
        """The trainer.json fields of the best adapter and early stopping."""
        return {"best": self.best, "stale_validations": self.stale_validations}

    def _best_writers(self) -> dict:
        """The checkpoint's copy of the best adapter, when there is one."""
        if self.best is None or not self.best_adapter_file.is_file():
            return {}
        return {BEST_ADAPTERS: lambda path: link_or_copy(self.best_adapter_file, path)}

    def _restore_best(self, state: dict, folder: Path) -> None:
        """The best adapter of the checkpoint's point in the run, back in the adapter folder."""
        self.best = state.get("best")
        self.stale_validations = state.get("stale_validations", 0)
        saved = folder / BEST_ADAPTERS
        if self.rank != 0 or self.best is None or not saved.is_file():
            return
        if not self.best_adapter_file.is_file() or (
            self.best_adapter_file.read_bytes() != saved.read_bytes()
        ):
            write_bytes_atomic(self.best_adapter_file, saved.read_bytes())
        info = self.adapter_dir / BEST_INFO
        if not info.is_file() or info.read_bytes() != self._best_info():
            write_bytes_atomic(info, self._best_info())
