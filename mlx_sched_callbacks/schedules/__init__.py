"""Learning-rate schedules that are plain data: saved, compared, previewed and resumed.

Each schedule is a pure function of the optimizer update count ``step``:

* called with a Python ``int`` it returns a Python ``float``, computed in double
  precision with ``math`` (the callback uses this);
* called with an ``mx.array`` step it returns an ``mx.array`` (float32), so the same
  object can be handed to an mlx optimizer as ``learning_rate=``;
* called with a numpy integer array it returns a float64 numpy array: the whole
  planned curve at once, for previews and plots.

The first five mirror ``mlx.optimizers`` names, argument names and order, so that
switching from ``mlx.optimizers`` changes only the import. Every schedule has
``to_dict()``; :func:`from_dict` rebuilds it from that JSON-safe form.

``base`` holds what every schedule shares, ``decays`` the single shapes, ``joins`` the
joined ones, ``plateau`` the one with state, ``config`` the readers of saved forms.
"""

from .base import MAX_STEP, Schedule
from .config import from_dict, from_mlx_lm_config
from .decays import (
    constant,
    cosine_decay,
    cosine_restarts,
    exponential_decay,
    inverse_sqrt,
    linear_schedule,
    polynomial_decay,
    step_decay,
)
from .joins import join_schedules, warmup_cosine, warmup_stable_decay
from .plateau import reduce_on_plateau

__all__ = [
    "MAX_STEP",
    "Schedule",
    "constant",
    "cosine_decay",
    "cosine_restarts",
    "exponential_decay",
    "from_dict",
    "from_mlx_lm_config",
    "inverse_sqrt",
    "join_schedules",
    "linear_schedule",
    "polynomial_decay",
    "reduce_on_plateau",
    "step_decay",
    "warmup_cosine",
    "warmup_stable_decay",
]
