"""A LoRA run through mlx-lm's real train() with MlxLmTraining, for subprocess tests.

Prints "iteration N" after each of mlx-lm's reports (steps_per_report=1 by default), so
a test can SIGKILL it at a chosen iteration. ``--stop-at N --stop-with SIG`` sends the
process SIG itself when the trainer asks for the batch of iteration N (after N - 1).
"""

import argparse
import json
import os
import signal
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import CacheDataset, load_dataset
from mlx_lm.tuner.trainer import TrainingArgs, default_loss
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlx_sched_callbacks import schedules
from mlx_sched_callbacks.tiny import load_tiny
from mlx_sched_callbacks.trainers.mlx_lm import MlxLmTraining

SCHEDULE = schedules.from_mlx_lm_config(
    {"name": "cosine_decay", "arguments": [2e-3, 50, 1e-5], "warmup": 10}
)


class PrintIterations(TrainingCallback):
    def __init__(self):
        self.reports = []

    def on_train_loss_report(self, info):
        self.reports.append(info)
        print(f"iteration {info['iteration']}", flush=True)


def poisoned_loss(model, *batch):
    loss, tokens = default_loss(model, *batch)
    return loss * (1 + model.poison), tokens


def build(
    model_dir, data_dir, out, iters=60, save_every=20, grad_accumulation_steps=1,
    schedule=SCHEDULE, steps_per_eval=25, dropout=0.0, steps_per_report=1, **options,
):  # fmt: skip
    model, tokenizer = load_tiny(model_dir)
    np.random.seed(0)
    mx.random.seed(0)
    data = argparse.Namespace(
        data=str(data_dir), train=True, test=False, hf_dataset=None, mask_prompt=False
    )
    train_set, valid_set, _ = load_dataset(data, tokenizer)
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 8, "dropout": dropout, "scale": 20.0})
    # A frozen scalar in the model's state (an input of the compiled step): set to inf,
    # it makes that step's loss and gradients non-finite, in the trainer's real step.
    model.poison = mx.array(0.0)
    model.freeze(recurse=False, keys=["poison"])
    optimizer = optim.Adam(learning_rate=0.0)
    training_args = TrainingArgs(
        batch_size=4, iters=iters, val_batches=2, steps_per_report=steps_per_report,
        steps_per_eval=steps_per_eval,
        steps_per_save=save_every, adapter_file=Path(out) / "adapters.safetensors",
        grad_accumulation_steps=grad_accumulation_steps,
    )  # fmt: skip
    Path(out).mkdir(parents=True, exist_ok=True)
    printer = PrintIterations()
    training = MlxLmTraining(
        model, optimizer, schedule, training_args, CacheDataset(train_set),
        CacheDataset(valid_set), log_dir=Path(out) / "tensorboard", training_callback=printer,
        loss=poisoned_loss, **options,
    )  # fmt: skip
    return training, printer


def options(args) -> dict:
    found = {"log_grad_norm": True, "max_grad_norm": args.max_grad_norm}
    if args.learning_rate is not None:
        found["schedule"] = schedules.constant(args.learning_rate)
    if args.early_stopping_patience is not None:
        found["early_stopping_patience"] = args.early_stopping_patience
    if args.max_skipped_updates is not None:
        found.update(skip_non_finite=True, max_skipped_updates=args.max_skipped_updates)
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--save-every", type=int, default=20)
    parser.add_argument("--grad-accumulation-steps", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--steps-per-report", type=int, default=1)
    parser.add_argument("--stop-at", type=int, default=None)
    parser.add_argument("--stop-with", choices=["TERM", "INT", "KILL"], default="TERM")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps-per-eval", type=int, default=25)
    parser.add_argument("--learning-rate", type=float, default=None, help="constant, else SCHEDULE")
    parser.add_argument("--early-stopping-patience", type=int, default=None)
    parser.add_argument("--max-grad-norm", type=float, default=None)
    parser.add_argument("--max-skipped-updates", type=int, default=None, help="the guard on")
    parser.add_argument("--poison", type=int, nargs="*", default=[], help="inf loss at these")
    args = parser.parse_args()
    training, printer = build(
        args.model, args.data, args.out, args.iters, args.save_every,
        args.grad_accumulation_steps, dropout=args.dropout,
        steps_per_report=args.steps_per_report, steps_per_eval=args.steps_per_eval,
        **options(args),
    )  # fmt: skip
    if args.poison:
        begin = training.begin_iteration

        def begin_iteration():
            poisoned = training._pulled + 1 in args.poison
            training.model.poison = mx.array(0.0)  # validation, in begin(), stays clean
            begin()
            training.model.poison = mx.array(float("inf") if poisoned else 0.0)

        training.begin_iteration = begin_iteration
    if args.stop_at is not None:
        ask = training.before_next_batch

        def before_next_batch():
            if training._pulled + 1 == args.stop_at:
                os.kill(os.getpid(), getattr(signal, f"SIG{args.stop_with}"))
            ask()

        training.before_next_batch = before_next_batch
    if args.resume:
        print(f"resumed at {training.resume()}", flush=True)
    try:
        training.train()
    finally:
        (args.out / "reports.json").write_text(json.dumps(printer.reports))
    if training.stop_reason:
        print(f"stopped: {training.stop_reason}", flush=True)


if __name__ == "__main__":
    main()
