"""The gradient of every update, seen inside the trainer's compiled step: its global norm,
clipping by that norm, and a guard that skips an update whose gradient is not finite.

:class:`GradientWatch` replaces the optimizer's ``apply_gradients`` on that one optimizer
object. Every trainer of the mlx-lm family calls ``optimizer.update(model, grad)`` inside its
compiled step with the gradient it applies (accumulated and averaged), and ``update`` calls
``apply_gradients``: the watch runs there, traced once with the step. What it finds is kept in
``optimizer.state`` (which the compiled step takes and returns), under keys of its own, so it
is read on the host only when someone asks: no retrace and no sync per step.
"""

from __future__ import annotations

import math
import numbers

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_map, tree_reduce

#: optimizer.state keys the watch keeps (left out of saved optimizer state).
GRAD_NORM = "mlx_sched_grad_norm"
UPDATE_SKIPPED = "mlx_sched_update_skipped"
WATCH_KEYS = (GRAD_NORM, UPDATE_SKIPPED)


class NonFiniteGradientError(ArithmeticError):
    """Too many updates in a row had a gradient that was not finite."""


def global_norm(gradients) -> mx.array:
    """The L2 norm of all gradients together, as ``mlx.optimizers.clip_grad_norm`` computes it."""

    def squared_norm(g):
        if g.dtype == mx.float16:  # as clip_grad_norm: float16 squares summed in float32
            g = g.astype(mx.float32)
        return g.square().sum()

    return mx.sqrt(tree_reduce(lambda total, g: total + squared_norm(g), gradients, 0.0))


def _select(ok, new, old):
    """``new`` where ``ok``, else ``old``, leaf by leaf, written into ``new``'s containers."""
    if isinstance(new, dict):
        for key in new:
            if key in old:
                new[key] = _select(ok, new[key], old[key])
        return new
    if isinstance(new, list):
        for i in range(min(len(new), len(old))):
            new[i] = _select(ok, new[i], old[i])
        return new
    if isinstance(new, mx.array):
        return mx.where(ok, new, old)
    return new


def _copy_tree(tree):
    """The tree's containers copied, its arrays shared: a snapshot ``apply_gradients`` can't
    change (it writes new arrays into the containers)."""
    if isinstance(tree, dict):
        return {key: _copy_tree(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_copy_tree(value) for value in tree]
    return tree


class GradientWatch:
    """Norm, clipping and the non-finite guard, installed on ``optimizer``.

    ``max_grad_norm``: clip by global norm before the update, exactly as
    ``mlx.optimizers.clip_grad_norm`` (``None``: no clipping). ``skip_non_finite``: an
    update whose gradient norm is NaN or infinite leaves the parameters and the optimizer
    state bitwise as they were (the norm is the norm before clipping).
    """

    def __init__(self, optimizer, *, max_grad_norm=None, skip_non_finite: bool = False):
        if max_grad_norm is not None and (
            isinstance(max_grad_norm, bool)
            or not isinstance(max_grad_norm, numbers.Real)
            or not 0 < max_grad_norm < math.inf
        ):
            raise ValueError(
                f"max_grad_norm must be a positive finite number, got {max_grad_norm!r}."
            )
        if getattr(optimizer, "optimizers", None) is not None:
            raise ValueError(
                "gradient norms, clipping and the non-finite guard take one optimizer; "
                "a MultiOptimizer is not supported."
            )
        self.optimizer = optimizer
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.skip_non_finite = skip_non_finite
        self._install()

    def _install(self) -> None:
        optimizer = self.optimizer
        original = type(optimizer).apply_gradients.__get__(optimizer)
        max_norm, guard = self.max_grad_norm, self.skip_non_finite

        def apply_gradients(gradients, parameters):
            if max_norm is None:
                norm = global_norm(gradients)
            else:
                gradients, norm = optim.clip_grad_norm(gradients, max_norm)
            state = optimizer.state
            if not guard:
                state[GRAD_NORM] = norm
                return original(gradients, parameters)
            before = _copy_tree({k: v for k, v in state.items() if k not in WATCH_KEYS})
            updated = original(gradients, parameters)
            ok = mx.isfinite(norm)
            _select(ok, state, before)
            state[GRAD_NORM], state[UPDATE_SKIPPED] = norm, mx.logical_not(ok)
            return tree_map(lambda new, old: mx.where(ok, new, old), updated, parameters)

        optimizer.apply_gradients = apply_gradients
        self.reset()

    def reset(self) -> None:
        """Put the watch's keys into ``optimizer.state`` (before a compiled step is traced)."""
        state = self.optimizer.state
        state.setdefault(GRAD_NORM, mx.array(0.0))
        if self.skip_non_finite:
            state.setdefault(UPDATE_SKIPPED, mx.array(False))

    def norm(self) -> float:
        """The gradient norm of the last update (before clipping)."""
        return self.optimizer.state[GRAD_NORM].item()

    def skipped(self) -> bool:
        """Whether the last update was skipped as non-finite."""
        return self.skip_non_finite and self.optimizer.state[UPDATE_SKIPPED].item()


class WatchesGradients:
    """What :class:`LRScheduleCallback` does with its :class:`GradientWatch`."""

    _watch: GradientWatch | None = None

    def _skipped(self) -> None:
        self.skipped_updates += 1
        self.skips_in_a_row += 1
        update = self.step + self.skipped_updates
        if self.log_dir is not None:
            self.log_scalar("train/skipped_updates", self.skipped_updates, update)
        if self.skips_in_a_row >= self.max_skipped_updates:
            raise NonFiniteGradientError(
                f"{self.skips_in_a_row} updates in a row had a non-finite gradient norm "
                f"({self._watch.norm()} at update {update}); parameters and optimizer state "
                "are those of the last finite update"
            )

    @property
    def gradient_watch(self) -> GradientWatch | None:
        """The optimizer's :class:`GradientWatch`, when gradients are watched."""
        return self._watch
