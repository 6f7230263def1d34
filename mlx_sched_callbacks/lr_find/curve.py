"""The numbers of a learning-rate range test, in plain numpy: the ramp, the smoothing, the
divergence stop rule and the three suggestion rules.

The conventions follow fastai's ``lr_find`` (whose default rule, ``valley``, is matched
exactly) and Lightning's ``Tuner.lr_find``:

* update ``i`` (0-based) of ``num_steps`` uses ``min_lr * (max_lr / min_lr) ** (i / (num_steps
  - 1))``, so the first update uses ``min_lr`` and the last ``max_lr``;
* the smoothed loss is a debiased exponential moving average with ``beta = 0.98``:
  ``avg_i = beta * avg_{i-1} + (1 - beta) * loss_i`` from ``avg_{-1} = 0``, and
  ``smoothed_i = avg_i / (1 - beta ** (i + 1))`` (fastai's ``AvgSmoothLoss``; Lightning's
  ``_LRCallback`` divides by ``1 - beta ** (global_step + 1)`` with ``global_step`` already 1
  after the first update, one power too many, which halves its first smoothed loss);
* the run stops after the first update whose loss is not finite, or whose smoothed loss is
  above ``divergence`` times the lowest smoothed loss before it. That update is kept in the
  curve, as Lightning and fastai keep it: it is measured data and the plot shows the blow-up.
  The suggestion rules never see it (they leave out the last ``skip_end`` points and cut the
  curve at its first non-finite point);
* the rules read the smoothed curve without its first ``num_steps // 10`` points (where the
  debiasing still amplifies noise; ``num_steps`` is the planned length, as fastai's ``num_it``,
  so an early stop does not move the skipped rates) and without its last ``skip_end = 5``
  points, then cut it before its first non-finite point.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

MODES = ("exponential", "linear")
RULES = ("valley", "steep", "minimum")
BETA = 0.98
MIN_STEPS = 10
SKIP_END = 5


def _check_positive_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive finite number, got {name}={value!r}.")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {name}={value!r}.")
    return value


def _check_steps(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}.")
    return int(value)


def check_divergence(divergence) -> float | None:
    """``divergence`` as a float, or ``None`` (no divergence stop); a ValueError otherwise."""
    if divergence is None:
        return None
    if isinstance(divergence, bool) or not isinstance(divergence, numbers.Real):
        raise ValueError(
            f"divergence must be a finite number > 1 or None, got divergence={divergence!r}."
        )
    if not (math.isfinite(divergence) and divergence > 1):
        raise ValueError(
            f"divergence must be a finite number > 1 or None, got divergence={divergence!r}."
        )
    return float(divergence)


def ramp_rates(
    min_lr: float, max_lr: float, num_steps: int, mode: str = "exponential"
) -> np.ndarray:
    """The rate of each update of the range test, ``min_lr`` first and ``max_lr`` last (float64).

    ``mode="exponential"`` spaces the rates evenly in log space (the usual choice: a good rate
    is found to within a factor, not a difference); ``"linear"`` spaces them evenly.
    """
    low = _check_positive_finite("min_lr", min_lr)
    high = _check_positive_finite("max_lr", max_lr)
    if not low < high:
        raise ValueError(
            f"min_lr must be below max_lr, got min_lr={min_lr!r} and max_lr={max_lr!r}."
        )
    min_lr, max_lr = low, high
    num_steps = _check_steps("num_steps", num_steps, MIN_STEPS)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got mode={mode!r}.")
    position = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
    if mode == "exponential":
        rates = min_lr * (max_lr / min_lr) ** position
    else:
        rates = min_lr + (max_lr - min_lr) * position
    # Pinned: the formula can land an ulp away from the end the user asked for.
    rates[0], rates[-1] = min_lr, max_lr
    if not np.all(np.diff(rates) > 0):
        raise ValueError(
            f"min_lr and max_lr are too close to give {num_steps} distinct rates, got "
            f"min_lr={min_lr!r} and max_lr={max_lr!r}."
        )
    return rates


class Smoother:
    """The debiased exponential moving average of the losses, one loss at a time.

    ``update(loss)`` returns the smoothed loss of the ``count``-th loss:
    ``avg / (1 - beta ** count)``. The formula is applied as it is: a non-finite loss makes
    that smoothed loss and every later one non-finite, as in fastai and Lightning.
    """

    def __init__(self, beta: float = BETA):
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < 1:
            raise ValueError(f"beta must be a number in [0, 1), got beta={beta!r}.")
        self.beta = float(beta)
        self.average = 0.0
        self.count = 0

    def update(self, loss: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * float(loss)
        return self.average / (1 - self.beta**self.count)


def smooth(losses, beta: float = BETA) -> np.ndarray:
    """The smoothed loss of each loss in ``losses``, as :class:`Smoother` gives them."""
    smoother = Smoother(beta)
    return np.array([smoother.update(loss) for loss in losses], dtype=np.float64)


class DivergenceWatch:
    """The stop rule of the range test, fed one (loss, smoothed loss) pair per update.

    ``check`` returns why the run should stop after this update (``"loss_not_finite"`` or
    ``"diverged"``) or ``None``. The ratio rule only fires once the best smoothed loss is
    positive: ``4 * best`` is no bound at all when ``best <= 0``.
    """

    def __init__(self, divergence: float | None = 4.0):
        self.divergence = check_divergence(divergence)
        self.best = math.inf

    def check(self, loss: float, smoothed: float) -> str | None:
        if not (math.isfinite(loss) and math.isfinite(smoothed)):
            return "loss_not_finite"
        diverged = (
            self.divergence is not None
            and 0 < self.best < math.inf
            and smoothed > self.divergence * self.best
        )
        self.best = min(self.best, smoothed)
        return "diverged" if diverged else None


def stop_index(losses, divergence: float | None = 4.0, beta: float = BETA) -> int | None:
    """The index of the update after which a range test with these losses stops, or ``None``."""
    smoother, watch = Smoother(beta), DivergenceWatch(divergence)
    for i, loss in enumerate(losses):
        if watch.check(float(loss), smoother.update(loss)) is not None:
            return i
    return None


@dataclass(frozen=True)
class Suggestion:
    """One rule's suggested rate, and the index (0-based update) of the curve it came from.

    Both are ``None`` when the curve left to the rule cannot give that suggestion.
    For ``minimum`` the index is the lowest loss and the rate a tenth of the rate there.
    """

    rule: str
    rate: float | None
    index: int | None

    def to_dict(self) -> dict:
        """JSON-safe, with ``update = index + 1``: the x of the TensorBoard curves."""
        update = None if self.index is None else self.index + 1
        return {"rate": self.rate, "index": self.index, "update": update}


def rule_window(length: int, num_steps: int | None = None, skip_end: int = SKIP_END) -> range:
    """The indices of a curve of ``length`` points that the rules may read, before the NaN cut.

    The first ``num_steps // 10`` (``num_steps`` defaults to ``length``) and the last
    ``skip_end`` points are left out; a curve too short for both gives an empty range.
    """
    length = _check_steps("length", length, 0)
    num_steps = length if num_steps is None else _check_steps("num_steps", num_steps, 0)
    skip_end = _check_steps("skip_end", skip_end, 0)
    return range(num_steps // 10, max(num_steps // 10, length - skip_end))


def longest_decreasing_end(losses: np.ndarray) -> tuple[int, int]:
    """``(end, length)`` of the longest strictly decreasing subsequence of ``losses``.

    ``end`` is the index of its last point; of several longest ones, the one that ends
    first (as fastai's ``valley`` picks it). O(n^2) time; ``losses`` must be non-empty.
    """
    lengths = np.ones(len(losses), dtype=np.int64)
    for i in range(1, len(losses)):
        higher_before = losses[:i] > losses[i]
        if higher_before.any():
            lengths[i] = lengths[:i][higher_before].max() + 1
    end = int(np.argmax(lengths))  # the first index of the longest length
    return end, int(lengths[end])


def valley_index(losses: np.ndarray) -> int | None:
    """fastai's ``valley`` rule on ``losses``: an index, or ``None`` where it has no valley.

    Along the longest strictly decreasing subsequence (length ``L``, last index ``end``),
    fastai takes ``start = end - L`` (the run's start if it were contiguous, less one) and
    suggests ``start + int(L / 3) + int(L / 3 / 2)``: about halfway into the steep part.
    Two cases differ from fastai, where its answer means nothing: a curve that never falls
    (``L = 1``; fastai's ``start`` keeps its initial 0 and it suggests the lowest rate) and
    ``L = 2`` with ``end = 1`` (the index is -1 and fastai's ``lrs[-1]`` is the highest
    rate). Both give ``None`` here.
    """
    if len(losses) == 0:
        return None
    end, length = longest_decreasing_end(losses)
    if length == 1:
        return None
    third = length / 3
    index = (end - length) + int(third) + int(third / 2)
    return index if index >= 0 else None


def steep_index(rates: np.ndarray, losses: np.ndarray) -> int | None:
    """The index of the steepest fall of ``losses`` against ``log10(rates)``, or ``None``.

    The slope is ``np.gradient`` (central differences inside, one-sided at the two ends)
    over ``log10`` of the rates; ``None`` for fewer than two points or a curve that never
    falls (no negative slope, so no descent to be steepest).
    """
    if len(losses) < 2:
        return None
    slopes = np.gradient(losses, np.log10(rates))
    index = int(np.argmin(slopes))
    return index if slopes[index] < 0 else None


def minimum_index(losses: np.ndarray) -> int | None:
    """The index of the lowest loss (the first, if tied), or ``None`` for an empty curve."""
    return int(np.argmin(losses)) if len(losses) else None


def suggest(
    rates, smoothed_loss, *, num_steps: int | None = None, skip_end: int = SKIP_END
) -> dict[str, Suggestion]:
    """The three suggestions, ``{"valley": ..., "steep": ..., "minimum": ...}``, for a curve.

    The rules read :func:`rule_window`, cut before the first non-finite smoothed loss in it
    (fastai's order: skip first, then cut). ``valley`` and ``steep`` suggest the rate at
    their index; ``minimum`` a tenth of the rate at the lowest loss. A rule that cannot
    answer on what is left (too few points, no fall) gives a :class:`Suggestion` of ``None``.
    """
    rates = np.asarray(rates, dtype=np.float64)
    smoothed_loss = np.asarray(smoothed_loss, dtype=np.float64)
    if rates.ndim != 1 or rates.shape != smoothed_loss.shape:
        raise ValueError(
            "rates and smoothed_loss must be 1-D and of one length, got shapes "
            f"{rates.shape} and {smoothed_loss.shape}."
        )
    window = rule_window(len(rates), num_steps, skip_end)
    first = window.start
    losses = smoothed_loss[first : window.stop]
    not_finite = np.flatnonzero(~np.isfinite(losses))
    if len(not_finite):
        losses = losses[: not_finite[0]]
    window_rates = rates[first : first + len(losses)]

    def at(rule, index, divide=1.0):
        if index is None:
            return Suggestion(rule, None, None)
        return Suggestion(rule, float(window_rates[index]) / divide, first + index)

    return {
        "valley": at("valley", valley_index(losses)),
        "steep": at("steep", steep_index(window_rates, losses)),
        "minimum": at("minimum", minimum_index(losses), divide=10.0),
    }
