"""``mlx-sched find-lr TRAINER ...``: a learning-rate range test on the trainer itself.

The trainer command's own pipeline runs (its parser and ``--config``, its model, data
and optimizer), with training handed to :func:`~mlx_sched_callbacks.lr_find.find_lr_on_run`.
What changes in the user's settings is only what a range test needs: a report per
optimizer update, no validation or checkpoints, nothing resumed, and a scratch adapter
folder inside the output folder (removed at the end), so that nothing of the user's runs
is read or written.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
from pathlib import Path

from ..lr_find import curve, find_lr_on_run, lr_schedule_yaml, suggested_schedule, write_outputs
from ..lr_find.finder import Measurement
from .common import Parser, UserError, one_line, tensorboard_command

TRAINERS = ("lora", "lm-lora", "vlm")
SCRATCH = ".lr_find_run"  # the run's adapter folder, inside the output folder
FLAGS = {name: "--" + name.replace("_", "-") for name in
         ("min_lr", "max_lr", "num_steps", "mode", "divergence", "suggest")}  # fmt: skip


def find_lr_parser() -> Parser:
    parser = Parser(
        prog="mlx-sched find-lr",
        usage="mlx-sched find-lr {lora,lm-lora,vlm} [find-lr options] [the trainer's flags]",
        description="A learning-rate range test on the trainer itself: the rate rises "
        "over --num-steps optimizer updates from --min-lr to --max-lr, the loss of each "
        "update is smoothed, and the test stops once it diverges. Prints three suggestions "
        "and an lr_schedule block (warmup + cosine over the config's iters) to paste into "
        "the config. After TRAINER come exactly that command's flags and --config (see "
        "mlx-sched TRAINER --help); validation and checkpoints are off, and nothing of "
        "earlier runs is read or written.",
        allow_abbrev=False,
    )
    ours = parser.add_argument_group("find-lr options")
    ours.add_argument("--min-lr", type=float, default=1e-7, help="first rate (default: 1e-7)")
    ours.add_argument("--max-lr", type=float, default=1.0, help="last rate (default: 1)")
    ours.add_argument(
        "--num-steps", type=int, default=100, help="optimizer updates (default: 100, at least 10)"
    )
    ours.add_argument("--mode", choices=curve.MODES, default="exponential",
                      help="how the rate rises (default: exponential)")  # fmt: skip
    ours.add_argument(
        "--divergence",
        type=float,
        default=4.0,
        help="stop once the smoothed loss exceeds this times its best (default: 4)",
    )
    ours.add_argument("--suggest", choices=curve.RULES, default="valley",
                      help="the rule the schedule peaks at (default: valley)")  # fmt: skip
    ours.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the results go (default: lr_find/ beside the adapter folder)",
    )
    return parser


def _flagged(error: Exception) -> str:
    """A library message about ``min_lr=...`` as one about ``--min-lr ...``."""
    text = one_line(str(error))
    for name, flag in FLAGS.items():
        text = re.sub(rf"\b{name}=", f"{flag} ", text)
        text = re.sub(rf"\b{name}\b", flag, text)
    return text


def _check_training_data(data, where: str) -> None:
    """Refuse a local data folder without training data before any model loads."""
    from .lora import _looks_local

    path = Path(str(data)).expanduser()
    if path.is_dir():
        if not any(p.name.startswith("train") for p in path.iterdir()):
            raise UserError(
                f"{where}: no training data in {path} (expected train.jsonl); a range test "
                "trains on the training split."
            )
    elif not path.is_file() and _looks_local(str(data)):
        raise UserError(f"{where}: no such folder; give the folder with the training data.")


def _data_where(args, rest: list[str]) -> str:
    """Where the data folder was named: the --data flag, or the config's data key."""
    if getattr(args, "config", None) and "--data" not in rest:
        return f"data: {args.data} in --config {args.config}"
    return f"--data {args.data}"


def _lora(rest, out, train_with):
    from .lora import lora_args, run_lora

    args = lora_args(rest)
    if not getattr(args, "hf_dataset", None):
        _check_training_data(args.data, _data_where(args, rest))
    folder = Path(args.adapter_path)
    out = _out_folder(out, folder, "--adapter-path")
    k = args.grad_accumulation_steps
    args.__dict__.update(
        adapter_path=str(out / SCRATCH), log_dir=None, resume=False, train=True, test=False,
        resume_adapter_file=None, steps_per_report=k, steps_per_eval=args.iters + 1,
        save_every=k, report_to=None,
    )  # fmt: skip
    return out, args.iters, lambda: run_lora(args, train_with=train_with)


def _lm_lora(rest, out, train_with):
    from . import lm_lora

    args = lm_lora.parse_args(rest)
    if not getattr(args, "hf_dataset", None):
        _check_training_data(args.data, _data_where(args, rest))
    out = _out_folder(out, Path(args.adapter_path), "--adapter-path")
    k = args.gradient_accumulation_steps
    iters = args.iters
    args.__dict__.update(
        adapter_path=str(out / SCRATCH), log_dir=None, resume=False, train=True, test=False,
        fuse=False, resume_adapter_file=None, steps_per_report=k,
        steps_per_eval=(iters or 0) + 1, save_every=k, wandb=None,
    )  # fmt: skip
    return out, iters, lambda: lm_lora.run(args, rest, train_with=train_with)


def _vlm(rest, out, train_with):
    from . import vlm

    options, settings = vlm.parse_args(rest)
    if not options.dataset:
        _check_training_data(options.data, _data_where(options, rest))
    out = _out_folder(out, Path(settings.adapter_file).parent, "--output-path")
    k = settings.gradient_accumulation_steps
    options.__dict__.update(output_path=str(out / SCRATCH), log_dir=None, resume=False,
                            resume_adapter_file=None, wandb=None)  # fmt: skip
    settings = dataclasses.replace(
        settings, adapter_file=str(out / SCRATCH / "adapters.safetensors"),
        steps_per_report=k, steps_per_eval=None, steps_per_save=k,
    )  # fmt: skip
    return out, settings.iters, lambda: vlm.run(options, settings, rest, train_with=train_with)


PIPELINES = {"lora": _lora, "lm-lora": _lm_lora, "vlm": _vlm}


def _out_folder(out: Path | None, adapter_folder: Path, flag: str) -> Path:
    """``--out``, or ``lr_find/`` beside the adapter folder; never the adapter folder itself."""
    if out is None:
        out = adapter_folder.parent / "lr_find"
        if out.resolve() == adapter_folder.resolve():
            raise UserError(
                f"{flag} {adapter_folder}: the default --out, lr_find/ beside it, is that "
                "folder itself; give --out."
            )
    elif out.resolve() == adapter_folder.resolve():
        raise UserError(
            f"--out {out}: that is the adapter folder ({flag}); give a folder of its own."
        )
    return out


def main(argv) -> None:
    argv = list(argv)
    parser = find_lr_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return
    trainer, options = argv[0], None
    if trainer not in TRAINERS:
        raise UserError(f"TRAINER: expected one of {', '.join(TRAINERS)}, got {trainer!r}.")
    options, rest = parser.parse_known_args(argv[1:])
    settings = {name: getattr(options, name) for name in FLAGS}
    try:
        Measurement(**settings)  # every setting checked before a model loads
    except ValueError as error:
        raise UserError(_flagged(error)) from error
    results = []

    def train_with(training):
        results.append(find_lr_on_run(training, **settings))

    out, iters, run = PIPELINES[trainer](rest, options.out, train_with)
    try:
        run()
    finally:
        shutil.rmtree(out / SCRATCH, ignore_errors=True)
    if not results:
        raise UserError("the trainer did not train; give --train (or train: true in --config).")
    result = results[0]
    write_outputs(result, out)
    print_report(result, out, iters, trainer, rest)
    if result.reason == "signal":
        raise SystemExit(130 if "SIGINT" in result.detail else 143)


def print_report(result, out: Path, iters, trainer: str, rest: list[str]) -> None:
    """The suggestions, the ``lr_schedule`` block, the command to train with it, the files."""
    made, planned = len(result.rate), result.settings["num_steps"]
    why = f", stopped: {result.detail}" if result.reason else ""
    print(f"\nlr_find: {made} of {planned} updates{why}.")
    print("Suggestions (on the smoothed loss):")
    for name, suggestion in result.suggestions.items():
        rate = "none" if suggestion.rate is None else f"{suggestion.rate:.3g}"
        mark = "  <- chosen (--suggest)" if name == result.chosen else ""
        at = "" if suggestion.index is None else f"  (update {suggestion.index + 1})"
        print(f"  {name:8s} {rate:>9s}{at}{mark}")
    peak = result.suggested_rate
    if peak is None:
        print(
            f"No {result.chosen} suggestion: the smoothed loss did not fall where the rules "
            "look; try a wider --min-lr/--max-lr or more --num-steps."
        )
    elif not isinstance(iters, int) or iters < 1:
        print(f"No lr_schedule block: the config sets no iters (got {iters!r}).")
    else:
        config = next((b for a, b in zip(rest, rest[1:]) if a in ("--config", "-c")), None)
        block = lr_schedule_yaml(suggested_schedule(peak, iters))
        where = f"into {config}" if config else "into a config file (say sched.yaml)"
        print(f"\nPaste {where}: warmup + cosine over iters {iters}, peak {peak:.3g}:\n")
        print(block)
        command = ["mlx-sched", trainer, *rest]
        if not config:
            command += ["--config", "sched.yaml"]
        print(f"Then train with it:\n  {shlex.join(command)}\n")
    tensorboard = out / "tensorboard"
    png = out / "lr_find.png"
    print(f"Results in {out}: lr_find.json" + (", lr_find.png" if png.exists() else "")
          + f", TensorBoard ({tensorboard_command(tensorboard)})")  # fmt: skip
