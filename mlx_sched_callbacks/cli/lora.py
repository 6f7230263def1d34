"""``mlx-sched lora``: ``mlx_lm.lora`` with training handed to :class:`MlxLmTraining`."""

from __future__ import annotations

import argparse
import os
import types
from contextlib import contextmanager
from pathlib import Path

from .common import Parser, UserError, colour_wanted, one_line, parse_like, read_config
from .run_options import (
    add_run_options,
    hold_before_loading,
    log_dir_for,
    resume_command,
    run_keywords,
    schedule_from_config,
    start_training,
)
from .summary import RunSummary, mlx_lm_next_steps

# Keys mlx-lm reads from its arguments with getattr: no flag, no default.
READS = ("hf_dataset", "text_feature", "chat_feature", "prompt_feature", "completion_feature")


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


def lora_args(argv) -> types.SimpleNamespace:
    """Parse like ``mlx_lm.lora``: flags win over the --config YAML, which wins over defaults."""
    from mlx_lm import lora

    return parse_like(lora_parser(), argv, lora.CONFIG_DEFAULTS, reads=READS)


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
    args: types.SimpleNamespace,
    extra_callback=None,
    continue_with: str | None = None,
    train_with=None,
) -> RunSummary:
    """Run mlx-lm's LoRA pipeline unchanged, with training handed to :class:`MlxLmTraining`.

    ``extra_callback`` (a ``TrainingCallback``) gets mlx-lm's reports after the
    ``--report-to`` ones. ``continue_with`` is the command a stopped run prints
    (default: this command line with ``--resume``). ``train_with(training)`` trains the
    run in place of ``training.train()`` (``mlx-sched find-lr``). Returns what to tell the
    user at the end (:meth:`RunSummary.finished` says nothing if it did not train).
    """
    from mlx_lm import lora

    from ..trainers.common import replaced
    from ..trainers.mlx_lm import MlxLmTraining

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
    continue_with = continue_with or resume_command()
    summary = RunSummary(
        Path(args.adapter_path), log_dir, continue_with,
        mlx_lm_next_steps(args.model, args.adapter_path),
    )  # fmt: skip
    configs = []
    save_config = lora.save_config

    def save_held_configs():
        # mlx-lm writes adapter_config.json before training: held back until every
        # check has passed, so that a refused resume leaves the run folder as it was.
        for config, path in configs:
            save_config(config, path)

    def train(model, args, optimizer, train_dataset, val_dataset=None, training_callback=None):
        training = MlxLmTraining(
            model,
            optimizer,
            schedule,
            args,
            train_dataset,
            val_dataset,
            log_dir=log_dir,
            **run_keywords(run_args),
            training_callback=_chain(training_callback, extra_callback),
            resume_command=continue_with,
        )
        start_training(
            training, run_args, summary, before_training=save_held_configs, train_with=train_with
        )

    run_args = args
    with (
        _consoles(lora),
        replaced(lora, "save_config", lambda *config: configs.append(config)),
        replaced(lora, "train", train),
        replaced(lora, "load", _checked_load(lora.load, model_where)),
        replaced(lora, "load_dataset", _checked_load_dataset(lora.load_dataset, data_where)),
    ):
        lora.run(args)
    return summary


@contextmanager
def _consoles(lora):
    """mlx-lm's rich console, plain when colour is not wanted; mlx-lm before 0.29 has none
    (it prints plain text)."""
    from ..trainers.common import replaced

    try:
        from mlx_lm import cli_ui
    except ImportError:
        yield
        return
    console = cli_ui.make_console if colour_wanted() else plain_console
    with replaced(lora, "make_console", console), replaced(cli_ui, "make_console", console):
        yield


def plain_console():
    """mlx-lm's console without colour codes (it forces truecolor, even into a file, and
    NO_COLOR still leaves bold)."""
    from mlx_lm import cli_ui
    from rich.console import Console

    return Console(
        theme=cli_ui._make_theme(),  # its markup names the theme's styles
        highlight=False,
        color_system=None,
        width=cli_ui._terminal_width(),
    )


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


def main(argv) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    run_lora(lora_args(argv)).finished()
