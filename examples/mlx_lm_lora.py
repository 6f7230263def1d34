"""LoRA fine-tuning from Python through mlx-lm's own train(), with a schedule, then a resume.

The first part trains to iteration 60 and stops (as a killed job would, after its
checkpoint); the second part builds everything anew, as a restarted job does,
resumes from the newest checkpoint and finishes the run. The TensorBoard curve is
one clean line, and the adapters equal those of a run that never stopped.

    python examples/mlx_lm_lora.py                       # the built-in tiny model
    python examples/mlx_lm_lora.py --model PATH --data DIR   # your own (mlx-lm formats)
    tensorboard --logdir runs/mlx_lm_lora/tensorboard
"""

import argparse
import types
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx_lm import load
from mlx_lm.tuner.datasets import CacheDataset, load_dataset
from mlx_lm.tuner.trainer import TrainingArgs
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlx_sched_callbacks import schedules
from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model
from mlx_sched_callbacks.trainers.mlx_lm import MlxLmTraining


def build(args):
    """Model, optimizer, datasets: everything a restarted job rebuilds."""
    model, tokenizer = load(str(args.model))
    np.random.seed(0)
    mx.random.seed(0)
    data = types.SimpleNamespace(
        data=str(args.data), train=True, test=False, hf_dataset=None, mask_prompt=False
    )
    train_set, valid_set, _ = load_dataset(data, tokenizer)
    model.freeze()
    linear_to_lora_layers(model, args.num_layers, {"rank": 8, "dropout": 0.0, "scale": 20.0})
    optimizer = optim.AdamW(learning_rate=0.0)  # a float: the schedule lives in the callback
    training_args = TrainingArgs(
        batch_size=4,
        iters=args.iters,
        val_batches=5,
        steps_per_report=10,
        steps_per_eval=50,
        steps_per_save=20,
        adapter_file=args.out / "adapters.safetensors",
    )
    schedule = schedules.warmup_cosine(
        peak=1e-3, warmup_steps=args.iters // 10, total_steps=args.iters, end=1e-5
    )
    return MlxLmTraining(
        model,
        optimizer,
        schedule,
        training_args,
        CacheDataset(train_set),
        CacheDataset(valid_set),
        log_dir=args.out / "tensorboard",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="an mlx-lm model directory")
    parser.add_argument("--data", type=Path, default=None, help="{train,valid}.jsonl directory")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--iters", type=int, default=120)
    parser.add_argument("--stop-at", type=int, default=60, help="where the first part stops")
    parser.add_argument("--out", type=Path, default=Path("runs/mlx_lm_lora"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.model = args.model or build_tiny_model(args.out / "tiny_model")
    args.data = args.data or build_tiny_dataset(args.out / "tiny_data")

    print(f"== part 1: train to iteration {args.stop_at}, then stop")
    training = build(args)
    training.train(until=args.stop_at)
    del training

    print("== part 2: a new process would do this: rebuild, resume, finish")
    training = build(args)
    start = training.resume()
    print(f"resumed at iteration {start} from {training.checkpoint_dir}")
    training.train()
    print(f"adapters: {args.out / 'adapters.safetensors'}")
    print(f"TensorBoard: tensorboard --logdir {args.out / 'tensorboard'}")


if __name__ == "__main__":
    main()
