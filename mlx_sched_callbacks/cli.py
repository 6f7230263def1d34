"""The ``mlx-sched`` command line: ``lora`` (a drop-in for ``mlx_lm.lora``) and ``demo``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import types
from contextlib import contextmanager
from pathlib import Path

DESCRIPTION = """\
Learning-rate schedules for MLX fine-tuning, logged to TensorBoard, resumed exactly.

commands:
  demo    fine-tune a tiny built-in model with LoRA (no downloads, under a minute)
  lora    mlx_lm.lora with a per-step schedule, TensorBoard logs and --resume
  plot    preview a schedule: a PNG, the rate at each phase boundary, a TensorBoard plan

Run `mlx-sched COMMAND --help` for a command's options, `mlx-sched --version` for the version.
"""


def schedule_from_config(lr_schedule, learning_rate: float):
    """Our schedule for mlx-lm's ``lr_schedule`` (its own form or our ``to_dict`` form)."""
    from . import schedules

    if not lr_schedule:
        return schedules.constant(learning_rate)
    if isinstance(lr_schedule, dict) and "arguments" in lr_schedule:
        return schedules.from_mlx_lm_config(lr_schedule)
    return schedules.from_dict(lr_schedule)


@contextmanager
def _replaced(module, name, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def lora_parser() -> argparse.ArgumentParser:
    from mlx_lm import lora

    parser = lora.build_parser()
    parser.prog = "mlx-sched lora"
    parser.description = (
        "mlx_lm.lora with a learning-rate schedule set before every step, TensorBoard "
        "logs and exact resume. Takes every mlx_lm.lora flag and --config YAML; "
        "lr_schedule may be mlx-lm's form (name, arguments, warmup, warmup_init) or "
        "mlx_sched_callbacks' to_dict() form for multi-phase joins."
    )
    ours = parser.add_argument_group("mlx-sched options")
    ours.add_argument(
        "--log-dir",
        type=str,
        default=None,
        help="TensorBoard log directory (default: ADAPTER_PATH/tensorboard)",
    )
    ours.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in ADAPTER_PATH/checkpoints "
        "(a fresh start, said so, if there is none)",
    )
    ours.add_argument(
        "--keep-checkpoints", type=int, default=3, help="checkpoints to keep (default: 3)"
    )
    ours.add_argument(
        "--allow-schedule-change",
        action="store_true",
        help="on --resume, continue with this run's schedule even if the checkpoint's differs",
    )
    return parser


def lora_args(argv) -> types.SimpleNamespace:
    """Parse like ``mlx_lm.lora``: flags win over the --config YAML, which wins over defaults."""
    import yaml
    from mlx_lm import lora

    args = vars(lora_parser().parse_args(argv))
    if args["config"]:
        with open(args["config"]) as f:
            config = yaml.load(f, lora.yaml_loader)
        for key, value in config.items():
            if args.get(key) is None:
                args[key] = value
    for key, value in lora.CONFIG_DEFAULTS.items():
        if args.get(key) is None:
            args[key] = value
    return types.SimpleNamespace(**args)


def run_lora(args: types.SimpleNamespace, extra_callback=None) -> None:
    """Run mlx-lm's LoRA pipeline unchanged, with training handed to :class:`MlxLmTraining`.

    ``extra_callback`` (a ``TrainingCallback``) gets mlx-lm's reports after the
    ``--report-to`` ones.
    """
    from mlx_lm import lora

    from .lm import MlxLmTraining

    schedule = schedule_from_config(args.lr_schedule, args.learning_rate)
    # mlx-lm would build the optimizer with the schedule inside; the callback owns it.
    args.lr_schedule = None
    log_dir = args.log_dir or str(Path(args.adapter_path) / "tensorboard")

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
        )
        if run_args.resume:
            start = training.resume(allow_schedule_change=run_args.allow_schedule_change)
            if start:
                print(f"Resuming at iteration {start} from {training.checkpoint_dir}", flush=True)
            else:
                print(f"No complete checkpoint in {training.checkpoint_dir}; starting at 1")
        training.train()
        print(f"TensorBoard logs: {log_dir}  (view: tensorboard --logdir {log_dir})")

    run_args = args
    with _replaced(lora, "train", train):
        lora.run(args)


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


def lora_main(argv) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    run_lora(lora_args(argv))


def demo_main(argv) -> None:
    parser = argparse.ArgumentParser(
        prog="mlx-sched demo",
        description="Fine-tune a tiny llama model (built here, random weights, a tokenizer "
        "trained locally) with LoRA under a warmup + cosine schedule, with TensorBoard logs "
        "and checkpoints. No downloads. Under a minute on 2 CPU cores.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("mlx-sched-demo"),
        help="where the model, data, adapters and logs go (default: ./mlx-sched-demo)",
    )
    parser.add_argument("--iters", type=int, default=200, help="iterations (default: 200)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in OUT/adapters",
    )
    parser.add_argument(
        "--kill-at",
        type=int,
        default=None,
        metavar="N",
        help="SIGKILL this process at iteration N (a multiple of 10), to try --resume",
    )
    args = parser.parse_args(argv)

    from mlx_lm.tuner.callbacks import TrainingCallback

    from .tiny import build_tiny_dataset, build_tiny_model

    out = args.out
    build_tiny_model(out / "model")
    build_tiny_dataset(out / "data")
    warmup = max(args.iters // 10, 1)
    config = [
        "--model", str(out / "model"), "--data", str(out / "data"), "--train",
        "--num-layers", "2", "--batch-size", "4", "--iters", str(args.iters),
        "--steps-per-report", "10", "--steps-per-eval", "50", "--val-batches", "5",
        "--save-every", "50", "--adapter-path", str(out / "adapters"),
        "--log-dir", str(out / "tensorboard"),
        "--learning-rate", "1e-3",  # the peak, for mlx-lm's header; the callback sets the rate
    ]  # fmt: skip
    if args.resume:
        config.append("--resume")
    lora_namespace = lora_args(config)
    lora_namespace_schedule = {
        "name": "cosine_decay",
        "arguments": [1e-3, args.iters - warmup, 1e-5],
        "warmup": warmup,
    }
    lora_namespace.lr_schedule = dict(lora_namespace_schedule)

    class KillAt(TrainingCallback):
        def on_train_loss_report(self, info):
            if args.kill_at is not None and info["iteration"] >= args.kill_at:
                print(f"Killing this process at iteration {info['iteration']} (--kill-at)")
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    run_lora(lora_namespace, extra_callback=KillAt() if args.kill_at else None)
    print(f"Schedule: {schedule_from_config(lora_namespace_schedule, 0.0)!r}")
    print(f"Adapters and checkpoints: {out / 'adapters'}")


def plot_main(argv) -> None:
    from .plot import plot_main as main

    try:
        main(argv)
    except ImportError as error:  # matplotlib, an optional extra
        print(f"mlx-sched plot: {error}", file=sys.stderr)
        raise SystemExit(2) from None


COMMANDS = {"lora": lora_main, "demo": demo_main, "plot": plot_main}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from . import __version__

        print(f"mlx-sched {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(DESCRIPTION)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"mlx-sched: unknown command {argv[0]!r}; expected one of {sorted(COMMANDS)}")
            return 2
        return 0 if argv else 2
    COMMANDS[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
