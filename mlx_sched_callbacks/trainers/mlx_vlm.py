"""mlx-vlm: a per-step schedule in the unmodified ``mlx_vlm.trainer.common.engine.train``.

mlx-vlm's engine pulls exactly one batch per iteration from its task's
``batches(dataset, train=True, seed=seed)``: :class:`MlxVlmTraining` wraps that
function (the per-step hook) and is the ``TrainingCallback`` that receives the
engine's reports. With a seed, the engine's batch order comes from its own
``numpy.random.default_rng(seed)`` and nothing else, so the data position is the
seed and the number of batches drawn, replayed on resume by skipping that many
batches of indices before the task turns indices into a batch (for GRPO, a
rollout): a skipped batch costs no model call. Everything else (counting,
checkpoints, resume, stops) is :class:`~mlx_sched_callbacks.run.TrainingRun`. ``mlx-sched vlm``
(``cli/vlm.py``) is ``python -m mlx_vlm.train`` with training handed to it.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
from mlx_vlm.trainer.common import engine
from mlx_vlm.trainer.common import utils as engine_utils
from mlx_vlm.trainer.common.callbacks import TrainingCallback
from mlx_vlm.trainer.common.utils import save_json

from ..run import MLX_LM_REPORT_TAGS, TrainingRun
from .common import global_progress, replaced

__all__ = ["MlxVlmTraining"]

# The engine itself, whatever `mlx-sched vlm` puts in its place while mlx-vlm's pipeline runs.
engine_train, engine_evaluate = engine.train, engine.evaluate


class MlxVlmTraining(TrainingRun, TrainingCallback):
    """Train with mlx-vlm's engine under a schedule, with logs and exact resume.

    ``args`` is mlx-vlm's ``VLMTrainingArgs`` (or another ``CoreTrainingArgs``):
    ``iters`` is the length of the whole run and ``steps_per_save`` sets how often
    a checkpoint is written to ``checkpoint_dir`` (default: ``checkpoints/``
    beside ``args.adapter_file``). ``task`` is the engine's ``TrainingTask`` and
    ``seed`` its data seed. The schedule counts optimizer updates, the last
    incomplete accumulation group's included (the engine applies it).

    Validation runs on ``val_dataset`` through mlx-vlm's ``evaluate`` on the run's
    global count, at iteration 1, every ``steps_per_eval`` and at the last
    iteration, before that iteration's step (mlx-lm's moments: the same for every
    trainer; the engine itself validates after the step and not at 1).

    Typical use, with mlx-vlm's ``Trainer`` building the task and datasets::

        trainer = Trainer(model, args, optimizer=optimizer, train_dataset=rows["train"],
                          eval_dataset=rows["valid"], processing_class=processor)
        training = MlxVlmTraining.from_trainer(trainer, schedule, log_dir="runs/vlm")
        training.resume()   # says what it did: resumed, or a fresh start
        training.train()    # calls mlx_vlm.trainer.common.engine.train
    """

    format = "mlx_sched_callbacks.MlxVlmTraining"
    data_fields = {"data_seed": int}
    report_tags = MLX_LM_REPORT_TAGS
    applies_leftover_group = True

    def __init__(
        self, model, optimizer, schedule, args, train_dataset, val_dataset=None, *, task,
        seed: int = 0, **options,
    ):  # fmt: skip
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(
                f"seed must be an int (the data order is replayed from it on resume), got {seed!r}."
            )
        self.engine_args, self.task, self.seed = args, task, seed
        if args.steps_per_eval is None:  # mlx-vlm's "never validate"
            val_dataset = None
        # What the core reads, under mlx-lm's names.
        core_args = types.SimpleNamespace(
            iters=args.iters,
            batch_size=args.batch_size,
            grad_accumulation_steps=args.gradient_accumulation_steps,
            steps_per_report=args.steps_per_report,
            steps_per_save=args.steps_per_save,
            steps_per_eval=args.steps_per_eval or 1,
            val_batches=args.val_batches,
            adapter_file=args.adapter_file,
        )
        super().__init__(
            model, optimizer, schedule, core_args, train_dataset, val_dataset, **options
        )

    @classmethod
    def from_trainer(cls, trainer, schedule, **options) -> MlxVlmTraining:
        """The run an ``mlx_vlm.trainer.Trainer`` would train, under ``schedule``."""
        options.setdefault("training_callback", trainer.training_callback)
        return cls(
            trainer.model, trainer.optimizer, schedule, trainer.args, trainer.train_dataset,
            trainer.eval_dataset, task=trainer.task, seed=trainer.seed, **options,
        )  # fmt: skip

    def run_trainer(self, iters: int) -> None:
        if self.iteration == 0:
            mx.random.seed(self.seed)  # as the engine does (LoRA dropout); resume() restores
        adapter_config = getattr(self.model, "_vlm_adapter_config", None)
        if adapter_config is not None and self.rank == 0:
            # The engine writes it only with its own saves, which a stopped run never reaches.
            save_json(adapter_config, Path(self.args.adapter_file).parent / "adapter_config.json")
        # Saves and validation happen in the hook, on the global count.
        args = self.call_args(self.engine_args, iters, steps_per_eval=None)
        task = dataclasses.replace(self.task, batches=self.batches)
        with _global_console(self), global_progress(self, engine):
            engine_train(self.model, self.optimizer, self.train_dataset, None, args, task, self)

    def batches(self, dataset, train=False, seed=None):
        """The per-step hook: drop-in for the task's ``batches``."""
        if not train:  # evaluate() draws its batches through here too
            yield from self.task.batches(dataset, train=False, seed=seed)
            return
        # The engine is given seed=None (it would reseed mlx's random state on a
        # resume); the data stream gets the run's seed, and skips what was drawn.
        stream = iter(self.task.batches(dataset, train=True, seed=self.seed))
        with _skipping_indices(self.iteration) as skipped:
            batch = next(stream)  # the task asks for its indices here
        if not skipped:  # a task of its own making: draw and drop, at its cost
            for _ in range(self.iteration):
                batch = next(stream)
        while True:
            self.begin_iteration()
            yield batch
            self.before_next_batch()
            batch = next(stream)

    def data_state(self) -> dict:
        return {"data_seed": self.seed}

    def restore_data(self, state: dict) -> None:
        # The position is the iteration, replayed by the hook; a checkpoint of another
        # seed is sound but does not fit this run (an error, not a skip).
        if state["data_seed"] != self.seed:
            raise ValueError(
                f"the checkpoint at iteration {state['iteration']} in {self.checkpoint_dir} "
                f"was trained with seed {state['data_seed']}, this run has seed {self.seed}; "
                f"the data order would differ: resume with --seed {state['data_seed']}."
            )

    def evaluate(self) -> float:
        return float(engine_evaluate(self.model, self.val_dataset, self.task, self.engine_args))

    # -- mlx-vlm's TrainingCallback -----------------------------------------

    def on_train_loss_report(self, train_info: dict) -> None:
        info = self.report(train_info)
        # The report comes after the step: the last iteration ends here, as no batch follows.
        self.end_iteration()
        if self.next_callback is not None:
            self.next_callback.on_train_loss_report(info)


@contextmanager
def _skipping_indices(count: int):
    """mlx-vlm's index stream, ``count`` batches on: a resume skips them before any work.

    Every mlx-vlm task draws its order from ``iterate_batch_indices`` and turns each
    batch of indices into a batch (collation; GRPO also generates a rollout). While
    the block runs, the function skips ``count`` batches of indices in every module
    that imported it. Yields a list that holds True once a task called it.
    """
    original = engine_utils.iterate_batch_indices
    called = []

    def skipping(*args, **kwargs):
        indices = original(*args, **kwargs)
        for _ in range(count):
            next(indices)
        called.append(True)
        return indices

    owners = [
        module
        for module in list(sys.modules.values())
        if getattr(module, "iterate_batch_indices", None) is original
    ]
    for module in owners:
        module.iterate_batch_indices = skipping
    try:
        yield called
    finally:
        for module in owners:
            module.iterate_batch_indices = original


@contextmanager
def _global_console(run: MlxVlmTraining):
    """The engine's printed reports, numbered by the run's global iterations."""

    def shifted(info, label):
        info = {**info, "iteration": run._start_iteration + info.get("iteration", 0)}
        if "trained_tokens" in info:
            info["trained_tokens"] += run._tokens_before
        return format_report(info, label)

    format_report = engine.format_metric_report
    with replaced(engine, "format_metric_report", shifted):
        yield
