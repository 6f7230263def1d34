"""mlx-lm-lora: a per-step schedule in its unmodified trainers (sft, dpo, orpo, grpo, ...).

Every mlx-lm-lora trainer pulls its training batches from a batch function with
``train=True``: sft and grpo take it as the ``iterate_batches`` argument, the others
call a function of their own module (ppo, xpo, rlhf_reinforce and klpo each through
their own imported name). :class:`MlxLmLoraTraining` installs a wrapper there, the
per-step hook, and is the ``TrainingCallback`` that receives the trainer's reports.
Most trainers draw a fresh batch function each iteration and take its first batch,
so their data position is numpy's global state; grpo and klpo keep one generator,
and their position is also where the epoch started and how far it is.
Everything else (counting, validation, checkpoints, resume, stops) is
:class:`~mlx_sched_callbacks.run.TrainingRun`.

``mlx-sched lm-lora`` is ``mlx_lm_lora.train`` with training handed to it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import types
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..run import TrainingRun
from .common import NumpyEpochs, global_progress, replaced

__all__ = ["MODES", "MlxLmLoraTraining", "metal_key_for_cpu"]

WORKING_SET_KEY = "max_recommended_working_set_size"


# -- each trainer's own validation call, made here on the run's global count ------------
# (m: the trainer module, kw: train_<mode>'s arguments, a: its TrainingArgs, common: the
# arguments every evaluate_<mode> takes, inner: the unwrapped batch function)


def _eval_sft(m, kw, a, common, inner, iteration, iters):
    loss = kw["loss"] if kw["loss"] is not m.default_loss else m.get_sft_loss(a.loss_type)
    return m.evaluate_sft(
        **common, loss=loss, iterate_batches=inner, recurrence_chunk_size=a.recurrence_chunk_size,
        efficient=a.seq_step_size is not None, seq_step_size=a.seq_step_size or a.max_seq_length,
    )  # fmt: skip


def _eval_dpo(m, kw, a, common, inner, iteration, iters):
    return m.evaluate_dpo(
        **common, ref_model=kw["ref_model"], loss_fn=kw["loss_fn"], beta=a.beta, delta=a.delta,
        loss_type=kw["loss_type"],
    )  # fmt: skip


def _eval_orpo(m, kw, a, common, inner, iteration, iters):
    return m.evaluate_orpo(**common, beta=a.beta)


def _eval_cpo(m, kw, a, common, inner, iteration, iters):
    return m.evaluate_cpo(
        **common, beta=a.beta, delta=a.delta, loss_type=a.loss_type, loss_fn=kw["loss_fn"]
    )


def _eval_grpo(m, kw, a, common, inner, iteration, iters):
    return m.evaluate_grpo(
        **common, ref_model=kw["ref_model"], loss_fn=kw["loss_fn"],
        reward_funcs=kw["reward_funcs"], reward_weights=a.reward_weights,
        importance_sampling_level=a.importance_sampling_level, tokenizer=kw["tokenizer"],
        group_size=a.group_size, max_tokens=a.max_completion_length, beta=a.beta,
        epsilon=a.epsilon, epsilon_high=a.epsilon_high, iterate_batches=inner,
        grpo_loss_type=a.grpo_loss_type, end_answer_token=kw["end_answer_token"],
        temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, min_p=a.min_p,
    )  # fmt: skip


def _eval_klpo(m, kw, a, common, inner, iteration, iters):
    return m.evaluate_klpo(
        common["model"], common["dataset"], kw["tokenizer"], a.batch_size, a.val_batches,
        a.beta, a.route, a.kl_estimator, a.mc_samples, a.top_k, a.tail_floor,
        a.max_seq_length, a.max_completion_length, a.temperature, kw["reward_funcs"],
        a.reward_weights, end_answer_token=kw["end_answer_token"],
    )  # fmt: skip


def _online(kw, a, common):
    """What online_dpo, ppo, xpo and rlhf_reinforce all pass to their evaluate_<mode>."""
    return dict(
        **common, ref_model=kw["ref_model"], tokenizer=kw["tokenizer"], loss_fn=kw["loss_fn"],
        beta=a.beta, judge_config=kw["judge_config"], judge_model=kw["judge_model"],
        judge_tokenizer=kw["judge_tokenizer"], max_tokens=a.max_completion_length,
        micro_batch_size=a.micro_batch_size,  # each evaluate_<mode> bounds it as its trainer
    )  # fmt: skip


def _eval_online_dpo(m, kw, a, common, inner, iteration, iters):
    return m.evaluate_online_dpo(
        **_online(kw, a, common), delta=a.delta, loss_type=a.loss_type, temperature=a.temperature
    )


def _eval_ppo(m, kw, a, common, inner, iteration, iters):
    # train_ppo passes no temperature: its evaluate samples at its default, 0.8.
    return m.evaluate_ppo(**_online(kw, a, common), epsilon=a.epsilon, loss_type=a.loss_type)


def _eval_xpo(m, kw, a, common, inner, iteration, iters):
    alpha = m.get_current_alpha(iteration, iters, a.alpha)
    return m.evaluate_xpo(**_online(kw, a, common), delta=a.delta, loss_type=a.loss_type,
                          alpha=alpha)  # fmt: skip


def _eval_rlhf_reinforce(m, kw, a, common, inner, iteration, iters):
    return m.evaluate_rlhf_reinforce(**_online(kw, a, common))


@dataclass(frozen=True)
class Mode:
    """What differs between mlx-lm-lora's trainers."""

    module: str  # mlx_lm_lora.trainer.<module>, with train_<mode> and evaluate_<mode>
    batches: str  # the batch function's name in that module
    as_argument: bool  # passed as the trainer's iterate_batches= (else the module global)
    one_generator: bool  # one generator for the run, not a fresh one per iteration
    applies_leftover_group: bool  # updates at `it % k == 0 or it == iters`
    evaluate: object  # the trainer's validation call, above
    reports_rewards: bool = False  # its validation reports chosen and rejected rewards


MODES = {
    "sft": Mode("sft_trainer", "iterate_batches", True, False, False, _eval_sft),
    "dpo": Mode("dpo_trainer", "iterate_dpo_batches", False, False, False, _eval_dpo, True),
    "orpo": Mode("orpo_trainer", "iterate_orpo_batches", False, False, False, _eval_orpo, True),
    "cpo": Mode("cpo_trainer", "iterate_cpo_batches", False, False, False, _eval_cpo, True),
    "grpo": Mode("grpo_trainer", "iterate_grpo_batches", True, True, True, _eval_grpo),
    "klpo": Mode("klpo_trainer", "iterate_grpo_batches", False, True, True, _eval_klpo),
    "online_dpo": Mode(
        "online_dpo_trainer", "iterate_online_dpo_batches", False, False, True,
        _eval_online_dpo, True,
    ),
    "ppo": Mode(
        "ppo_trainer", "iterate_online_dpo_batches", False, False, False, _eval_ppo, True
    ),
    "xpo": Mode("xpo_trainer", "iterate_online_dpo_batches", False, False, True, _eval_xpo, True),
    "rlhf_reinforce": Mode(
        "rlhf_reinforce_trainer", "iterate_online_dpo_batches", False, False, True,
        _eval_rlhf_reinforce,
    ),
}  # fmt: skip


def _scalar(value):
    """A report value as a Python number, or None (mlx-lm-lora reports some as mx.array)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (mx.array, np.ndarray, np.generic)) and value.size == 1:
        return float(value.item())
    return None


def _or(value, default):
    return default if value is None else value


def _tag(split: str, key: str) -> str:
    name = key.removeprefix(f"{split}_")
    return f"{split}/peak_memory_gb" if name == "peak_memory" else f"{split}/{name}"


class MlxLmLoraTraining(NumpyEpochs, TrainingRun):
    """Train with an mlx-lm-lora trainer under a schedule, with logs and exact resume.

    ``trainer_kwargs`` are the keyword arguments of ``train_<mode>`` (model,
    optimizer, train_dataset, val_dataset, args, ref_model, tokenizer, ...); its
    ``args`` (``SFTTrainingArgs`` or the mode's subclass) sets the whole run:
    ``iters``, ``gradient_accumulation_steps``, ``steps_per_save`` (how often a
    checkpoint is written), ``steps_per_eval``. Validation runs here, on the
    run's global count, with the mode's own ``evaluate_<mode>``. Every numeric
    metric of the trainer's reports goes to TensorBoard as ``train/<name>`` and
    ``val/<name>`` beside ``train/learning_rate``.

    Typical use::

        training = MlxLmLoraTraining("dpo", schedule, dict(
            model=model, ref_model=ref_model, optimizer=optim.Adam(learning_rate=0.0),
            train_dataset=train_set, val_dataset=valid_set, args=DPOTrainingArgs(...),
        ), log_dir="runs/dpo")
        training.resume()   # says what it did: resumed, or a fresh start
        training.train()    # calls mlx_lm_lora.trainer.dpo_trainer.train_dpo
    """

    format = "mlx_sched_callbacks.MlxLmLoraTraining"

    def __init__(self, mode: str, schedule, trainer_kwargs: dict, *, trainer=None, **options):
        if mode not in MODES:
            raise ValueError(f"train mode {mode!r} is not hooked; the modes are {list(MODES)}.")
        self.mode = MODES[mode]
        self.module = importlib.import_module(f"mlx_lm_lora.trainer.{self.mode.module}")
        self.trainer = trainer or getattr(self.module, f"train_{mode}")
        bound = inspect.signature(self.trainer).bind_partial(**trainer_kwargs)
        bound.apply_defaults()
        self.kw = dict(bound.arguments)
        a = self.trainer_args = self.kw["args"]
        if a is None:
            raise ValueError(f"trainer_kwargs must hold args (the train_{mode} TrainingArgs).")
        args = types.SimpleNamespace(
            iters=a.iters, batch_size=a.batch_size, steps_per_save=a.steps_per_save,
            grad_accumulation_steps=a.gradient_accumulation_steps,
            steps_per_report=a.steps_per_report, steps_per_eval=a.steps_per_eval,
            val_batches=a.val_batches,
            adapter_file=a.adapter_file,
        )  # fmt: skip
        options.setdefault("training_callback", self.kw.pop("training_callback", None))
        super().__init__(
            self.kw["model"], self.kw["optimizer"], schedule, args, self.kw["train_dataset"],
            self.kw.pop("val_dataset"), **options,
        )  # fmt: skip
        self.applies_leftover_group = self.mode.applies_leftover_group
        self.inner_batches = self.kw.get("iterate_batches") or getattr(
            self.module, self.mode.batches
        )

    def run_trainer(self, iters: int) -> None:
        kw = dict(self.kw, val_dataset=None, training_callback=self)  # validation is ours
        kw["args"] = self.call_args(self.trainer_args, iters)
        with global_progress(self, self.module):
            if self.mode.as_argument:
                kw["iterate_batches"] = self.iterate_batches
                self.trainer(**kw)
                return
            with replaced(self.module, self.mode.batches, self.iterate_batches):
                self.trainer(**kw)

    # -- the per-step hook -------------------------------------------------

    def iterate_batches(self, *args, train=False, **kwargs):
        """Drop-in for the mode's batch function; validation calls pass through."""
        if not train:
            return self.inner_batches(*args, **kwargs)
        per_epoch = len(self.train_dataset) // self.args.batch_size
        epochs = self.numpy_epochs(
            lambda: self.inner_batches(*args, train=True, **kwargs),
            per_epoch if self.mode.one_generator else 1,
        )
        return self._pulls(epochs)

    def _pulls(self, stream):
        while True:
            self.before_next_batch()
            batch = next(stream)
            self.begin_iteration()
            yield batch

    # -- validation and reports ------------------------------------------------

    def evaluate(self) -> float:
        a = self.trainer_args
        common = dict(
            model=self.model, dataset=self.val_dataset, batch_size=a.batch_size,
            num_batches=a.val_batches, max_seq_length=a.max_seq_length,
        )  # fmt: skip
        mode = self.mode
        result = mode.evaluate(
            self.module, self.kw, a, common, self.inner_batches, self._pulled, self.args.iters
        )
        metrics = dict(result[-1]) if isinstance(result[-1], dict) else {}
        if mode.reports_rewards:
            metrics["chosen_reward"], metrics["rejected_reward"] = result[1][:2]
        if mode.evaluate is _eval_klpo:
            metrics["tokens"] = result[1]
        for key, value in metrics.items():
            value = _scalar(value)
            if value is not None:
                self.callback.log_scalar(f"val/{key}", value, self.x(self._pulled))
        return float(_scalar(result[0]))

    def on_train_loss_report(self, train_info: dict) -> None:
        info = {key: _or(_scalar(value), value) for key, value in train_info.items()}
        self.report_tags = {
            key: _tag("train", key) for key in info if key not in ("iteration", "learning_rate")
        }
        info = self.report(info)
        # The report comes after the step: the last iteration ends here, as no batch follows.
        self.end_iteration()
        if self.next_callback is not None:
            self.next_callback.on_train_loss_report(info)

    def on_val_loss_report(self, val_info: dict) -> None:
        if self.next_callback is not None:  # validation runs in the hook
            self.next_callback.on_val_loss_report(val_info)


@contextlib.contextmanager
def metal_key_for_cpu():
    """Give ``mx.device_info()`` Metal's ``max_recommended_working_set_size`` where it lacks it.

    Most mlx-lm-lora trainers start with ``mx.set_wired_limit(mx.device_info()[
    "max_recommended_working_set_size"])``: a key only the Metal backend reports, so on
    the CPU backend (and CUDA) they stop with ``KeyError`` before training. Where the key is
    missing and Metal is not available, this reports the machine's memory under that key
    while the block runs: ``set_wired_limit`` does nothing on the CPU backend, and a size
    of 0 would make mlx-lm's ``wired_limit`` warn at every generation. On Metal, or where
    the key exists, nothing changes.
    """
    original = mx.device_info
    if WORKING_SET_KEY in original() or mx.metal.is_available():
        yield
        return

    def device_info():
        info = dict(original())
        info.setdefault(WORKING_SET_KEY, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        return info

    with replaced(mx, "device_info", device_info):
        yield
