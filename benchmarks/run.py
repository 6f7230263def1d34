"""Side-by-side benchmark: what the callback costs per step, next to its alternatives.

    python benchmarks/run.py            # full run: 100,000 steps per figure, best of 5
    python benchmarks/run.py --quick    # smoke run: small counts, same tables

Every figure comes from this one run. Per-step figures are the minimum over
``--repeats`` repeats, and the repeats are interleaved (all cases once, then
all cases again), so a noisy neighbour slows every case alike rather than one.
The ratios are therefore taken between figures measured minutes apart at most.
torch rows need ``pip install -e ".[bench]"``; without torch they are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from mlx_sched_callbacks import LRScheduleCallback, schedules
from mlx_sched_callbacks.callback.gradients import GradientWatch

try:
    import torch
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
    from torch.utils.tensorboard import SummaryWriter
except ImportError as error:
    torch = None
    TORCH_MISSING = f'torch rows skipped ({error}); install with pip install -e ".[bench]"'

TAG = "train/learning_rate"
PEAK = 3e-4


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- per-step cases: each builds what it needs, then times n steps -------------
# The loops are written as a user would write them (attribute lookups included).


def our_schedule(n: int) -> schedules.Schedule:
    return schedules.warmup_cosine(PEAK, warmup_steps=max(1, n // 50), total_steps=n)


def floor(n: int) -> float:
    """No callback: a Python call that sets a float rate, as a hand-written loop would."""
    optimizer = optim.AdamW(learning_rate=0.0)

    def set_rate(rate):
        optimizer.learning_rate = rate

    start = time.perf_counter()
    for _ in range(n):
        set_rate(PEAK)
    return time.perf_counter() - start


def ours_not_logging(n: int) -> float:
    with tempfile.TemporaryDirectory() as log_dir:
        # A real log dir, but no step of the run is due to be logged.
        optimizer = optim.AdamW(learning_rate=0.0)
        callback = LRScheduleCallback(our_schedule(n), optimizer, log_dir, log_every=n + 1)
        start = time.perf_counter()
        for _ in range(n):
            callback.on_step_begin()
            callback.on_step_end()
        elapsed = time.perf_counter() - start
        callback.close()
    return elapsed


def ours_guarded_not_logging(n: int) -> float:
    """A quiet step with the gradient watch on: the guard reads its flag every update."""
    optimizer = optim.AdamW(learning_rate=0.0)
    callback = LRScheduleCallback(our_schedule(n), optimizer, skip_non_finite=True)
    start = time.perf_counter()
    for _ in range(n):
        callback.on_step_begin()
        callback.on_step_end()
    return time.perf_counter() - start


def ours_logging(n: int) -> float:
    """Every step logged; close() (every point on disk, fsync'd) is inside the time."""
    with tempfile.TemporaryDirectory() as log_dir:
        callback = LRScheduleCallback(our_schedule(n), optim.AdamW(learning_rate=0.0), log_dir)
        start = time.perf_counter()
        for _ in range(n):
            callback.on_step_begin()
            callback.on_step_end()
        callback.close()
        return time.perf_counter() - start


def mlx_compiled_update(n: int, scheduled: bool) -> float:
    """An mx.compile'd SGD update of a one-parameter tree, evaluated every step.

    With ``scheduled`` the optimizer holds mlx's own warmup + cosine and
    recomputes it inside the update; the difference to a float rate is what
    mlx's schedule costs per update in a compiled training step.
    """
    warmup = max(1, n // 50)
    rate = (
        optim.join_schedules(
            [optim.linear_schedule(0.0, PEAK, warmup), optim.cosine_decay(PEAK, n - warmup)],
            [warmup],
        )
        if scheduled
        else PEAK
    )
    optimizer = optim.SGD(learning_rate=rate)
    params, grads = {"w": mx.zeros(())}, {"w": mx.ones(())}
    optimizer.init(params)

    @partial(mx.compile, inputs=optimizer.state, outputs=optimizer.state)
    def update(grads, params):
        return optimizer.apply_gradients(grads, params)

    mx.eval(update(grads, params), optimizer.state)  # trace outside the timed loop
    start = time.perf_counter()
    for _ in range(n):
        params = update(grads, params)
        mx.eval(params, optimizer.state)
    return time.perf_counter() - start


def mlx_eager_schedule(n: int) -> float:
    """mlx's schedule called on an mx.array step and read back, as MLX_NOTES measured."""
    warmup = max(1, n // 50)
    schedule = optim.join_schedules(
        [optim.linear_schedule(0.0, PEAK, warmup), optim.cosine_decay(PEAK, n - warmup)],
        [warmup],
    )
    start = time.perf_counter()
    for step in range(n):
        schedule(mx.array(step)).item()
    return time.perf_counter() - start


def torch_scheduler(n: int):
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=PEAK)
    warmup = max(1, n // 50)
    scheduler = SequentialLR(
        optimizer,
        [
            LinearLR(optimizer, start_factor=0.01, total_iters=warmup),
            CosineAnnealingLR(optimizer, T_max=n - warmup),
        ],
        milestones=[warmup],
    )
    optimizer.step()  # no gradient: changes nothing, but silences "step() before optimizer.step()"
    return scheduler


def torch_step(n: int) -> float:
    scheduler = torch_scheduler(n)
    start = time.perf_counter()
    for _ in range(n):
        scheduler.step()
    return time.perf_counter() - start


def torch_step_and_log(n: int) -> float:
    """torch's scheduler step plus SummaryWriter.add_scalar; close() is inside the time."""
    scheduler = torch_scheduler(n)
    with tempfile.TemporaryDirectory() as log_dir:
        writer = SummaryWriter(log_dir)
        start = time.perf_counter()
        for step in range(1, n + 1):
            scheduler.step()
            writer.add_scalar(TAG, scheduler.get_last_lr()[0], step)
        writer.close()
        return time.perf_counter() - start


def best_of(cases: dict, n: int, repeats: int) -> dict:
    """Seconds per step for each case: the minimum over interleaved repeats."""
    times = {name: [] for name in cases}
    for repeat in range(repeats):
        log(f"  repeat {repeat + 1}/{repeats}")
        for name, (case, steps) in cases.items():
            gc.collect()
            gc.disable()
            try:
                times[name].append(case(steps(n)) / steps(n))
            finally:
                gc.enable()
    for name, values in times.items():
        log(f"  {name}: " + ", ".join(us(v) for v in values))
    return {name: min(values) for name, values in times.items()}


# -- other figures ----------------------------------------------------------


def lora_iteration_seconds(warmup: int, iterations: int, watched: str = "") -> float:
    """Median time per iteration of mlx-lm's train() on the tiny llama with LoRA.

    ``watched``: "norm", the gradient norm in the compiled step; "guard", also the
    non-finite guard, its flag read every iteration as the callback reads it."""
    from mlx_lm.tuner.datasets import CacheDataset, load_dataset
    from mlx_lm.tuner.trainer import TrainingArgs, iterate_batches, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from mlx_sched_callbacks.tiny import build_tiny_dataset, load_tiny

    ticks = []
    optimizer = optim.Adam(learning_rate=1e-4)
    watch = GradientWatch(optimizer, skip_non_finite=watched == "guard") if watched else None

    def timed_batches(*args, **kwargs):
        # train() pulls exactly one batch per iteration: the gaps are iteration times.
        for batch in iterate_batches(*args, **kwargs):
            if watch is not None and ticks:
                watch.skipped()
            ticks.append(time.perf_counter())
            yield batch

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_tiny(Path(tmp) / "model")
        mx.random.seed(0)
        model.freeze()
        linear_to_lora_layers(model, 2, {"rank": 8, "dropout": 0.0, "scale": 20.0})
        data = build_tiny_dataset(Path(tmp) / "data")
        train_set, _, _ = load_dataset(
            SimpleNamespace(data=str(data), train=True, test=False), tokenizer
        )
        total = warmup + iterations + 1
        args = TrainingArgs(
            batch_size=4,
            iters=total,
            steps_per_report=10**9,
            steps_per_save=10**9,
            adapter_file=str(Path(tmp) / "adapters.safetensors"),
            # mlx-lm < 0.30.7 validates at iteration 1 whatever the set: make it draw nothing.
            steps_per_eval=10**9,
            val_batches=0,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # train()'s progress display
            optimizer.init(model.trainable_parameters())
            if watch is not None:
                watch.reset()
            train(
                model,
                optimizer,
                CacheDataset(train_set),
                val_dataset=[],
                args=args,
                iterate_batches=timed_batches,
            )
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    return statistics.median(gaps[warmup:])


def values_seconds(repeats: int) -> tuple[float, float]:
    """Best time for a 1,000,000-step warmup + cosine: ours with numpy, mlx's on an mx.array."""
    n = 1_000_000
    ours = schedules.warmup_cosine(PEAK, warmup_steps=2_000, total_steps=n)
    theirs = optim.join_schedules(
        [optim.linear_schedule(0.0, PEAK, 2_000), optim.cosine_decay(PEAK, n - 2_000)], [2_000]
    )
    ours_times, mlx_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours.values(n)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        mx.eval(theirs(mx.arange(n)))
        mlx_times.append(time.perf_counter() - start)
    return min(ours_times), min(mlx_times)


def bytes_per_point(points: int) -> dict:
    """Event-file bytes per logged point, the file's fixed header left out."""

    def size(log_dir):
        return sum(p.stat().st_size for p in Path(log_dir).rglob("events.*"))

    def ours(log_dir, k):
        callback = LRScheduleCallback(our_schedule(points), optim.SGD(learning_rate=0.0), log_dir)
        callback.writer  # noqa: B018 - opens the file even when k is 0
        for _ in range(k):
            callback.on_step_begin()
            callback.on_step_end()
        callback.close()

    def torchs(log_dir, k):
        writer = SummaryWriter(log_dir)
        for step in range(1, k + 1):
            writer.add_scalar(TAG, PEAK * step / k, step)
        writer.close()

    result = {}
    for name, write in [("ours", ours), ("torch", torchs)]:
        if name == "torch" and torch is None:
            continue
        sizes = []
        for k in (0, points):
            with tempfile.TemporaryDirectory() as log_dir:
                write(log_dir, k)
                sizes.append(size(log_dir))
        result[name] = (sizes[1] - sizes[0]) / points
    return result


def trace_counts(steps: int) -> tuple[int, int]:
    """Traces of an mx.compile'd step: a constant rate, then the callback's every-step rate."""

    def run(with_callback: bool) -> int:
        mx.random.seed(0)
        model = nn.Linear(4, 1)
        optimizer = optim.AdamW(learning_rate=PEAK)
        optimizer.init(model.trainable_parameters())
        callback = LRScheduleCallback(our_schedule(steps), optimizer) if with_callback else None
        traces = []
        state = [model.state, optimizer.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def step(x, y):
            traces.append(1)  # a Python side effect: runs only while tracing
            loss, grads = nn.value_and_grad(model, lambda m: ((m(x) - y) ** 2).mean())(model)
            optimizer.update(model, grads)
            return loss

        x, y = mx.ones((8, 4)), mx.zeros((8, 1))
        for _ in range(steps):
            if callback:
                callback.on_step_begin()
            mx.eval(step(x, y), state)
            if callback:
                callback.on_step_end()
        return len(traces)

    return run(False), run(True)


# -- report -----------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    torch_version = torch.__version__ if torch is not None else "not installed"
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, mlx {version('mlx')}, "
        f"mlx-lm {version('mlx-lm')}, numpy {version('numpy')}, torch {torch_version}"
    )


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.2f} us"


def ratio(a: float, b: float | None) -> str:
    if b is None:
        return "n/a"
    return f"{a / b:.3g}x"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--steps", type=int, help="steps per per-step figure (default 100,000)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 5)")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]
    n = args.steps or (2_000 if args.quick else 100_000)
    repeats = args.repeats or (2 if args.quick else 5)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")

    every = lambda k: k  # noqa: E731
    tenth = lambda k: max(1, k // 10)  # noqa: E731 - ~100 us a step: 1/10 of the steps
    cases = {
        "floor": (floor, every),
        "ours, not logged": (ours_not_logging, every),
        "ours, logged": (ours_logging, every),
        "ours, guard on, not logged": (ours_guarded_not_logging, every),
        "mlx compiled, float": (partial(mlx_compiled_update, scheduled=False), every),
        "mlx compiled, schedule": (partial(mlx_compiled_update, scheduled=True), every),
        "mlx eager": (mlx_eager_schedule, tenth),
    }
    if torch is not None:
        cases["torch step"] = (torch_step, every)
        cases["torch step + log"] = (torch_step_and_log, every)
    log(f"per-step figures: {n:,} steps, best of {repeats}")
    per_step = best_of(cases, n, repeats)
    log("tiny-llama LoRA through mlx_lm train()")
    lengths = (2, 5) if args.quick else (10, 50)
    # Interleaved, best of each: the gradient watch's cost is a small difference of two.
    plain, normed, guarded = [], [], []
    for _ in range(1 if args.quick else 3):
        plain.append(lora_iteration_seconds(*lengths))
        normed.append(lora_iteration_seconds(*lengths, watched="norm"))
        guarded.append(lora_iteration_seconds(*lengths, watched="guard"))
    lora, lora_norm, lora_guard = min(plain), min(normed), min(guarded)
    log("1,000,000-step schedule, event bytes, traces")
    ours_values, mlx_values = values_seconds(repeats)
    sizes = bytes_per_point(1_000 if args.quick else 10_000)
    trace_steps = 200 if args.quick else 10_000
    traces_constant, traces_ours = trace_counts(trace_steps)

    fl = per_step["floor"]
    t_step = per_step.get("torch step")
    t_log = per_step.get("torch step + log")
    rows = [
        ("No callback (the floor): `optimizer.learning_rate = x` in a Python call", fl),
        (
            "Ours, a step it does not log: `on_step_begin()` + `on_step_end()`",
            per_step["ours, not logged"],
        ),
        (
            "Ours, a step it does not log, non-finite guard on (reads one flag per update)",
            per_step["ours, guard on, not logged"],
        ),
        (
            "Ours, logging every step to a real log dir (close() included)",
            per_step["ours, logged"],
        ),
        (
            "mlx's schedule inside a compiled update, extra over a float rate",
            per_step["mlx compiled, schedule"] - per_step["mlx compiled, float"],
        ),
        (
            "mlx's schedule evaluated eagerly, `s(mx.array(step)).item()` (n/10 steps)",
            per_step["mlx eager"],
        ),
        ("torch `SequentialLR(LinearLR, CosineAnnealingLR).step()`", t_step),
        ("torch `.step()` + `SummaryWriter.add_scalar` (close() included)", t_log),
    ]
    out = [
        f"Machine: {machine()}. Load average (1 min): {load_at_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end.",
        "",
        f"Per step: {n:,} steps, best of {repeats} interleaved repeats; a tiny-llama LoRA "
        f"iteration through mlx-lm's `train()` takes {lora * 1e3:.1f} ms here.",
        "",
        "| per step | time | x floor | x torch step | x torch step + log | of a LoRA step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, value in rows:
        if value is None:
            out.append(f"| {label} | skipped | | | | |")
            continue
        out.append(
            f"| {label} | {us(value)} | {ratio(value, fl)} | {ratio(value, t_step)} "
            f"| {ratio(value, t_log)} | {value / lora:.4%} |"
        )
    out += [
        "",
        "The mlx row is an `mx.compile`d `apply_gradients` of a one-parameter SGD built with "
        "mlx's `join_schedules(linear, cosine)`, minus the same with a float rate, both "
        "`mx.eval`'d every step: what the schedule costs inside a compiled update. Ours and "
        "torch use the same warmup + cosine shape; the logging rows include `close()` (ours "
        "also `fsync`s).",
        "",
        "| other figures | ours | reference |",
        "|---|---:|---:|",
        f"| 1,000,000-step warmup + cosine at once (best of {repeats}) "
        f"| `values()`: {ours_values:.4f} s | mlx on `mx.arange`: {mlx_values:.4f} s |",
        f"| event-file bytes per logged point (tag `{TAG}`) | {sizes['ours']:.1f} B "
        f"| torch SummaryWriter: "
        + (f"{sizes['torch']:.1f} B |" if "torch" in sizes else "skipped |"),
        f"| traces of an `mx.compile`d step over {trace_steps:,} steps "
        f"| rate changing every step: {traces_ours} | constant rate: {traces_constant} |",
        f"| tiny-llama LoRA iteration, mlx-lm `train()` (median) | {lora * 1e3:.2f} ms | |",
        f"| the same with the gradient norm in its compiled step "
        f"| {lora_norm * 1e3:.2f} ms ({lora_norm / lora - 1:+.2%}) | {lora * 1e3:.2f} ms |",
        f"| the same with the gradient norm and the non-finite guard "
        f"| {lora_guard * 1e3:.2f} ms ({lora_guard / lora - 1:+.2%}) | {lora * 1e3:.2f} ms |",
    ]
    targets = [
        ("logging every step <= 1/10 of torch step + log", per_step["ours, logged"], t_log, 0.1),
        ("a step not logged <= 1.6x the floor", per_step["ours, not logged"], fl, 1.6),
        ("gradient norm <= 1% of a LoRA step (+1)", lora_norm, lora, 1.01),
        ("1,000,000-step schedule <= 0.1 s", ours_values, 1.0, 0.1),
    ]
    out += ["", "| target | measured | met |", "|---|---:|:---:|"]
    for label, value, reference, limit in targets:
        if reference is None:
            out.append(f"| {label} | skipped | |")
        else:
            met = "yes" if value / reference <= limit else "**no**"
            out.append(f"| {label} | {value / reference:.3g} | {met} |")
    met = "yes" if traces_ours == traces_constant else "**no**"
    out.append(f"| traces stay at the baseline | {traces_ours} vs {traces_constant} | {met} |")
    if torch is None:
        out += ["", TORCH_MISSING]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
