"""``LRScheduleCallback``: sets the optimizer's rate from a schedule before every update, logs
it to TensorBoard, and checkpoints its step so a run resumes exactly.

``core`` holds the callback and its two hooks, ``hyperparameters`` what it schedules besides
the rate, ``log`` its TensorBoard writer, ``state`` its checkpoint.
"""

from .core import DEFAULT_TAG, LRScheduleCallback
from .hyperparameters import schedule_differences
from .state import STATE_FORMAT, STATE_VERSION

__all__ = [
    "DEFAULT_TAG",
    "STATE_FORMAT",
    "STATE_VERSION",
    "LRScheduleCallback",
    "schedule_differences",
]
