"""``mlx-sched demo``: a tiny model fine-tuned under a warmup + cosine schedule, no downloads."""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

from ..trainers.common import replaced
from .common import Parser, tensorboard_command
from .lora import lora_args, run_lora
from .run_options import schedule_from_config
from .summary import BEST_ADAPTERS, mlx_lm_next_steps

DEMO_OUT = Path("mlx-sched-demo")
DEMO_ITERS = 200
DEMO_REPORT_EVERY = 10
DEMO_SAVE_EVERY = 50


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
        "--build-only",
        nargs="?",
        const=DEMO_OUT,
        type=Path,
        metavar="DIR",
        help=f"only build the tiny models and data in DIR (default: ./{DEMO_OUT}) and print "
        "how to run the example configs (examples/*.yaml) on them",
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


def build_only(root: Path) -> None:
    """Build what examples/*.yaml read, and say how to run them."""
    from ..tiny.__main__ import CONTENTS, build_all

    try:
        import mlx_vlm  # noqa: F401

        vlm = True
    except ImportError:
        vlm = False
    for path in build_all(root, vlm=vlm):
        print(f"built {path}  ({CONTENTS[path.name]})")
    # The configs name ./mlx-sched-demo; flags win over a config's keys.
    moved = root != DEMO_OUT
    runs = [
        ("lora", "lora_config.yaml", ["--model", root / "model", "--data", root / "data"]),
        ("lm-lora", "lm_lora_dpo_config.yaml",
         ["--model", root / "model", "--data", root / "pref-data"]),
    ]  # fmt: skip
    if vlm:
        flags = ["--model", root / "vlm-model", "--data", root / "vlm-data"]
        runs.append(("vlm", "vlm_config.yaml", flags))
    print("Run the example configs (in examples/ of the source tree) on them:")
    for command, config, flags in runs:
        flags = [str(flag) for flag in flags] if moved else []
        print("  " + shlex.join(["mlx-sched", command, "-c", f"examples/{config}", *flags]))


def main(argv) -> None:
    parser = demo_parser()
    args = parser.parse_args(argv)
    if args.build_only is not None:
        build_only(args.build_only)
        return
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

    from ..tiny import build_tiny_dataset, build_tiny_model

    out = args.out
    build_tiny_model(out / "model")
    build_tiny_dataset(out / "data")
    warmup = max(args.iters // 10, 1)
    config = [
        "--model", str(out / "model"), "--data", str(out / "data"), "--train",
        "--num-layers", "2", "--batch-size", "4", "--iters", str(args.iters),
        "--steps-per-report", str(DEMO_REPORT_EVERY), "--steps-per-eval", "50",
        "--val-batches", "5", "--save-every", str(DEMO_SAVE_EVERY),
        "--adapter-path", str(out / "adapters"), "--log-dir", str(out / "tensorboard" / "demo"),
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

    from mlx_lm import lora

    printer = "rprint" if hasattr(lora, "rprint") else "print"  # mlx-lm < 0.29: print
    mlx_lm_print = getattr(lora, printer, print)

    def say(*words, **kwargs):  # mlx-lm's words, made true of the demo's model
        if words == ("Loading pretrained model",):
            words = (f"Loading the tiny model in {out / 'model'} (random weights, built here)",)
        mlx_lm_print(*words, **kwargs)

    with replaced(lora, printer, say, may_be_absent=True):
        summary = run_lora(
            lora_namespace,
            extra_callback=KillAt() if args.kill_at else None,
            continue_with=continue_with,
        )
    log_dir = summary.log_dir
    adapters = out / "adapters"
    print(f"Schedule: {schedule_repr}")
    print(f"Done: {args.iters} iterations. Everything is under {out}:")
    print(f"  model:        {out / 'model'}  (tiny llama, random weights, built here)")
    print(f"  data:         {out / 'data'}  (train.jsonl, valid.jsonl, test.jsonl)")
    print(f"  adapters:     {adapters / 'adapters.safetensors'}")
    if (adapters / BEST_ADAPTERS).is_file():
        print(f"  best adapter: {adapters / BEST_ADAPTERS}  (see best_adapters.json)")
    print(f"  checkpoints:  {adapters / 'checkpoints'}  (every {DEMO_SAVE_EVERY} iterations)")
    print(f"  TensorBoard:  {log_dir}")
    print(f"See the curves: {tensorboard_command(log_dir)}  (then open http://localhost:6006)")
    print(f"Resume after a kill: {continue_with}")
    kill_at = args.iters * 6 // 100 * 10  # 120 of 200: past a checkpoint, before the end
    if kill_at and not args.resume:
        print(f"  (try it: {shlex.join(same_run)} --kill-at {kill_at}, then that command)")
    for step in mlx_lm_next_steps(out / "model", adapters):
        print(f"Next: {step}")
    print("Your own config: mlx-sched demo --build-only, then examples/lora_config.yaml")
