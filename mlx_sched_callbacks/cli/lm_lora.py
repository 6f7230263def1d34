"""``mlx-sched lm-lora``: ``mlx_lm_lora.train``'s pipeline unchanged, training handed to
:class:`~mlx_sched_callbacks.trainers.mlx_lm_lora.MlxLmLoraTraining`."""

from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx
from mlx_lm_lora import train as lora_train
from mlx_lm_lora.visuals import Colors

from ..trainers.common import replaced
from ..trainers.mlx_lm_lora import MODES, MlxLmLoraTraining, metal_key_for_cpu
from .common import Parser, UserError, colour_codes_off, parse_like
from .run_options import (
    add_run_options,
    hold_before_loading,
    log_dir_for,
    resume_command,
    run_keywords,
    schedule_from_config,
    start_training,
)
from .summary import RunSummary, mlx_lm_lora_next_steps

# Keys mlx_lm_lora.train reads from its arguments with getattr: no flag, no default.
READS = (
    "hf_dataset", "adapter_file", "end_answer_token", "top_p", "top_k", "min_p",
    "text_feature", "chat_feature", "prompt_feature", "completion_feature", "system_feature",
    "chosen_feature", "rejected_feature", "type_feature", "answer_feature",
)  # fmt: skip


def parse_args(argv):
    """Parse like ``mlx_lm_lora.train``: flags win over the --config YAML, then its defaults."""
    parser = lora_train.build_parser()
    parser.__class__ = Parser  # one-line errors
    parser.prog = "mlx-sched lm-lora"
    parser.description = (
        "mlx_lm_lora.train with a learning-rate schedule set before every step, TensorBoard "
        "logs of every reported metric and exact resume. Takes every mlx_lm_lora.train flag "
        "and --config YAML; lr_schedule may be mlx-lm's form or mlx_sched_callbacks' "
        "to_dict() form."
    )
    add_run_options(parser)
    return parse_like(
        parser, argv, lora_train.CONFIG_DEFAULTS, "mlx_lm_lora.train", lora_train.yaml_loader,
        READS,
    )  # fmt: skip


def main(argv) -> None:
    """``mlx-sched lm-lora``: ``mlx_lm_lora.train``'s pipeline unchanged, trained by us."""
    run(parse_args(argv), argv)


def run(args, argv, train_with=None) -> None:
    """``mlx_lm_lora.train.run(args)`` with training handed to :class:`MlxLmLoraTraining`.

    ``argv`` is the command line the run was parsed from (for the resume command it
    prints); ``train_with(training)`` trains the run in place of :func:`start_training`
    (``mlx-sched find-lr``).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if args.train_mode not in MODES:
        raise UserError(
            f"--train-mode {args.train_mode}: not hooked by mlx-sched (untested: its data "
            f"checks reject our tiny test models); the modes are {', '.join(MODES)}; run "
            f"{args.train_mode} with mlx_lm_lora.train."
        )
    try:
        schedule = schedule_from_config(args.lr_schedule, args.learning_rate)
    except ValueError as error:
        raise UserError(f"lr_schedule: {error}") from error
    args.lr_schedule = None  # mlx-lm-lora would build the optimizer with it; we own the rate
    log_dir = log_dir_for(args.adapter_path, args.log_dir)
    if args.train:
        hold_before_loading(args.adapter_path, log_dir)
    name = f"train_{args.train_mode}"
    original = getattr(lora_train, name)

    continue_with = resume_command(["lm-lora", *argv])
    summary = RunSummary(
        Path(args.adapter_path), log_dir, continue_with,
        mlx_lm_lora_next_steps(args.model, args.adapter_path, fused=bool(args.fuse)),
    )  # fmt: skip

    def train(**trainer_kwargs):
        training = MlxLmLoraTraining(
            args.train_mode, schedule, trainer_kwargs, trainer=original, log_dir=log_dir,
            **run_keywords(args), resume_command=continue_with,
        )  # fmt: skip
        if train_with is not None:
            return train_with(training)
        start_training(training, args, summary)

    # mlx_lm_lora.train seeds mlx only after the LoRA layers are made, so their initial
    # weights differ from run to run; seeded here, a run can be repeated and compared.
    mx.random.seed(args.seed)
    with metal_key_for_cpu(), replaced(lora_train, name, train), colour_codes_off(Colors):
        lora_train.run(args)
    summary.finished()
