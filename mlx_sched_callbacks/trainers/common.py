"""What the trainer adapters share: numpy's epochs replayed, a trainer's progress bar on the
run's count, and a trainer's module attribute replaced for a while."""

from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np

from ..run import TrainingRun
from ..run.state import numpy_state_from_json, numpy_state_to_json


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


_ABSENT = object()


@contextmanager
def replaced(owner, name: str, value, may_be_absent: bool = False):
    """``owner.name = value`` for the duration: how an adapter reaches into a trainer.

    ``owner`` must have ``name`` (a trainer that renamed it fails loudly), unless
    ``may_be_absent``: a module global that shadows a builtin, such as ``print``."""
    original = vars(owner).get(name, _ABSENT) if may_be_absent else getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if original is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
