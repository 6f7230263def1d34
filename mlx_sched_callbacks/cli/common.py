"""What the commands share: one-line user errors, a parser that prints them, reading a
config as the trainer's own CLI does."""

from __future__ import annotations

import argparse
import shlex
import types
from pathlib import Path

from ..run.lock import RunFolderBusyError


class UserError(Exception):
    """A mistake in the command line, a config file or a path: one line, exit 2."""


# Raised in these packages, these errors are about the input (our library and mlx-lm
# write such messages naming the argument or file); raised elsewhere (mlx, numpy, the
# hub's clients) they are bugs or surprises and keep their traceback.
INPUT_ERRORS = (ValueError, OSError, RunFolderBusyError)
INPUT_ERROR_SOURCES = ("mlx_sched_callbacks", "mlx_lm", "mlx_lm_lora", "mlx_vlm")
# Library messages name Python arguments; on the command line they are flags.
FLAG_NAMES = {"Pass allow_schedule_change=True": "pass --allow-schedule-change"}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``--help`` shows the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    joined = lines[0] if lines else ""
    for line in lines[1:]:
        joined += (" " if joined.endswith(":") else "; ") + line
    return joined


def user_error_message(error: BaseException) -> str | None:
    """The one line to print for ``error``, or None if it is a bug (keep the traceback)."""
    if isinstance(error, UserError):
        return one_line(str(error))
    if not isinstance(error, INPUT_ERRORS):
        return None
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb else ""
    if module.split(".")[0] not in INPUT_ERROR_SOURCES:
        return None
    message = one_line(str(error))
    if isinstance(error, OSError) and error.strerror:  # not "[Errno 30] ..."
        where = f"{error.filename}: " if error.filename else ""
        message = one_line(where + error.strerror)
    for python, flag in FLAG_NAMES.items():
        message = message.replace(python, flag)
    return message


def read_config(path: str, tool: str = "mlx_lm.lora", loader=None) -> dict:
    """The --config YAML as a dict, read as ``tool`` reads it (mlx-lm's float rule)."""
    import yaml
    from mlx_lm import lora

    where = f"--config {path}"
    if not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "no such file"
        raise UserError(f"{where}: {what}; give the path of an {tool} YAML config.")
    try:
        with open(path) as f:
            config = yaml.load(f, loader or lora.yaml_loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or one_line(str(error))
        raise UserError(f"{where} is not valid YAML: {problem}{at}.") from error
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UserError(
            f"{where}: expected a mapping of {tool} options (key: value lines), "
            f"got a {type(config).__name__}."
        )
    return config


def parse_like(parser, argv, defaults: dict, tool: str = "mlx_lm.lora", loader=None):
    """Parse as ``tool`` does: flags win over the --config YAML, which wins over defaults."""
    args = vars(parser.parse_args(argv))
    if args["config"]:
        for key, value in read_config(args["config"], tool, loader).items():
            if args.get(key) is None:
                args[key] = value
    for key, value in defaults.items():
        if args.get(key) is None:
            args[key] = value
    return types.SimpleNamespace(**args)


def tensorboard_command(log_dir) -> str:
    return shlex.join(["tensorboard", "--logdir", str(log_dir)])
