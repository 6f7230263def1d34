"""What a range test leaves on disk: ``lr_find.json``, ``lr_find.png`` and a TensorBoard run."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np

from .._files import write_bytes_atomic, write_json_atomic
from ..events import EventWriter

JSON_NAME = "lr_find.json"
PNG_NAME = "lr_find.png"
TENSORBOARD_DIR = "tensorboard"
TAGS = {"rate": "lr_find/rate", "loss": "lr_find/loss", "smoothed_loss": "lr_find/smoothed_loss"}
PLOT_HINT = 'pip install "mlx-sched-callbacks[plot]"'


def write_outputs(result, out: str | os.PathLike) -> dict:
    """Write ``result`` (an :class:`~.finder.LRFindResult`) into ``out`` (created):
    ``lr_find.json``, ``lr_find.png`` and ``tensorboard/``.

    The JSON is written atomically and holds no time or path, so equal results give equal
    bytes. The TensorBoard run has ``lr_find/rate``, ``lr_find/loss`` and
    ``lr_find/smoothed_loss`` at x = update (1-based); a run written again into the same
    folder hides the earlier one. Without matplotlib the PNG is skipped with a one-line hint
    on stderr. Returns (and stores in ``result.outputs``) the paths written, ``None`` for a
    skipped PNG, and the hint under ``"note"``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"json": str(out / JSON_NAME), "png": None, "tensorboard": str(out / TENSORBOARD_DIR)}
    write_json_atomic(out / JSON_NAME, result.to_dict())
    # The restart marker at step 1 hides an earlier test's points written to the same run.
    writer = EventWriter(out / TENSORBOARD_DIR, start_step=1)
    try:
        for i in range(len(result.rate)):
            writer.add_scalar(TAGS["rate"], float(result.rate[i]), i + 1)
            writer.add_scalar(TAGS["loss"], float(result.loss[i]), i + 1)
            writer.add_scalar(TAGS["smoothed_loss"], float(result.smoothed_loss[i]), i + 1)
    finally:
        writer.close()
    try:
        figure = plot_result(result)
    except ImportError:
        outputs["note"] = (
            f"lr_find: {out / PNG_NAME} not drawn, matplotlib is not installed: {PLOT_HINT}"
        )
        print(outputs["note"], file=sys.stderr, flush=True)
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        png = io.BytesIO()
        FigureCanvasAgg(figure).print_png(png)
        write_bytes_atomic(out / PNG_NAME, png.getvalue())
        outputs["png"] = str(out / PNG_NAME)
    result.outputs = outputs
    return outputs


def plot_result(result):
    """A matplotlib ``Figure``: loss and smoothed loss against the rate (log x), each
    suggestion a vertical line, the chosen one red and solid. Needs matplotlib."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(result.rate, result.loss, color="0.7", linewidth=0.8, label="loss")
    ax.plot(result.rate, result.smoothed_loss, color="C0", linewidth=1.6, label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    # The y range leaves out the last updates, which the rules do not read either: their
    # blow-up would flatten the part of the curve where the choice is made.
    shown = slice(0, max(1, len(result.rate) - result.settings["skip_end"]))
    values = np.concatenate([result.loss[shown], result.smoothed_loss[shown]])
    values = values[np.isfinite(values)]
    if len(values):
        low, high = float(values.min()), float(values.max())
        margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
        ax.set_ylim(low - margin, high + margin)
    colors = {"valley": "C2", "steep": "C1", "minimum": "C4"}
    for name, suggestion in result.suggestions.items():
        if suggestion.rate is None:
            continue
        chosen = name == result.chosen
        ax.axvline(
            suggestion.rate,
            color="red" if chosen else colors.get(name, "C3"),
            linestyle="-" if chosen else "--",
            linewidth=2.0 if chosen else 1.0,
            label=f"{name} {suggestion.rate:.3g}" + (" (chosen)" if chosen else ""),
        )
    stop = f", stopped: {result.reason}" if result.reason else ""
    ax.set_title(f"learning-rate range test, {len(result.rate)} updates{stop}")
    ax.legend(loc="best", fontsize="small")
    return figure
