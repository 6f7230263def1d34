"""``mlx-sched plot``: preview a schedule before training.

From a schedule spec file or an mlx-lm config, draw the rate over the run's
optimizer updates into a PNG (phase boundaries marked), print the rate at the
steps where it matters, and optionally write the planned curve into its own
TensorBoard run, to overlay it on the real one.

In a notebook::

    from mlx_sched_callbacks import schedules
    from mlx_sched_callbacks.plot import plot_schedule, schedule_table

    s = schedules.warmup_cosine(1e-3, warmup_steps=100, total_steps=1000)
    plot_schedule(s, 1000)             # a matplotlib Figure
    schedule_table(s, 1000)            # [("first", 0, 0.0), ("before boundary", 99, ...), ...]

matplotlib is optional: ``pip install 'mlx-sched-callbacks[plot]'``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import textwrap
from pathlib import Path

import numpy as np

from . import schedules
from .schedules import Schedule

__all__ = [
    "natural_length",
    "phase_boundaries",
    "plot_main",
    "plot_schedule",
    "schedule_table",
    "write_tensorboard_plan",
]

DEFAULT_TAG = "train/learning_rate"  # the tag LRScheduleCallback logs under
PLAN_MARKER = "mlx_sched_plan.json"  # beside the event files of a plan written by this module
MATPLOTLIB_MISSING = (
    "matplotlib is not installed; install it with: pip install 'mlx-sched-callbacks[plot]' "
    "(from a clone: pip install -e '.[plot]')"
)
# Above this many steps the plot draws a min/max envelope per bucket of steps
# instead of every point: the same picture, at a cost that does not grow with the run.
ENVELOPE_ABOVE = 100_000
ENVELOPE_BUCKETS = 8_000


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(MATPLOTLIB_MISSING) from None
    return Figure, FigureCanvasAgg


def _check_steps(owner: str, steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"{owner}: steps must be a positive integer, got {steps!r}.")
    return int(steps)


# -- what a schedule looks like ----------------------------------------------


def _boundaries_with_depth(schedule: Schedule) -> list[tuple[int, int]]:
    """``(step, depth)`` of every phase change the schedule reaches, in step order.

    Depth 0 is a boundary of the outermost join. A nested join's boundaries are
    offset by the step its phase starts at; those past the end of that phase
    never take effect and are left out.
    """
    found: list[tuple[int, int]] = []

    def walk(s: Schedule, offset: int, limit: float, depth: int) -> None:
        if not isinstance(s, schedules.join_schedules):
            return
        starts = [0, *s.boundaries]
        for i, inner in enumerate(s.schedules):
            start = offset + starts[i]
            if start >= limit:
                break
            end = offset + s.boundaries[i] if i < len(s.boundaries) else limit
            if i:
                found.append((start, depth))
            walk(inner, start, min(end, limit), depth + 1)

    walk(schedule, 0, math.inf, 0)
    return sorted(found)


def phase_boundaries(schedule: Schedule) -> list[int]:
    """The steps at which a phase of a (possibly nested) join takes over, sorted.

    A nested join's boundaries are offset by the step its phase starts at:
    ``join([warmup, join([a, b], [50])], [100])`` changes phase at 100 and 150.
    """
    return [step for step, _ in _boundaries_with_depth(schedule)]


def natural_length(schedule: Schedule) -> int | None:
    """The step from which the schedule stays at its final value, or ``None`` if it never does.

    ``cosine_decay(init, 1000)`` -> 1000; a join -> its last boundary plus the
    last phase's; ``exponential_decay``, ``inverse_sqrt``, ``cosine_restarts`` -> None.
    """
    if isinstance(schedule, schedules.constant):
        return 0
    if isinstance(schedule, schedules.linear_schedule):
        return schedule.steps
    if isinstance(schedule, (schedules.cosine_decay, schedules.polynomial_decay)):
        return schedule.decay_steps
    if isinstance(schedule, (schedules.exponential_decay, schedules.step_decay)):
        return 0 if schedule.decay_rate == 1 or schedule.init == 0 else None
    if isinstance(schedule, schedules.join_schedules):
        last = natural_length(schedule.schedules[-1])
        if last is None:
            return None
        if not schedule.boundaries:
            return last
        return schedule.boundaries[-1] + last
    return None


def schedule_table(schedule: Schedule, steps: int) -> list[tuple[str, int, float]]:
    """``(point, step, rate)`` at the first step, around each boundary and at the last step.

    For each phase boundary ``b`` inside the run there are two rows: ``b - 1``, the
    last update of the phase before, and ``b``, the first of the next. ``rate`` is
    ``schedule(step)``, the value the callback sets before update ``step``. Rows that
    fall on the same step are merged, their names joined with ``" / "``.
    """
    steps = _check_steps("schedule_table", steps)
    wanted: list[tuple[str, int]] = [("first", 0)]
    for boundary in phase_boundaries(schedule):
        if boundary < steps:
            wanted += [("before boundary", boundary - 1), ("boundary", boundary)]
    wanted.append(("last", steps - 1))
    names: dict[int, list[str]] = {}
    for name, step in wanted:
        names.setdefault(step, [])
        if name not in names[step]:
            names[step].append(name)
    return [(" / ".join(names[step]), step, schedule(step)) for step in sorted(names)]


def _short(value) -> str:
    if isinstance(value, float):
        text = repr(value)
        return text if len(text) <= 10 else f"{value:.6g}"
    return repr(value)


def short_repr(schedule: Schedule) -> str:
    """A compact one-line form: positional arguments, floats to 6 significant digits."""
    if isinstance(schedule, schedules.join_schedules):
        inner = ", ".join(short_repr(s) for s in schedule.schedules)
        return f"join_schedules([{inner}], {schedule.boundaries!r})"
    args = ", ".join(_short(getattr(schedule, f)) for f in schedule._fields)
    return f"{schedule.name}({args})"


# -- the picture -------------------------------------------------------------


def _envelope(x: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Each bucket of consecutive points as its minimum and maximum, at its first x."""
    starts = np.linspace(0, len(x), buckets, endpoint=False).astype(np.int64)
    starts = np.unique(starts)
    with np.errstate(invalid="ignore"):
        low = np.minimum.reduceat(y, starts)
        high = np.maximum.reduceat(y, starts)
    # Keep the true first and last points so the curve starts and ends where it should.
    xs = np.concatenate([x[:1], np.repeat(x[starts], 2), x[-1:]])
    ys = np.concatenate([y[:1], np.column_stack([low, high]).ravel(), y[-1:]])
    return xs, ys


def plot_schedule(
    schedule: Schedule,
    steps: int,
    path: str | os.PathLike | None = None,
    ax=None,
    *,
    width: int = 1200,
    height: int = 500,
    dpi: int = 100,
    log_y: bool = False,
    title: str | None = None,
):
    """Draw the rate at steps ``0 .. steps - 1`` (x = optimizer update) and return the figure.

    Phase boundaries are dashed vertical lines (nested joins' dotted). With ``ax``
    (a matplotlib Axes) it draws there and returns ``ax.figure``; otherwise it
    makes a ``width`` x ``height`` pixel figure on the Agg backend (no display
    needed). With ``path`` it also saves the figure as an image there.
    """
    steps = _check_steps("plot_schedule", steps)
    figure_class, canvas_class = _matplotlib()
    own_figure = ax is None
    if own_figure:
        figure = figure_class(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
        canvas_class(figure)
        ax = figure.add_subplot()
    else:
        figure = ax.figure

    x = np.arange(steps, dtype=np.int64)
    y = schedule.values(steps)
    if steps > ENVELOPE_ABOVE:
        x_drawn, y_drawn = _envelope(x, y, ENVELOPE_BUCKETS)
    else:
        x_drawn, y_drawn = x, y
    ax.plot(
        x_drawn,
        y_drawn,
        color="C0",
        linewidth=1.6,
        marker="." if steps <= 100 else None,
        label="learning rate",
    )

    boundaries = [(b, depth) for b, depth in _boundaries_with_depth(schedule) if b < steps]
    labelled = set()
    for b, depth in boundaries:
        outer = depth == 0
        label = "phase boundary" if outer else "nested join's boundary"
        ax.axvline(
            b,
            color="0.35" if outer else "0.6",
            linestyle="--" if outer else ":",
            linewidth=1.0,
            zorder=0,
            label=None if label in labelled else label,
        )
        labelled.add(label)
        if len(boundaries) <= 20:
            ax.annotate(
                str(b),
                xy=(b, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                ha="left",
                va="top",
                fontsize=8,
                color="0.3",
            )

    ax.set_xlabel("step (optimizer update, 0-based)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.xaxis.set_major_formatter("{x:,.0f}")
    ax.set_ylabel("learning rate")
    ax.set_xlim(0, max(steps - 1, 1))
    finite = y[np.isfinite(y)]
    if log_y:
        ax.set_yscale("log")
    elif finite.size and finite.min() >= 0 and finite.max() > 0:
        ax.set_ylim(0, finite.max() * 1.1)
    if not log_y:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    ax.grid(True, alpha=0.25)
    if labelled:
        ax.legend(loc="best", fontsize=8)
    if title is None:
        title = short_repr(schedule)
        suffix = f"  ·  {steps:,} steps"
    else:
        suffix = ""
    # About 0.6 em per character at 10 pt; wrap long joins rather than cut them.
    room = 0.95 * (figure.bbox.width if own_figure else ax.bbox.width)
    per_line = max(int(room / (10 * figure.dpi / 72 * 0.6)), 30)
    lines = textwrap.wrap(title, per_line) or [""]
    if len(lines[-1]) + len(suffix) <= per_line:
        lines[-1] += suffix
    elif suffix:
        lines.append(suffix.strip(" ·"))
    ax.set_title("\n".join(lines), fontsize=10)

    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure


# -- TensorBoard -------------------------------------------------------------


def _plan_files(log_dir: Path) -> tuple[list[str], list[str]]:
    """The event files in ``log_dir``: those an earlier plan wrote, and the others."""
    ours: list[str] = []
    try:
        ours = json.loads((log_dir / PLAN_MARKER).read_text())["event_files"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not log_dir.is_dir():
        return [], []
    found = sorted(p.name for p in log_dir.glob("*tfevents*") if p.is_file())
    return [n for n in found if n in ours], [n for n in found if n not in ours]


def write_tensorboard_plan(
    schedule: Schedule,
    steps: int,
    log_dir: str | os.PathLike,
    *,
    every: int = 1,
    tag: str = DEFAULT_TAG,
) -> int:
    """Write the planned curve into its own TensorBoard run; return the number of points.

    The x-axis is LRScheduleCallback's: the point at ``x = n + 1`` holds
    ``schedule(n)``, for every ``x`` in ``1 .. steps`` that is a multiple of
    ``every`` (the points a callback with ``log_every=every`` would log). Give the
    plan a directory of its own beside the real run (``runs/exp1_plan`` beside
    ``runs/exp1``) and ``tensorboard --logdir runs`` overlays the two.

    Writing the plan again into the same directory replaces the earlier plan. A
    directory with event files this function did not write (a training run's)
    is refused, since a plan written there would draw over the real curve.
    """
    from .events import EventWriter

    steps = _check_steps("write_tensorboard_plan", steps)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(
            f"write_tensorboard_plan: every must be a positive integer, got {every!r}."
        )
    log_dir = Path(log_dir)
    ours, theirs = _plan_files(log_dir)
    if theirs:
        raise ValueError(
            f"write_tensorboard_plan: {log_dir} already holds TensorBoard event files "
            f"that are not a plan ({theirs[0]}{', ...' if len(theirs) > 1 else ''}); a "
            "plan written there would draw over that run. Give the plan a directory of "
            f"its own, e.g. {log_dir.name}_plan beside it."
        )
    for name in ours:
        (log_dir / name).unlink(missing_ok=True)

    writer = EventWriter(log_dir)
    try:
        (log_dir / PLAN_MARKER).write_text(
            json.dumps(
                {
                    "schedule": schedule.to_dict(),
                    "steps": steps,
                    "every": every,
                    "tag": tag,
                    "event_files": [writer.path.name],
                },
                indent=1,
            )
            + "\n"
        )
        at, add = schedule.at, writer.add_scalar
        # at() is what the callback logs, so the two curves match point for point.
        for x in range(every, steps + 1, every):
            add(tag, at(x - 1), x)
    finally:
        writer.close()
    return steps // every


# -- the command -------------------------------------------------------------

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
    from .cli import Parser  # errors in one line, as every mlx-sched command's

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
    from .cli import one_line, schedule_from_config

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
    from .cli import UserError, lora_args, one_line, schedule_from_config

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


def plot_main(argv: list[str]) -> None:
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
    if args.tensorboard is not None and _plan_files(args.tensorboard)[1]:
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
        print(f"{name:<28} {step:>10}  {value!r}")
    print()
    later = [b for b in phase_boundaries(schedule) if b >= steps]
    if later:
        print(f"note: boundaries past the last step {steps - 1} never take effect: {later}")
    end = natural_length(schedule)
    if end is not None and end > steps - 1:
        print(
            f"note: the rate is still changing at the last step {steps - 1}; it reaches its "
            f"final value {schedule(end)!r} at step {end}."
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
