"""A schedule's preview: its curve as a PNG, its rates at the steps that matter, its plan as
a TensorBoard run. The ``mlx-sched plot`` command (``cli/plot.py``) draws with it.

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

import json
import math
import os
import textwrap
from pathlib import Path

import numpy as np

from . import schedules
from .schedules import Schedule

__all__ = [
    "format_rate",
    "natural_length",
    "phase_boundaries",
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


def format_rate(value: float) -> str:
    """A rate in one format for every row: 7 significant digits, as float32 holds them."""
    return f"{value:.6e}"


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


def plan_files(log_dir: Path) -> tuple[list[str], list[str]]:
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
    ours, theirs = plan_files(log_dir)
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
