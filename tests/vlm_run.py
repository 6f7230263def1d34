"""A LoRA run through mlx-vlm's real engine with MlxVlmTraining, for subprocess tests.

Reports once per optimizer update (steps_per_report = k); ``--kill-at N`` SIGKILLs the
process at its report of iteration N.

    python vlm_run.py cli [--stop-at N --stop-with TERM|INT|KILL] FLAG...

is ``mlx-sched vlm FLAG...`` with a chained callback that prints "iteration N" after each
report (global numbering); ``--stop-at``/``--stop-with`` make the run signal itself at
iteration N (see ``lm_lora_run.stop_at``); ``--forget-random-key`` as there.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
from mlx_vlm import load
from mlx_vlm.trainer import Trainer
from mlx_vlm.trainer.common.callbacks import TrainingCallback
from mlx_vlm.trainer.common.model import prepare_model_for_training
from mlx_vlm.trainer.datasets.loading import load as load_rows
from mlx_vlm.trainer.vlm.config import VLMTrainingArgs

from mlx_sched_callbacks import schedules
from mlx_sched_callbacks.trainers.mlx_vlm import MlxVlmTraining

SCHEDULE = schedules.from_mlx_lm_config(
    {"name": "cosine_decay", "arguments": [2e-3, 4, 1e-5], "warmup": 2}
)


class PrintIterations(TrainingCallback):
    def __init__(self, kill_at=None):
        self.reports = []
        self.kill_at = kill_at

    def on_train_loss_report(self, info):
        self.reports.append(info)
        print(f"iteration {info['iteration']}", flush=True)
        if info["iteration"] == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def build(model_dir, data_dir, out, iters=9, save_every=4, k=2, kill_at=None):
    model, processor = load(str(model_dir))
    mx.random.seed(0)
    model = prepare_model_for_training(model, lora_rank=4, lora_dropout=0.1, verbose=False)
    rows = load_rows(str(data_dir))
    args = VLMTrainingArgs(
        batch_size=2, iters=iters, gradient_accumulation_steps=k, val_batches=2,
        steps_per_report=k, steps_per_eval=4, steps_per_save=save_every,
        adapter_file=str(Path(out) / "adapters.safetensors"),
    )  # fmt: skip
    printer = PrintIterations(kill_at)
    trainer = Trainer(
        model, args, optimizer=optim.AdamW(learning_rate=0.0, weight_decay=0.01),
        train_dataset=rows["train"], eval_dataset=rows["valid"], processing_class=processor,
        seed=3, training_callback=printer,
    )  # fmt: skip
    training = MlxVlmTraining.from_trainer(trainer, SCHEDULE, log_dir=Path(out) / "tensorboard")
    return training, printer


def cli(argv):
    """``mlx-sched vlm argv`` with reports printed, and a stop at an iteration if asked."""
    import mlx_vlm.train as mlx_vlm_cli
    from lm_lora_run import forget_random_key, stop_at

    from mlx_sched_callbacks.cli.vlm import main as vlm_main

    argv = forget_random_key(stop_at(argv))
    run = mlx_vlm_cli.run
    mlx_vlm_cli.run = lambda args, settings, training_callback=None: run(
        args, settings, PrintIterations()
    )
    vlm_main(argv)


def main():
    if sys.argv[1:2] == ["cli"]:
        cli(sys.argv[2:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=9)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    training, printer = build(args.model, args.data, args.out, args.iters, kill_at=args.kill_at)
    if args.resume:
        print(f"resumed at {training.resume()}", flush=True)
    training.train()
    (args.out / "reports.json").write_text(json.dumps(printer.reports))


if __name__ == "__main__":
    main()
