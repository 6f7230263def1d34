"""Learning-rate schedules for MLX that set the rate, log it to TensorBoard, and resume exactly."""

from . import schedules
from .callback import LRScheduleCallback
from .events import EventWriter

__all__ = ["EventWriter", "LRScheduleCallback", "schedules"]
__version__ = "0.1.0"
