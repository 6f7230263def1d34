"""A trainer's ``trainer.json``: the fields every trainer state holds, and the random states
(numpy's, mlx's key) in their JSON form."""

from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .checkpoint import check_fit, read_arrays

TRAINER_STATE = "trainer.json"

TRAINER_STATE_VERSION = 2  # version 1 reseeded mlx from the iteration; still read

# Fields every trainer state holds; adapters add their data position's.
_FIELDS = {
    "iteration": int,
    "iters": int,
    "grad_accumulation_steps": int,
    "batch_size": int,
    "trained_tokens": (int, float),
    "mx_random_keys": list,
}


def numpy_state_to_json(state) -> list:
    kind, keys, position, has_gauss, cached = state
    return [kind, [int(k) for k in keys], int(position), int(has_gauss), float(cached)]


def numpy_state_from_json(state, where: str) -> tuple:
    """numpy's global random state from its JSON form, refusing anything numpy would not take."""
    try:
        kind, keys, position, has_gauss, cached = state
        parsed = (kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached)
        ok = (
            kind == "MT19937"
            and len(keys) == 624
            and all(isinstance(k, int) and 0 <= k < 2**32 for k in keys)
            and isinstance(position, int)
            and 0 <= position <= 624
        )
        if ok:
            np.random.RandomState().set_state(parsed)  # numpy's own checks
            return parsed
    except (TypeError, ValueError, OverflowError):
        pass
    raise ValueError(f"{where} is not a valid numpy MT19937 random state.")


def _mx_seed(iteration: int) -> int:
    """The seed a version 1 checkpoint reseeded mlx with (read, never written)."""
    return int(np.random.default_rng(iteration).integers(2**31))


def mx_random_key() -> list[int]:
    """mlx's current random key as ``[hi, lo]``; :func:`set_mx_random_key` sets it again."""
    return [int(word) for word in mx.random.state[0].tolist()]


def set_mx_random_key(key) -> None:
    """Make ``key`` (``[hi, lo]``) mlx's random key: the next draws are the saved run's."""
    hi, lo = key
    mx.random.seed((hi << 32) | lo)


def _check_random_keys(keys, where: str) -> None:
    words = [word for key in keys for word in (key if isinstance(key, list) else [None])]
    pairs = all(isinstance(key, list) and len(key) == 2 for key in keys)
    if not keys or not pairs or not all(_is_uint32(word) for word in words):
        raise ValueError(f"{where}: mx_random_keys must be a list of [hi, lo] uint32 pairs.")


def _is_uint32(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


def load_adapters_checked(model, path: str | os.PathLike) -> None:
    """Load trainable weights, refusing names, shapes or dtypes this model does not have.

    (``model.load_weights(..., strict=False)`` would skip the checks.)
    """
    path = Path(path)
    loaded = read_arrays(path, "adapters")
    expected = dict(tree_flatten(model.trainable_parameters()))
    check_fit(loaded, expected, f"adapters {path}", "this model")
    model.load_weights(list(loaded.items()), strict=False)
