"""The ``mlx-sched`` command line: drop-ins for three trainers' CLIs, ``demo`` and ``plot``.

A mistake in what the user gave (a flag, a config key, a path) prints one line,
``mlx-sched COMMAND: error: ...``, and exits 2; anything else is a bug and keeps its
traceback. ``mlx-sched --debug COMMAND ...`` (or ``MLX_SCHED_DEBUG=1``) shows the
traceback for both.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import traceback
import types
from pathlib import Path

from .cli_run import (
    add_run_options,
    hold_before_loading,
    log_dir_for,
    resume_command,
    schedule_from_config,
)
from .lock import RunFolderBusyError

DESCRIPTION = """\
Learning-rate schedules for MLX fine-tuning, logged to TensorBoard, resumed exactly.

commands:
  demo    fine-tune a tiny built-in model with LoRA (no downloads, under a minute)
  lora    mlx_lm.lora with a per-step schedule, TensorBoard logs and --resume
  lm-lora mlx_lm_lora.train (SFT, DPO, ORPO, GRPO, ...) likewise (extra: lm-lora)
  vlm     mlx_vlm.train likewise (extra: vlm)
  plot    preview a schedule: a PNG, the rate at each phase boundary, a TensorBoard plan

Run `mlx-sched COMMAND --help` for a command's options, `mlx-sched --version` for the version.
A mistake in the input prints one line; `mlx-sched --debug COMMAND ...` (or MLX_SCHED_DEBUG=1)
prints the traceback as well.
"""

DEMO_OUT = Path("mlx-sched-demo")
DEMO_ITERS = 200
DEMO_REPORT_EVERY = 10
DEMO_SAVE_EVERY = 50


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


def lora_parser() -> argparse.ArgumentParser:
    from mlx_lm import lora

    parser = lora.build_parser()
    parser.__class__ = Parser  # mlx-lm builds a plain ArgumentParser; ours errs in one line
    parser.prog = "mlx-sched lora"
    parser.description = (
        "mlx_lm.lora with a learning-rate schedule set before every step, TensorBoard "
        "logs and exact resume. Takes every mlx_lm.lora flag and --config YAML; "
        "lr_schedule may be mlx-lm's form (name, arguments, warmup, warmup_init) or "
        "mlx_sched_callbacks' to_dict() form for multi-phase joins."
    )
    add_run_options(parser)
    return parser


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


def lora_args(argv) -> types.SimpleNamespace:
    """Parse like ``mlx_lm.lora``: flags win over the --config YAML, which wins over defaults."""
    from mlx_lm import lora

    return parse_like(lora_parser(), argv, lora.CONFIG_DEFAULTS)


def _where(args, key: str) -> str:
    """The flag or config key a value came from, with the value, for a message."""
    value = getattr(args, key)
    if args.config and read_config(args.config).get(key) == value:
        return f"{key}: {value} in --config {args.config}"
    return f"--{key.replace('_', '-')} {value}"


def _looks_local(name: str) -> bool:
    """A path rather than a Hugging Face repo id ("name" or "owner/name")."""
    if name.startswith(("/", ".", "~")) or name.endswith("/") or "\\" in name:
        return True
    return name.count("/") > 1 or ("/" in name and Path(name.split("/")[0]).is_dir())


def check_inputs(args: types.SimpleNamespace) -> None:
    """Refuse what mlx-lm would fail on late, or try to download, before anything loads."""
    if not args.train and not args.test:
        raise UserError("nothing to do: give --train to fine-tune (or --test to evaluate).")
    for key, kind in (("model", "model folder"), ("data", "data folder")):
        if key == "data" and getattr(args, "hf_dataset", None):
            continue
        name = getattr(args, key)
        if not isinstance(name, str) or not name:
            raise UserError(f"{_where(args, key)}: expected a {kind} or a Hugging Face name.")
        path = Path(name).expanduser()
        if path.is_file():
            raise UserError(f"{_where(args, key)}: a file; give the {kind}.")
        if path.is_dir():
            setattr(args, key, str(path))  # mlx-lm does not expand ~
        elif _looks_local(name):
            raise UserError(
                f"{_where(args, key)}: no such folder (nothing was downloaded for it); give "
                f"an existing {kind}."
            )


def _from_hub(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] in ("huggingface_hub", "datasets")


def _checked_load(load, where: str):
    def checked(path_or_hf_repo, *args, **kwargs):
        try:
            return load(path_or_hf_repo, *args, **kwargs)
        except Exception as error:
            if not _from_hub(error):
                raise
            raise UserError(
                f"{where}: no such folder, and the Hugging Face hub did not give a model of "
                f"that name ({type(error).__name__}: {one_line(error)}); give a model folder, "
                "or a hub repo id that exists and can be reached."
            ) from error

    return checked


def _checked_load_dataset(load_dataset, where: str):
    def checked(args, tokenizer):
        try:
            return load_dataset(args, tokenizer)
        except ModuleNotFoundError as error:
            if error.name != "datasets":
                raise
            raise UserError(
                f"{where}: no such folder; a Hugging Face hub dataset of that name needs the "
                "datasets package (pip install datasets). Give a folder with train.jsonl and "
                "valid.jsonl, or install datasets to load it from the hub."
            ) from error
        except Exception as error:
            if not (_from_hub(error) or isinstance(error, (ValueError, ConnectionError))):
                raise
            if getattr(args, "hf_dataset", None) or Path(args.data).exists():
                raise UserError(f"{where}: {one_line(error)}") from error
            raise UserError(
                f"{where}: no such folder, and the Hugging Face hub did not give a dataset of "
                f"that name ({one_line(error)}); give a folder with train.jsonl and "
                "valid.jsonl, or a hub dataset that exists and can be reached."
            ) from error

    return checked


def run_lora(
    args: types.SimpleNamespace, extra_callback=None, continue_with: str | None = None
) -> str | None:
    """Run mlx-lm's LoRA pipeline unchanged, with training handed to :class:`MlxLmTraining`.

    ``extra_callback`` (a ``TrainingCallback``) gets mlx-lm's reports after the
    ``--report-to`` ones. ``continue_with`` is the command a stopped run prints
    (default: this command line with ``--resume``). Returns the TensorBoard log folder
    if it trained.
    """
    from mlx_lm import lora

    from .lm import MlxLmTraining
    from .run import replaced

    try:
        schedule = schedule_from_config(args.lr_schedule, args.learning_rate)
    except ValueError as error:
        if not args.lr_schedule:
            where = _where(args, "learning_rate")
        else:
            where = f"lr_schedule in --config {args.config}" if args.config else "lr_schedule"
        raise UserError(f"{where}: {one_line(error)}") from error
    model_where, data_where = _where(args, "model"), _where(args, "data")
    check_inputs(args)
    # mlx-lm would build the optimizer with the schedule inside; the callback owns it.
    args.lr_schedule = None
    log_dir = log_dir_for(args.adapter_path, args.log_dir)
    hold_before_loading(args.adapter_path, log_dir)
    trained, configs = [], []
    save_config = lora.save_config

    def train(model, args, optimizer, train_dataset, val_dataset=None, training_callback=None):
        training = MlxLmTraining(
            model,
            optimizer,
            schedule,
            args,
            train_dataset,
            val_dataset,
            log_dir=log_dir,
            keep_checkpoints=run_args.keep_checkpoints,
            training_callback=_chain(training_callback, extra_callback),
            resume_command=continue_with or resume_command(),
        )
        if run_args.resume:
            training.resume(allow_schedule_change=run_args.allow_schedule_change)
        # mlx-lm writes adapter_config.json before training: held back until every
        # check has passed, so that a refused resume leaves the run folder as it was.
        for config, path in configs:
            save_config(config, path)
        training.train()
        trained.append(log_dir)

    run_args = args
    with (
        replaced(lora, "save_config", lambda *config: configs.append(config)),
        replaced(lora, "train", train),
        replaced(lora, "load", _checked_load(lora.load, model_where)),
        replaced(lora, "load_dataset", _checked_load_dataset(lora.load_dataset, data_where)),
    ):
        lora.run(args)
    return trained[0] if trained else None


def _chain(first, second):
    from mlx_lm.tuner.callbacks import TrainingCallback

    if first is None or second is None:
        return first or second

    class Both(TrainingCallback):
        def on_train_loss_report(self, info):
            first.on_train_loss_report(info)
            second.on_train_loss_report(info)

        def on_val_loss_report(self, info):
            first.on_val_loss_report(info)
            second.on_val_loss_report(info)

    return Both()


def tensorboard_command(log_dir) -> str:
    return shlex.join(["tensorboard", "--logdir", str(log_dir)])


def lora_main(argv) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    log_dir = run_lora(lora_args(argv))
    if log_dir:
        print(f"TensorBoard logs: {log_dir}  (view: {tensorboard_command(log_dir)})")


def demo_parser() -> Parser:
    parser = Parser(
        prog="mlx-sched demo",
        description="Fine-tune a tiny llama model (built here, random weights, a tokenizer "
        "trained locally) with LoRA under a warmup + cosine schedule, with TensorBoard logs "
        "and checkpoints. No downloads. Under a minute on 2 CPU cores.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEMO_OUT,
        help=f"where the model, data, adapters and logs go (default: ./{DEMO_OUT})",
    )
    parser.add_argument(
        "--iters", type=int, default=DEMO_ITERS, help=f"iterations (default: {DEMO_ITERS})"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in OUT/adapters/checkpoints",
    )
    parser.add_argument(
        "--allow-schedule-change",
        action="store_true",
        help="on --resume with another --iters, continue under the new schedule",
    )
    parser.add_argument(
        "--kill-at",
        type=int,
        default=None,
        metavar="N",
        help=f"SIGKILL this process at iteration N (a multiple of {DEMO_REPORT_EVERY}), "
        "to try --resume",
    )
    return parser


def demo_main(argv) -> None:
    parser = demo_parser()
    args = parser.parse_args(argv)
    if args.iters < 2:
        parser.error(f"--iters must be at least 2 (a warmup and a decay), got {args.iters}.")
    if args.kill_at is not None and (
        args.kill_at % DEMO_REPORT_EVERY or not 0 < args.kill_at < args.iters
    ):
        parser.error(
            f"--kill-at must be a multiple of {DEMO_REPORT_EVERY} between 0 and --iters "
            f"{args.iters} (the demo can stop only where it reports, every "
            f"{DEMO_REPORT_EVERY} iterations), got {args.kill_at}."
        )

    from mlx_lm.tuner.callbacks import TrainingCallback

    from .tiny import build_tiny_dataset, build_tiny_model

    out = args.out
    build_tiny_model(out / "model")
    build_tiny_dataset(out / "data")
    warmup = max(args.iters // 10, 1)
    config = [
        "--model", str(out / "model"), "--data", str(out / "data"), "--train",
        "--num-layers", "2", "--batch-size", "4", "--iters", str(args.iters),
        "--steps-per-report", str(DEMO_REPORT_EVERY), "--steps-per-eval", "50",
        "--val-batches", "5", "--save-every", str(DEMO_SAVE_EVERY),
        "--adapter-path", str(out / "adapters"), "--log-dir", str(out / "tensorboard"),
        "--learning-rate", "1e-3",  # the peak, for mlx-lm's header; the callback sets the rate
    ]  # fmt: skip
    if args.resume:
        config.append("--resume")
    if args.allow_schedule_change:
        config.append("--allow-schedule-change")
    lora_namespace = lora_args(config)
    schedule = {"name": "cosine_decay", "arguments": [1e-3, args.iters - warmup, 1e-5]}
    lora_namespace.lr_schedule = {**schedule, "warmup": warmup}
    schedule_repr = repr(schedule_from_config(lora_namespace.lr_schedule, 0.0))

    same_run = ["mlx-sched", "demo"]
    if out != DEMO_OUT:
        same_run += ["--out", str(out)]
    if args.iters != DEMO_ITERS:
        same_run += ["--iters", str(args.iters)]
    continue_with = shlex.join([*same_run, "--resume"])

    class KillAt(TrainingCallback):
        def on_train_loss_report(self, info):
            it = info["iteration"]
            if it == args.kill_at:
                saved = it // DEMO_SAVE_EVERY * DEMO_SAVE_EVERY
                if saved:
                    newest = f"the newest checkpoint is at iteration {saved}"
                else:
                    newest = "there is no checkpoint yet, so a resume starts at 1"
                print(
                    f"Killing this process with SIGKILL at iteration {it} (--kill-at); "
                    f"{newest}.\nContinue with: {continue_with}",
                    flush=True,
                )
                os.kill(os.getpid(), signal.SIGKILL)

    log_dir = run_lora(
        lora_namespace,
        extra_callback=KillAt() if args.kill_at else None,
        continue_with=continue_with,
    )
    adapters = out / "adapters"
    print(f"Schedule: {schedule_repr}")
    print(f"Done: {args.iters} iterations. Everything is under {out}:")
    print(f"  model:        {out / 'model'}  (tiny llama, random weights, built here)")
    print(f"  data:         {out / 'data'}  (train.jsonl, valid.jsonl, test.jsonl)")
    print(f"  adapters:     {adapters / 'adapters.safetensors'}")
    print(f"  checkpoints:  {adapters / 'checkpoints'}  (every {DEMO_SAVE_EVERY} iterations)")
    print(f"  TensorBoard:  {log_dir}")
    print(f"See the curves: {tensorboard_command(log_dir)}  (then open http://localhost:6006)")
    print(f"Resume after a kill: {continue_with}")
    kill_at = args.iters * 6 // 100 * 10  # 120 of 200: past a checkpoint, before the end
    if kill_at:
        print(f"  (try it: {shlex.join(same_run)} --kill-at {kill_at}, then that command)")


def plot_main(argv) -> None:
    from .plot import MATPLOTLIB_MISSING
    from .plot import plot_main as main

    try:
        main(argv)
    except ImportError as error:  # matplotlib, an optional extra
        if str(error) != MATPLOTLIB_MISSING:
            raise
        raise UserError(str(error)) from error


def _trainer_command(module: str, extra: str, package: str):
    """A command whose trainer is an optional extra, imported only when it runs."""

    def command(argv) -> None:
        import importlib

        try:
            importlib.import_module(f".{module}", __package__).main(argv)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] != package:
                raise
            raise UserError(
                f'needs {package}, which is not installed: pip install "mlx-sched-callbacks'
                f'[{extra}]" (with cpu or a cuda extra on Linux)'
            ) from error

    return command


lm_lora_main = _trainer_command("lm_lora", "lm-lora", "mlx_lm_lora")
vlm_main = _trainer_command("vlm", "vlm", "mlx_vlm")


COMMANDS = {
    "lora": lora_main,
    "lm-lora": lm_lora_main,
    "vlm": vlm_main,
    "demo": demo_main,
    "plot": plot_main,
}


def run_command(name: str, argv: list[str], debug: bool) -> int:
    """Run a command; a user error is one line and exit 2 (with --debug, its traceback too)."""
    try:
        COMMANDS[name](argv)
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
    debug = os.environ.get("MLX_SCHED_DEBUG", "") not in ("", "0")
    if argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    if argv[:1] == ["--version"]:
        from . import __version__

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


if __name__ == "__main__":
    sys.exit(main())
