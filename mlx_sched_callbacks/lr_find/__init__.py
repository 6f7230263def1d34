"""A learning-rate range test for MLX (as Lightning's ``Tuner.lr_find`` and fastai's
``lr_find``): ramp the rate over a short run, watch the loss, suggest a rate.

``curve`` holds the numbers (pure numpy); ``finder`` measures the losses, runs the test on
a hand-written loop and turns a suggestion into mlx-lm's ``lr_schedule`` config; ``run``
runs it on a trainer through a ``TrainingRun`` adapter and holds :func:`find_lr`, the
entry for both; ``outputs`` writes the JSON, the PNG and the TensorBoard run.
"""

from .curve import (
    DivergenceWatch,
    Smoother,
    Suggestion,
    ramp_rates,
    smooth,
    stop_index,
    suggest,
)
from .finder import (
    LRFindResult,
    Measurement,
    find_lr_with_step,
    lr_schedule_yaml,
    suggested_schedule,
)
from .outputs import plot_result, write_outputs
from .run import RampSchedule, find_lr, find_lr_on_run

__all__ = [
    "DivergenceWatch",
    "LRFindResult",
    "Measurement",
    "RampSchedule",
    "Smoother",
    "Suggestion",
    "find_lr",
    "find_lr_on_run",
    "find_lr_with_step",
    "lr_schedule_yaml",
    "plot_result",
    "ramp_rates",
    "smooth",
    "stop_index",
    "suggest",
    "suggested_schedule",
    "write_outputs",
]
