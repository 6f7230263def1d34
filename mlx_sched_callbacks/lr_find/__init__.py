"""A learning-rate range test for MLX loops (as Lightning's ``Tuner.lr_find`` and fastai's
``lr_find``): ramp the rate over a short run, watch the loss, suggest a rate.

``curve`` holds the numbers (pure numpy); ``finder`` runs the test on a hand-written loop,
writes its outputs and turns a suggestion into mlx-lm's ``lr_schedule`` config.
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
    find_lr,
    lr_schedule_yaml,
    plot_result,
    suggested_schedule,
    write_outputs,
)

__all__ = [
    "DivergenceWatch",
    "LRFindResult",
    "Smoother",
    "Suggestion",
    "find_lr",
    "lr_schedule_yaml",
    "plot_result",
    "ramp_rates",
    "smooth",
    "stop_index",
    "suggest",
    "suggested_schedule",
    "write_outputs",
]
