"""mlx-lm: a per-step schedule in the unmodified ``mlx_lm.tuner.trainer.train``, and exact resume.

mlx-lm's trainer pulls exactly one batch per iteration from the ``iterate_batches``
it is given: :class:`MlxLmTraining` wraps that function (the per-step hook) and is
the ``TrainingCallback`` that receives mlx-lm's loss reports. Its data position is
numpy's global random state at the start of the current epoch, the batches drawn
since, and its state now: mlx-lm shuffles with numpy's global state.
Everything else (counting, checkpoints, resume, stops) is
:class:`~mlx_sched_callbacks.run.TrainingRun`.
"""

from __future__ import annotations

import builtins
import dataclasses
import re
from contextlib import contextmanager

import numpy as np
from mlx_lm.tuner import trainer as mlx_lm_trainer
from mlx_lm.tuner.callbacks import TrainingCallback

from ..run import MLX_LM_REPORT_TAGS, TrainingRun, load_adapters_checked
from .common import NumpyEpochs

__all__ = ["MlxLmTraining", "load_adapters_checked"]


class MlxLmTraining(NumpyEpochs, TrainingRun, TrainingCallback):
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
        training.resume()   # says what it did: resumed, or a fresh start
        training.train()    # calls mlx_lm.tuner.trainer.train
    """

    format = "mlx_sched_callbacks.MlxLmTraining"
    report_tags = MLX_LM_REPORT_TAGS

    def __init__(
        self,
        model,
        optimizer,
        schedule,
        args: mlx_lm_trainer.TrainingArgs,
        train_dataset,
        val_dataset=None,
        *,
        loss=mlx_lm_trainer.default_loss,
        iterate_batches=mlx_lm_trainer.iterate_batches,
        **options,
    ):
        super().__init__(model, optimizer, schedule, args, train_dataset, val_dataset, **options)
        self.loss = loss
        self.inner_iterate_batches = iterate_batches
        self._ui = None  # mlx-lm's console table, while train() runs

    def run_trainer(self, iters: int) -> None:
        # validation runs in the hook, on the global count
        no_validation = without_trainer_validation(self.args)
        with _global_console(self):
            mlx_lm_trainer.train(
                model=self.model,
                optimizer=self.optimizer,
                train_dataset=self.train_dataset,
                val_dataset=no_validation["val_dataset"],
                args=self.call_args(no_validation["args"], iters),
                loss=self.loss,
                iterate_batches=self.iterate_batches,
                training_callback=self,
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
        # One loop=False pass per epoch draws the same permutations, at the same
        # moments, as mlx-lm's loop=True, and shows where each epoch starts.
        epochs = self.numpy_epochs(
            lambda: self.inner_iterate_batches(**batches, comm_group=comm_group)
        )
        while True:
            self.before_next_batch()
            batch = next(epochs)
            self.begin_iteration()
            yield batch

    def evaluate(self) -> float:
        args = self.args
        return mlx_lm_trainer.evaluate(
            model=self.model,
            dataset=self.val_dataset,
            loss=self.loss,
            batch_size=args.batch_size,
            num_batches=args.val_batches,
            max_seq_length=args.max_seq_length,
            iterate_batches=self.inner_iterate_batches,
        )

    def show_validation(self, iteration: int, val_loss: float, val_time: float) -> None:
        if self._ui is None:
            super().show_validation(iteration, val_loss, val_time)
        else:
            self._ui.report_val(iteration, val_loss, val_time)

    # -- mlx-lm's TrainingCallback -----------------------------------------

    def on_train_loss_report(self, train_info: dict) -> None:
        info = self.report(train_info)
        # The report comes after the step: the last iteration ends here, as no batch follows.
        self.end_iteration()
        if self.next_callback is not None:
            self.next_callback.on_train_loss_report(info)

    def on_val_loss_report(self, val_info: dict) -> None:
        """Dropped: validation runs in the hook, which reports on itself.

        A report from ``train()`` is mlx-lm < 0.30.7's empty validation (see
        :func:`without_trainer_validation`).
        """


def without_trainer_validation(args) -> dict:
    """``train()``'s ``val_dataset`` and ``args`` for a call that validates nothing.

    Validation runs in the hook, on the global count. mlx-lm >= 0.30.7 skips its own for
    an empty set. Up to 0.30.6 it validates at each call's first and last iteration
    whatever the set, and takes its len() (None fails there). With ``val_batches=0``
    that validation draws no batch (``evaluate()`` zips ``range(0)`` first, so the batch
    generator never starts and numpy's random state is untouched); it prints
    "Val loss nan" (dropped by _global_console) and calls ``on_val_loss_report``.
    """
    return {
        "val_dataset": [],
        "args": dataclasses.replace(args, val_batches=0, steps_per_eval=args.iters + 1),
    }


@contextmanager
def _global_console(run: MlxLmTraining):
    """mlx-lm's console, numbered by the run's global iterations.

    ``train()`` counts from 1 in every call; a resumed run would print 10, 20, ...
    beside logs and files numbered 110, 120, .... mlx-lm 0.32 prints through its
    ``TrainUI`` class, older releases with ``print("Iter N: ...")``.
    """
    base = getattr(mlx_lm_trainer, "TrainUI", None)
    start = run._start_iteration
    if base is None:

        def shifted(*values, **kwargs):
            if values and isinstance(values[0], str):
                if re.match(r"Iter \d+: Val loss nan", values[0]):
                    return  # without_trainer_validation's empty validation
                line = re.sub(r"^Iter (\d+)", lambda m: f"Iter {int(m[1]) + start}", values[0])
                values = (line, *values[1:])
            builtins.print(*values, **kwargs)

        mlx_lm_trainer.print = shifted
        try:
            yield
        finally:
            del mlx_lm_trainer.print
        return

    class GlobalTrainUI(base):
        def __init__(self, total_iters, rank=0):
            super().__init__(run.args.iters, rank)
            progress, task = getattr(self, "_progress", None), getattr(self, "_task", None)
            if progress is not None and task is not None:
                progress.update(task, completed=start)
            run._ui = self

        def report_train(self, it, train_loss, tokens_sec, trained_tokens):
            tokens = run._tokens_before + trained_tokens
            super().report_train(start + it, train_loss, tokens_sec, tokens)

    mlx_lm_trainer.TrainUI = GlobalTrainUI
    try:
        yield
    finally:
        mlx_lm_trainer.TrainUI = base
        run._ui = None
