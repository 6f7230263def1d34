"""``mlx-sched plot``: preview a schedule before training, from a spec file or an mlx-lm
config."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..plot import (
    DEFAULT_TAG,
    MATPLOTLIB_MISSING,
    format_rate,
    natural_length,
    phase_boundaries,
    plan_files,
    plot_schedule,
    schedule_table,
    short_repr,
    write_tensorboard_plan,
)
from ..schedules import Schedule
from .common import Parser, UserError, one_line
from .lora import lora_args
from .run_options import schedule_from_config

DESCRIPTION = """\
Preview a learning-rate schedule before training: draw it to a PNG, print the rate
at the first step, around every phase boundary and at the last step, and
optionally write the planned curve into a TensorBoard run of its own.

Give the schedule in one of two ways:
  SPEC            a JSON or YAML file with a schedule in mlx_sched_callbacks'
                  to_dict() form, e.g.
                    {"name": "join_schedules", "boundaries": [100],
                     "schedules": [{"name": "linear_schedule", "init": 0.0,
                                    "end": 0.001, "steps": 100},
                                   {"name": "cosine_decay", "init": 0.001,
                                    "decay_steps": 900}]}
                  or in mlx-lm's lr_schedule form
                    {"name": "cosine_decay", "arguments": [0.001, 900], "warmup": 100}
  --config FILE   an mlx-lm config YAML, read as mlx_lm.lora / mlx-sched lora read it:
                  its lr_schedule (either form above; without one the rate is the
                  constant learning_rate) and its iters. The model and data need not exist.

The x-axis is the optimizer update (0-based): the rate at step n is the one the
callback sets before update n.
"""

EPILOG = """\
examples:
  mlx-sched plot --config lora.yaml
  mlx-sched plot schedule.json --steps 5000 --out warmup.png
  mlx-sched plot --config lora.yaml --tensorboard runs/exp1_plan
      then `tensorboard --logdir runs` shows the plan over the real run runs/exp1
"""


def _parser() -> argparse.ArgumentParser:

    parser = Parser(
        prog="mlx-sched plot",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "spec", nargs="?", metavar="SPEC", help="schedule spec file (.json, .yaml or .yml)"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="mlx-lm config YAML: plot its lr_schedule over its iters",
    )
    parser.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="run length in optimizer updates; plots steps 0..N-1 (default: from --config, "
        "iters / grad_accumulation_steps; for SPEC, the step where the schedule reaches "
        "its final value, plus one, when it has one)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("lr_schedule.png"),
        metavar="PNG",
        help="image to write (default: ./lr_schedule.png)",
    )
    parser.add_argument(
        "--width", type=int, default=1200, help="image width in pixels (default: 1200)"
    )
    parser.add_argument(
        "--height", type=int, default=500, help="image height in pixels (default: 500)"
    )
    parser.add_argument(
        "--dpi", type=int, default=100, help="dots per inch: text size vs. image (default: 100)"
    )
    parser.add_argument("--log-y", action="store_true", help="logarithmic rate axis")
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        type=Path,
        help="also write the planned curve (tag train/learning_rate, x = update count, as "
        "the callback logs it) into the TensorBoard run DIR; use a directory of its own "
        "beside the real run, e.g. runs/exp1_plan beside runs/exp1",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="K",
        help="with --tensorboard, write every K-th point only (as log_every=K; default: 1)",
    )
    return parser


def _read_spec(parser: argparse.ArgumentParser, path: str) -> Schedule:

    where = f"SPEC {path}"
    file = Path(path)
    if not file.is_file():
        parser.error(f"{where}: no such file.")
    try:
        text = file.read_text()
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml
            from mlx_lm.lora import yaml_loader  # mlx-lm's float rule: 1e-5 is a number

            spec = yaml.load(text, yaml_loader)
        else:
            spec = json.loads(text)
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError
        parser.error(f"{where}: cannot parse it ({one_line(error)}).")
    if isinstance(spec, dict) and "lr_schedule" in spec:
        parser.error(
            f"{where} looks like an mlx-lm config (it has lr_schedule); pass it as --config {path}"
        )
    if not isinstance(spec, dict) or not spec:
        parser.error(f"{where}: expected a schedule (a mapping with a name), got {spec!r}.")
    try:
        return schedule_from_config(spec, 0.0)
    except (ValueError, TypeError) as error:
        parser.error(f"{where}: {one_line(error)}")


def _read_config(parser: argparse.ArgumentParser, path: str) -> tuple[Schedule, int, str]:

    where = f"--config {path}"
    try:
        args = lora_args(["--config", path])
    except UserError as error:  # no such file, not YAML, not a mapping
        parser.error(str(error))
    try:
        schedule = schedule_from_config(args.lr_schedule, args.learning_rate)
    except (ValueError, TypeError) as error:
        parser.error(f"{where}: lr_schedule: {one_line(error)}")
    iters, accumulate = args.iters, args.grad_accumulation_steps
    if not isinstance(iters, int) or iters < 1:
        parser.error(f"{where}: iters must be a positive integer, got {iters!r}.")
    if not isinstance(accumulate, int) or accumulate < 1:
        parser.error(
            f"{where}: grad_accumulation_steps must be a positive integer, got {accumulate!r}."
        )
    steps = iters // accumulate
    if steps < 1:
        parser.error(
            f"{where}: iters={iters} makes no optimizer update with "
            f"grad_accumulation_steps={accumulate}."
        )
    if accumulate == 1:
        source = f"iters from {where}"
    else:
        source = f"iters={iters} // grad_accumulation_steps={accumulate} from {where}"
    return schedule, steps, source


def _plot(argv: list[str]) -> None:
    """``mlx-sched plot``: see ``mlx-sched plot --help``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.spec is None) == (args.config is None):
        parser.error("give either a SPEC file or --config FILE (one of them, not both).")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive number of optimizer updates, got {args.steps}.")
    if args.every < 1:
        parser.error(f"--every must be a positive integer, got {args.every}.")
    if args.width < 200 or args.height < 150:
        parser.error(
            f"--width and --height are pixels, at least 200 x 150, got {args.width} x "
            f"{args.height}."
        )
    if args.dpi < 10:
        parser.error(f"--dpi must be at least 10, got {args.dpi}.")

    if args.config is not None:
        schedule, steps, source = _read_config(parser, args.config)
    else:
        schedule = _read_spec(parser, args.spec)
        steps, source = None, ""
        end = natural_length(schedule)
        if end:
            steps, source = end + 1, f"inferred: the schedule reaches its final value at {end}"
    if args.steps is not None:
        steps, source = args.steps, "--steps"
    if steps is None:
        parser.error(
            f"--steps N is required: {short_repr(schedule)} has no natural end to take the "
            "run length from. Give the run length in optimizer updates, e.g. --steps 1000."
        )
    # Fail on a bad output path before any work, with the argument's name.
    if not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: directory {args.out.parent} does not exist.")
    if args.tensorboard is not None and plan_files(args.tensorboard)[1]:
        parser.error(
            f"--tensorboard {args.tensorboard} already holds TensorBoard event files that are "
            "not a plan (a training run's?); a plan written there would draw over that run. "
            f"Give the plan a directory of its own, e.g. {args.tensorboard.name}_plan beside it."
        )

    print(f"schedule: {schedule!r}")
    print(f"steps: {steps} optimizer updates, 0..{steps - 1} ({source})")
    print()
    print(f"{'point':<28} {'step':>10}  learning_rate")
    for name, step, value in schedule_table(schedule, steps):
        print(f"{name:<28} {step:>10}  {format_rate(value)}")
    print()
    later = [b for b in phase_boundaries(schedule) if b >= steps]
    if later:
        print(f"note: boundaries past the last step {steps - 1} never take effect: {later}")
    end = natural_length(schedule)
    if end is not None and end > steps - 1:
        print(
            f"note: the rate is still changing at the last step {steps - 1}; it reaches its "
            f"final value {format_rate(schedule(end))} at step {end}."
        )
    last = schedule(steps - 1)
    if not math.isfinite(last):
        print(
            f"note: the rate is {last!r} by the last step; the callback refuses non-finite rates."
        )

    plot_schedule(
        schedule,
        steps,
        args.out,
        width=args.width,
        height=args.height,
        dpi=args.dpi,
        log_y=args.log_y,
    )
    print(f"wrote {args.out} ({args.width} x {args.height} px)")
    if args.tensorboard is not None:
        points = write_tensorboard_plan(schedule, steps, args.tensorboard, every=args.every)
        parent = args.tensorboard.parent
        print(
            f"wrote {points} points of {DEFAULT_TAG} to {args.tensorboard}; overlay it on the "
            f"real run with: tensorboard --logdir {parent}"
        )


def main(argv) -> None:
    try:
        _plot(argv)
    except ImportError as error:  # matplotlib, an optional extra
        if str(error) != MATPLOTLIB_MISSING:
            raise
        raise UserError(str(error)) from error
