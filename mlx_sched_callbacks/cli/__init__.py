"""The ``mlx-sched`` command line: drop-ins for three trainers' CLIs, ``demo`` and ``plot``.

A mistake in what the user gave (a flag, a config key, a path) prints one line,
``mlx-sched COMMAND: error: ...``, and exits 2; anything else is a bug and keeps its
traceback. ``mlx-sched --debug COMMAND ...`` (or ``MLX_SCHED_DEBUG=1``) shows the
traceback for both.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from .common import UserError, debug_wanted, user_error_message

__all__ = ["COMMANDS", "main", "run_command"]

DESCRIPTION = """\
Learning-rate schedules for MLX fine-tuning, logged to TensorBoard, resumed exactly.

commands:
  demo    fine-tune a tiny built-in model with LoRA (no downloads, under a minute)
  lora    mlx_lm.lora with a per-step schedule, TensorBoard logs and --resume
  lm-lora mlx_lm_lora.train (SFT, DPO, ORPO, GRPO, ...) likewise (extra: lm-lora)
  vlm     mlx_vlm.train likewise (extra: vlm)
  plot    preview a schedule: a PNG, the rate at each phase boundary, a TensorBoard plan
  find-lr an LR range test on a trainer (lora, lm-lora, vlm): a suggested peak and schedule

Run `mlx-sched COMMAND --help` for a command's options, `mlx-sched --version` for the version.
A mistake in the input prints one line; `mlx-sched --debug COMMAND ...` (or MLX_SCHED_DEBUG=1)
prints the traceback as well.
"""


# command -> (module of this package with its main(argv), the extra it needs and its package).
# Modules are imported when their command runs: a command's trainer may not be installed.
COMMANDS = {
    "lora": ("lora", None, None),
    "lm-lora": ("lm_lora", "lm-lora", "mlx_lm_lora"),
    "vlm": ("vlm", "vlm", "mlx_vlm"),
    "demo": ("demo", None, None),
    "plot": ("plot", None, None),
    "find-lr": ("find_lr", None, None),
}


def _command(name: str):
    module, extra, package = COMMANDS[name]
    try:
        return importlib.import_module(f".{module}", __package__).main
    except ModuleNotFoundError as error:
        if package is None or (error.name or "").split(".")[0] != package:
            raise
        raise UserError(
            f'needs {package}, which is not installed: pip install "mlx-sched-callbacks'
            f'[{extra}]" (with cpu or a cuda extra on Linux)'
        ) from error


def run_command(name: str, argv: list[str], debug: bool) -> int:
    """Run a command; a user error is one line and exit 2 (with --debug, its traceback too)."""
    try:
        _command(name)(argv)
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"mlx-sched {name}: error: {message}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--debug"]:
        # Also for the commands' own parsers (plot, demo), and any subprocess.
        os.environ["MLX_SCHED_DEBUG"] = "1"
        argv = argv[1:]
    debug = debug_wanted()
    if argv[:1] == ["--version"]:
        from .. import __version__

        print(f"mlx-sched {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(DESCRIPTION)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(
            f"mlx-sched: error: unknown command {argv[0]!r}; the commands are "
            f"{', '.join(COMMANDS)} (see mlx-sched --help)",
            file=sys.stderr,
        )
        return 2
    return run_command(argv[0], argv[1:], debug)
