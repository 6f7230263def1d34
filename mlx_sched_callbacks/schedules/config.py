"""Schedules from their JSON form (``to_dict``) and from mlx-lm's ``lr_schedule`` config."""

from __future__ import annotations

import math
import numbers
import warnings

from .base import (
    MAX_STEP,
    Schedule,
    _check_int,
    _check_number,
    _describe,
)
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
from .joins import join_schedules
from .plateau import reduce_on_plateau

_KINDS = {
    cls.name: cls
    for cls in (
        constant,
        linear_schedule,
        cosine_decay,
        exponential_decay,
        step_decay,
        polynomial_decay,
        inverse_sqrt,
        cosine_restarts,
        join_schedules,
    )
}


def _constructor_fields(cls) -> tuple[list[str], list[str]]:
    defaults = cls.__init__.__defaults__ or ()
    required = list(cls._fields[: len(cls._fields) - len(defaults)])
    return required, list(cls._fields)


MAX_JOIN_DEPTH = 100  # how deep from_dict lets joins nest: deeper is refused, not a RecursionError


def from_dict(spec: dict) -> Schedule:
    """Rebuild a schedule from ``Schedule.to_dict()`` output (joins nested up to 100 deep)."""
    level = [spec]
    for _ in range(MAX_JOIN_DEPTH + 1):
        lists = [d["schedules"] for d in level if isinstance(d, dict) and "schedules" in d]
        inner = [s for schedules in lists if isinstance(schedules, list) for s in schedules]
        level = list({id(s): s for s in inner}.values())  # a part shared n times counts once
        if not level:
            return _from_dict(spec)
    raise ValueError(
        f"from_dict: join_schedules are nested more than {MAX_JOIN_DEPTH} deep; a real "
        "schedule needs a few joins, so the spec is malformed."
    )


def _from_dict(spec: dict) -> Schedule:
    if not isinstance(spec, dict):
        raise ValueError(f"from_dict: spec must be a dict, got {_describe(spec)}.")
    odd_keys = [k for k in spec if not isinstance(k, str)]
    if odd_keys:
        raise ValueError(f"from_dict: field names must be strings, got {odd_keys!r}.")
    name = spec.get("name")
    if not isinstance(name, str) or name not in _KINDS:
        raise ValueError(f"from_dict: name must be one of {sorted(_KINDS)}, got {name!r}.")
    cls = _KINDS[name]
    required, allowed = _constructor_fields(cls)
    missing = [f for f in required if f not in spec]
    if missing:
        raise ValueError(f"from_dict: {name} is missing field(s) {missing}; it needs {required}.")
    unknown = sorted(set(spec) - set(allowed) - {"name"})
    if unknown:
        raise ValueError(f"from_dict: {name} has unknown field(s) {unknown}; allowed: {allowed}.")
    arguments = {f: spec[f] for f in allowed if f in spec}
    if cls is join_schedules:
        inner = arguments["schedules"]
        if not isinstance(inner, list):
            raise ValueError(
                f"from_dict: join_schedules.schedules must be a list, got {_describe(inner)}."
            )
        built = []
        for i, s in enumerate(inner):
            try:
                built.append(_from_dict(s))
            except ValueError as error:
                raise ValueError(f"join_schedules.schedules[{i}]: {error}") from None
        arguments["schedules"] = built
    return cls(**arguments)


# The mlx.optimizers schedules that mlx-lm's build_schedule can build from a config, each with
# its arguments that count steps. (join_schedules takes schedule functions, which no config
# can hold; build_schedule builds it and the first step fails.)
_MLX_LM_STEP_ARGUMENTS = {
    "cosine_decay": ("decay_steps",),
    "exponential_decay": (),
    "linear_schedule": ("steps",),
    "step_decay": ("step_size",),
}
_MLX_LM_KEYS = ("name", "arguments", "warmup", "warmup_init")


def _mlx_lm_steps(where: str, value):
    """A step count as mlx-lm takes it: YAML reads ``1e3`` and ``5.0`` as floats, and mlx's
    schedules count with them, so a whole float is that many steps."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{where} must be a whole number of steps, got {value!r}.")
        return int(value)
    return value


def _refuse_number_text(where: str, value) -> None:
    # PyYAML alone reads 1e-5 as text (YAML 1.1 floats need a dot); mlx-lm's loader reads a float.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return
        raise ValueError(
            f"{where} must be a number, got the string {value!r}: load the YAML with "
            f"mlx_lm.lora.yaml_loader (as mlx_lm.lora does), or write it with a dot (1.0e-5)."
        )


def from_mlx_lm_config(cfg: dict) -> Schedule:
    """The schedule that ``mlx_lm.tuner.utils.build_schedule(cfg)`` builds, as data.

    ``cfg`` is mlx-lm's ``lr_schedule`` config: ``name`` (``cosine_decay``,
    ``exponential_decay``, ``linear_schedule`` or ``step_decay``), ``arguments``
    (positional, the first is the peak rate), optional ``warmup`` (default 0: none) and
    ``warmup_init`` (default 0.0). As in mlx-lm, a warmup of ``w`` steps joins the main
    schedule at step ``w + 1``, so the peak is held for two updates, and the main
    schedule's step count excludes the warmup. Step counts may be whole floats (YAML reads
    ``1e3`` as 1000.0); other keys are ignored, as mlx-lm ignores them, with a warning.
    """
    owner = "from_mlx_lm_config"
    if not isinstance(cfg, dict):
        raise ValueError(f"{owner}: cfg must be a dict, got {_describe(cfg)}.")
    for key in ("name", "arguments"):
        if key not in cfg:
            raise ValueError(
                f"{owner}: lr_schedule is missing key {key!r} (mlx-lm needs 'name' and "
                f"'arguments'); got keys {list(cfg)!r}."
            )
    ignored = [key for key in cfg if key not in _MLX_LM_KEYS]
    if ignored:
        warnings.warn(
            f"{owner}: lr_schedule key(s) {ignored!r} are ignored, as mlx-lm ignores them; "
            f"it reads {list(_MLX_LM_KEYS)}.",
            stacklevel=2,
        )
    name, arguments = cfg["name"], cfg["arguments"]
    if not isinstance(name, str) or name not in _MLX_LM_STEP_ARGUMENTS:
        hint = " (it joins schedule functions: write a join in the to_dict() form)"
        raise ValueError(
            f"{owner}: name must be one of {list(_MLX_LM_STEP_ARGUMENTS)}, got {name!r}"
            f"{hint if name == 'join_schedules' else ''}."
        )
    if not isinstance(arguments, (list, tuple)) or not arguments:
        raise ValueError(
            f"{owner}: arguments must be a non-empty list, got {_describe(arguments)}."
        )
    required, allowed = _constructor_fields(_KINDS[name])
    if not len(required) <= len(arguments) <= len(allowed):
        raise ValueError(
            f"{owner}: arguments for {name} must be {allowed[: len(required)]} plus optionally "
            f"{allowed[len(required) :]}, got {len(arguments)} values: {list(arguments)!r}."
        )
    given, arguments = list(arguments), list(arguments)
    for i, value in enumerate(arguments):
        where = f"{owner}: arguments[{i}] ({name}'s {allowed[i]})"
        _refuse_number_text(where, value)
        if allowed[i] in _MLX_LM_STEP_ARGUMENTS[name]:
            arguments[i] = _mlx_lm_steps(where, value)
    try:
        main = _KINDS[name](*arguments)
    except ValueError as error:
        raise ValueError(f"{owner}: arguments {given!r}: {error}") from None
    warmup = cfg.get("warmup", 0)
    if not warmup:  # as in mlx-lm: 0, 0.0, null and false all mean no warmup
        return main
    _refuse_number_text(f"{owner}: warmup", warmup)
    warmup = _check_int(owner, "warmup", _mlx_lm_steps(f"{owner}: warmup", warmup), minimum=1)
    if warmup + 1 > MAX_STEP:
        raise ValueError(f"{owner}: warmup must be below 2**53, got {warmup}.")
    warmup_init = cfg.get("warmup_init", 0.0)
    _refuse_number_text(f"{owner}: warmup_init", warmup_init)
    warmup_init = _check_number(owner, "warmup_init", warmup_init)
    ramp = linear_schedule(warmup_init, main.init, warmup)
    return join_schedules([ramp, main], [warmup + 1])


_KINDS[reduce_on_plateau.name] = reduce_on_plateau
