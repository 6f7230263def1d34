"""The run core: what every trainer shares, written once.

``training`` holds :class:`TrainingRun`, its count and its hook; the rest are its concerns,
one module each: ``reports`` (the trainer's reports and validations in TensorBoard),
``stops`` (polite stops and disk failures), ``saving`` (writing checkpoints), ``resume``
(finding, checking and restoring them), ``checkpoint`` (the checkpoint folder's format and
its verification), ``state`` (``trainer.json`` and the random states), ``lock`` (one writer
per run folder). A trainer adapter subclasses :class:`TrainingRun`; see ``trainers/``.
"""

from ..stopping import TrainingStopped
from .checkpoint import (
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    load_optimizer_state,
    save_optimizer_state,
)
from .lock import RunFolderBusyError
from .reports import MLX_LM_REPORT_TAGS
from .state import TRAINER_STATE, load_adapters_checked, mx_random_key, set_mx_random_key
from .training import TrainingRun

__all__ = [
    "MLX_LM_REPORT_TAGS",
    "TRAINER_STATE",
    "RunFolderBusyError",
    "TrainingRun",
    "TrainingStopped",
    "checkpoint_problem",
    "latest_checkpoint",
    "list_checkpoints",
    "load_adapters_checked",
    "load_optimizer_state",
    "mx_random_key",
    "save_optimizer_state",
    "set_mx_random_key",
]
