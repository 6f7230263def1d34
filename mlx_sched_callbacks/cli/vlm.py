"""``mlx-sched vlm``: ``python -m mlx_vlm.train``'s pipeline unchanged, training handed to
:class:`~mlx_sched_callbacks.trainers.mlx_vlm.MlxVlmTraining`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx_vlm.train as mlx_vlm_cli
from mlx_vlm.trainer.common import engine
from mlx_vlm.trainer.core import Colors

from ..trainers.common import replaced
from ..trainers.mlx_vlm import MlxVlmTraining
from .common import Parser, UserError, colour_codes_off, unknown_keys_line
from .run_options import (
    add_run_options,
    hold_before_loading,
    log_dir_for,
    resume_command,
    run_keywords,
    schedule_from_config,
    start_training,
)
from .summary import RunSummary, mlx_vlm_next_steps

UNKNOWN_CONFIG = "Unknown config options: "


class VlmParser(Parser):
    """mlx_vlm.train refuses a config key it does not read: said in one line, with the
    closest known key."""

    def error(self, message):
        if message.startswith(UNKNOWN_CONFIG):
            unknown = message.removeprefix(UNKNOWN_CONFIG).split(", ")
            known = {action.dest for action in self._actions}
            line = unknown_keys_line(unknown, known, "--config")
            raise UserError(f"{line}; mlx_vlm.train refuses keys it does not read.")
        super().error(message)


def _parser_with_our_options(build_parser):
    def build(*args, **kwargs):
        parser = build_parser(*args, **kwargs)
        parser.__class__ = VlmParser
        parser.prog = "mlx-sched vlm"
        parser.description = (
            "python -m mlx_vlm.train with a learning-rate schedule set before every update, "
            "TensorBoard logs and exact resume. Takes every mlx_vlm.train flag and --config "
            "key; lr_schedule may be mlx-lm's form or mlx_sched_callbacks' to_dict() form."
        )
        add_run_options(parser, folder="OUTPUT_PATH")
        parser.add_argument(
            "--lr-schedule",
            type=json.loads,
            default=None,
            help="the schedule as JSON (or lr_schedule: in --config), e.g. "
            '\'{"name": "cosine_decay", "arguments": [1e-4, 1000], "warmup": 100}\' '
            "(default: --learning-rate throughout)",
        )
        parser.add_argument(
            "--strict-config",
            action="store_true",
            help="accepted as by the other commands; mlx_vlm.train already refuses a "
            "--config key it does not read",
        )
        return parser

    return build


def main(argv=None) -> None:
    """``mlx-sched vlm``: mlx-vlm's pipeline, training handed to :class:`MlxVlmTraining`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    run(*parse_args(argv), argv)


def parse_args(argv) -> tuple:
    """``(options, settings)`` as ``python -m mlx_vlm.train`` parses them, with our flags."""
    with replaced(mlx_vlm_cli, "build_parser", _parser_with_our_options(mlx_vlm_cli.build_parser)):
        return mlx_vlm_cli.parse_args(argv)


def run(options, settings, argv, train_with=None) -> None:
    """mlx-vlm's ``run(options, settings)``, training handed to :class:`MlxVlmTraining`.

    ``train_with(training)`` trains the run in place of :func:`start_training`
    (``mlx-sched find-lr``).
    """
    try:
        schedule = schedule_from_config(options.lr_schedule, options.learning_rate)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--lr-schedule {json.dumps(options.lr_schedule)}: {error}") from error
    folder = Path(settings.adapter_file).parent
    log_dir = log_dir_for(folder, options.log_dir)
    hold_before_loading(folder, log_dir)
    continue_with = resume_command(["vlm", *argv])
    summary = RunSummary(
        folder, log_dir, continue_with, mlx_vlm_next_steps(options.model, folder),
        adapters=Path(settings.adapter_file).name,
    )  # fmt: skip

    def train(model, optimizer, train_dataset, val_dataset, args, task, training_callback=None,
              seed=None, *, log_history=None):  # fmt: skip
        training = MlxVlmTraining(
            model, optimizer, schedule, args, train_dataset, val_dataset, task=task, seed=seed,
            log_dir=log_dir, **run_keywords(options),
            training_callback=training_callback, resume_command=continue_with,
        )  # fmt: skip
        if train_with is not None:
            train_with(training)
            return {}
        start_training(training, options, summary)
        return {}

    with replaced(engine, "train", train), colour_codes_off(Colors):
        mlx_vlm_cli.run(options, settings)
    summary.finished()


if __name__ == "__main__":
    main()
