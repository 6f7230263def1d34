"""Learning-rate schedules for MLX that set the rate, log it to TensorBoard, and resume exactly."""

from . import schedules
from .callback import LRScheduleCallback
from .events import EventWriter
from .lr_find import find_lr

__all__ = ["EventWriter", "LRScheduleCallback", "find_lr", "schedules"]
__version__ = "0.1.0"
