"""A hand-written MLX training loop (mlx-examples style) with LRScheduleCallback.

Trains a small MLP on a synthetic two-spirals task with a warmup + cosine schedule,
logs the rate and the loss to TensorBoard, checkpoints model, optimizer and callback
state every few steps, and resumes from the newest complete checkpoint:

    python examples/custom_loop.py --steps 200               # train, checkpoint
    python examples/custom_loop.py --steps 200 --resume      # continue after a kill
    tensorboard --logdir runs/custom_loop/tensorboard
"""

import argparse
import math
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from mlx_sched_callbacks import LRScheduleCallback, schedules
from mlx_sched_callbacks.run.checkpoint import (
    latest_checkpoint,
    load_optimizer_state,
    prune_checkpoints,
    save_optimizer_state,
    write_checkpoint,
)


def two_spirals(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.25, 3 * math.pi, size=n)
    label = rng.integers(0, 2, size=n)
    sign = np.where(label == 0, 1.0, -1.0)
    x = np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], axis=1) / (3 * math.pi)
    x += rng.normal(scale=0.02, size=x.shape)
    return x.astype(np.float32), label.astype(np.int32)


class MLP(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.layers = [nn.Linear(2, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 2)]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nn.relu(layer(x))
        return self.layers[-1](x)


def loss_fn(model, x, y):
    return nn.losses.cross_entropy(model(x), y, reduction="mean")


def batch_for(step: int, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    # The batch is a pure function of the step, so a resumed run sees the same data.
    index = np.random.default_rng([seed, step]).integers(0, len(x), size=batch_size)
    return mx.array(x[index]), mx.array(y[index])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer updates in the run")
    parser.add_argument("--warmup", type=int, default=20, help="warmup updates")
    parser.add_argument("--peak-lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/custom_loop"))
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--flush-secs",
        type=float,
        default=10.0,
        help="longest wait before logged points reach the file",
    )
    args = parser.parse_args(argv)

    checkpoints = args.out / "checkpoints"
    x, y = two_spirals(4096, seed=args.seed)
    mx.random.seed(args.seed)
    model = MLP()
    optimizer = optim.AdamW(learning_rate=0.0, weight_decay=1e-4)
    optimizer.init(model.trainable_parameters())

    schedule = schedules.join_schedules(
        [
            schedules.linear_schedule(0.0, args.peak_lr, steps=args.warmup),
            schedules.cosine_decay(args.peak_lr, args.steps - args.warmup, end=args.peak_lr / 100),
        ],
        boundaries=[args.warmup],
    )
    callback = LRScheduleCallback(
        schedule, optimizer, log_dir=args.out / "tensorboard", flush_secs=args.flush_secs
    )

    if args.resume and (folder := latest_checkpoint(checkpoints)) is not None:
        model.load_weights(str(folder / "model.safetensors"))
        load_optimizer_state(
            optimizer, folder / "optimizer.safetensors", model.trainable_parameters()
        )
        callback.load(folder / "callback.json")
        print(f"resumed from {folder} at step {callback.step}", flush=True)
    elif args.resume:
        print(f"no complete checkpoint in {checkpoints}; starting at step 0", flush=True)

    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def train_step(inputs, targets):
        loss, grads = nn.value_and_grad(model, loss_fn)(model, inputs, targets)
        optimizer.update(model, grads)
        return loss

    def save_checkpoint():
        folder = write_checkpoint(
            checkpoints,
            callback.step,
            {
                "model.safetensors": lambda p: mx.save_safetensors(
                    str(p), dict(tree_flatten(model.parameters()))
                ),
                "optimizer.safetensors": partial(save_optimizer_state, optimizer),
                "callback.json": callback.save,
            },
        )
        prune_checkpoints(checkpoints, keep=3)
        print(f"checkpoint {folder}", flush=True)

    # Ctrl-C or SIGTERM: finish the step, checkpoint, and exit with 128 + the signal.
    with callback, callback.catch_signals():
        for step in range(callback.step, args.steps):
            lr = callback.on_step_begin()
            loss = train_step(*batch_for(step, x, y, args.batch_size, args.seed))
            mx.eval(state, loss)
            callback.on_step_end()
            callback.log_scalar("train/loss", loss.item(), callback.step)
            print(f"step {callback.step} loss {loss.item():.4f} lr {lr:.6g}", flush=True)

            due = callback.step % args.checkpoint_every == 0 or callback.step == args.steps
            if due:
                save_checkpoint()
            if signum := callback.stop_requested:
                if not due:
                    save_checkpoint()
                print(
                    f"Stopped by signal {signum} at step {callback.step}; continue with: "
                    f"python examples/custom_loop.py --steps {args.steps} --out {args.out} "
                    "--resume",
                    flush=True,
                )
                raise SystemExit(128 + signum)

    accuracy = (mx.argmax(model(mx.array(x)), axis=1) == mx.array(y)).mean().item()
    print(f"done: {callback.step} steps, accuracy {accuracy:.3f}")
    print(f"TensorBoard: tensorboard --logdir {args.out / 'tensorboard'}")


if __name__ == "__main__":
    main()
