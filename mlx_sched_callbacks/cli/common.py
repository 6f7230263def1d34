"""What the commands share: one-line user errors, a parser that prints them, reading a
config as the trainer's own CLI does."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import shlex
import sys
import traceback
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


def debug_wanted() -> bool:
    """``mlx-sched --debug`` (which sets it) or ``MLX_SCHED_DEBUG=1``."""
    return os.environ.get("MLX_SCHED_DEBUG", "") not in ("", "0")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``--help`` shows the usage.

    With --debug, the one line follows the traceback of the error it reports (or,
    for a check of the parser's own, the stack that made it).
    """

    def error(self, message):
        if debug_wanted():
            if sys.exc_info()[1] is not None:
                traceback.print_exc()
            else:
                traceback.print_stack()
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


def add_strict_config(parser) -> None:
    parser.add_argument(
        "--strict-config",
        action="store_true",
        help="refuse a --config key that neither the trainer nor mlx-sched reads "
        "(default: a warning naming it and the closest known key)",
    )


def unknown_keys_line(unknown, known, where: str) -> str:
    """``{where}: unknown config key `modle` (did you mean `model`?)``, every key on one line."""
    named = []
    for key in sorted(unknown, key=str):
        close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
        named.append(f"`{key}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    keys = "key" if len(named) == 1 else "keys"
    return f"{where}: unknown config {keys} {', '.join(named)}"


def parse_like(parser, argv, defaults: dict, tool: str = "mlx_lm.lora", loader=None, reads=()):
    """Parse as ``tool`` does: flags win over the --config YAML, which wins over defaults.

    A config key that is neither a flag, a default nor in ``reads`` (what ``tool``
    reads with getattr) is read by nobody: a warning names it before anything loads,
    an error with --strict-config. Known keys come from the parser, so new flags count.
    """
    add_strict_config(parser)
    args = vars(parser.parse_args(argv))
    if args["config"]:
        config = read_config(args["config"], tool, loader)
        known = {action.dest for action in parser._actions} | defaults.keys() | set(reads)
        if unknown := config.keys() - known:
            line = unknown_keys_line(unknown, known, f"--config {args['config']}")
            if args["strict_config"]:
                raise UserError(f"{line}; neither {tool} nor mlx-sched reads it.")
            print(
                f"{parser.prog}: warning: {line}; neither {tool} nor mlx-sched reads it, "
                "so it is ignored (--strict-config makes this an error).",
                file=sys.stderr,
                flush=True,
            )
        for key, value in config.items():
            if args.get(key) is None:
                args[key] = value
    for key, value in defaults.items():
        if args.get(key) is None:
            args[key] = value
    return types.SimpleNamespace(**args)


def colour_wanted(stream=None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("NO_COLOR")


@contextlib.contextmanager
def colour_codes_off(*classes):
    """Blank the ANSI escape constants of ``classes`` (the trainers' ``Colors``) for the
    duration, unless colour is wanted."""
    blanked = []
    if not colour_wanted():
        for cls in classes:
            for name, value in list(vars(cls).items()):
                if isinstance(value, str) and value.startswith("\033["):
                    blanked.append((cls, name, value))
                    setattr(cls, name, "")
    try:
        yield
    finally:
        for cls, name, value in blanked:
            setattr(cls, name, value)


def tensorboard_command(log_dir) -> str:
    """The command that lists the run by its folder's name (its parent is TensorBoard's root)."""
    return shlex.join(["tensorboard", "--logdir", str(Path(log_dir).parent)])
