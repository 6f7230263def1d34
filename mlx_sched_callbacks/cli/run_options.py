"""What every ``mlx-sched TRAINER`` command shares: its run options, and a run's start and end.

A trainer command (``lora``, ``lm-lora``, ``vlm``) runs that trainer's own
pipeline with training handed to a :class:`~mlx_sched_callbacks.run.TrainingRun`; around it, the
same flags, the same hold on the run folder before the model loads, the same
resume and the same last lines.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from ..callback.core import DEFAULT_MAX_SKIPPED_UPDATES
from ..run.lock import check_writable, hold_run_folders


def add_run_options(parser: argparse.ArgumentParser, folder: str = "ADAPTER_PATH") -> None:
    """``--log-dir``, ``--resume``, ``--keep-checkpoints``, ``--allow-schedule-change``."""
    ours = parser.add_argument_group("mlx-sched options")
    ours.add_argument(
        "--log-dir",
        type=str,
        default=None,
        help=f"TensorBoard log directory (default: {folder}/tensorboard)",
    )
    ours.add_argument(
        "--resume",
        action="store_true",
        help=f"continue from the newest complete checkpoint in {folder}/checkpoints "
        "(a fresh start, said so, if there is none)",
    )
    ours.add_argument(
        "--keep-checkpoints", type=int, default=3, help="checkpoints to keep (default: 3)"
    )
    ours.add_argument(
        "--allow-schedule-change",
        action="store_true",
        help="on --resume, continue with this run's schedule even if the checkpoint's differs",
    )
    add_training_options(parser)


def _whole(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def _number(positive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            relation = "> 0" if positive else ">= 0"
            raise argparse.ArgumentTypeError(f"expected a finite number {relation}, got {text!r}")
        return value

    return parse


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The best adapter, early stopping, gradient norms, clipping and the non-finite guard."""
    ours = parser.add_argument_group("mlx-sched training options")
    ours.add_argument(
        "--early-stopping-patience",
        type=_whole(1),
        default=None,
        metavar="N",
        help="stop after N validations without a validation loss lower than the best by more "
        "than --early-stopping-threshold (default: never); the best adapter is kept as "
        "best_adapters.safetensors whenever validation runs",
    )
    ours.add_argument(
        "--early-stopping-threshold",
        type=_number(positive=False),
        default=0.0,
        metavar="X",
        help="how much lower than the best a validation loss must be to count (default: 0)",
    )
    ours.add_argument(
        "--max-grad-norm",
        type=_number(positive=True),
        default=None,
        metavar="X",
        help="clip gradients to a global L2 norm of X before each update (default: no clipping)",
    )
    ours.add_argument(
        "--max-skipped-updates",
        type=_whole(0),
        default=DEFAULT_MAX_SKIPPED_UPDATES,
        metavar="N",
        help="updates with a non-finite gradient norm are skipped (parameters and optimizer "
        "state kept); stop after N in a row (default: "
        f"{DEFAULT_MAX_SKIPPED_UPDATES}; 0: no guard, a non-finite update is applied)",
    )


def run_keywords(options) -> dict:
    """The :class:`~mlx_sched_callbacks.run.TrainingRun` keywords that the run options give."""
    guard = options.max_skipped_updates
    return {
        "keep_checkpoints": options.keep_checkpoints,
        "run_config": dict(sorted(vars(options).items())),
        "early_stopping_patience": options.early_stopping_patience,
        "early_stopping_threshold": options.early_stopping_threshold,
        "log_grad_norm": True,
        "max_grad_norm": options.max_grad_norm,
        "skip_non_finite": guard > 0,
        "max_skipped_updates": max(guard, 1),
    }


def schedule_from_config(lr_schedule, learning_rate: float):
    """Our schedule for mlx-lm's ``lr_schedule`` (its own form or our ``to_dict`` form)."""
    from .. import schedules

    if not lr_schedule:
        return schedules.constant(learning_rate)
    mlx_lm_keys = {"arguments", "warmup", "warmup_init"}
    if isinstance(lr_schedule, dict) and mlx_lm_keys & lr_schedule.keys():
        return schedules.from_mlx_lm_config(lr_schedule)
    return schedules.from_dict(lr_schedule)


def log_dir_for(run_folder: str | Path, log_dir: str | None) -> str:
    """``--log-dir``, or ``RUN_FOLDER/tensorboard/<run folder's name>``: a folder of its own,
    so that TensorBoard lists the run by that name (events at the root of the folder it is
    given show as "."). A run whose events already sit at ``RUN_FOLDER/tensorboard`` (from
    an earlier release) keeps them there, so a resume draws one curve."""
    if log_dir:
        return log_dir
    root = Path(run_folder) / "tensorboard"
    if any(root.glob("events.out.tfevents.*")):
        return str(root)
    return str(root / (Path(run_folder).resolve().name or "run"))


def hold_before_loading(run_folder: str | Path, log_dir: str) -> None:
    """One writer per run: refuse at once, before a model loads, if another process holds it.

    An existing checkpoint folder that cannot be written is refused here too, before
    the model loads, rather than at the first checkpoint.
    """
    import mlx.core as mx

    if mx.distributed.init().rank() == 0:
        hold_run_folders(run_folder, log_dir)
        checkpoints = Path(run_folder) / "checkpoints"
        if checkpoints.is_dir():
            check_writable(checkpoints, "checkpoint folder")


def resume_command(argv=None) -> str:
    """The command line that continues this run: ``mlx-sched`` as called, with ``--resume``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["mlx-sched", *argv])


def start_training(training, options, summary, before_training=None, train_with=None) -> None:
    """Resume if asked and train; a stop or a refused resume ends with a short summary.

    The command prints ``summary.finished()`` once the trainer's pipeline has returned
    (after what it does after training: saving, fusing, testing). A polite stop
    (SIGINT, SIGTERM) ends this with ``TrainingStopped``, a ``SystemExit`` whose code
    (130, 143) becomes the process's exit code.
    """
    from ..stopping import TrainingStopped

    if options.resume:
        try:
            training.resume(allow_schedule_change=options.allow_schedule_change)
        except ValueError:
            summary.refused()
            raise
    if before_training is not None:
        before_training()
    try:
        (train_with or type(training).train)(training)
    except TrainingStopped as stop:
        summary.stopped(stop)
        raise
    summary.trained = True
