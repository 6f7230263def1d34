"""Runs for tests/test_lm_lora.py: tiny data for every mlx-lm-lora mode, and the two commands.

    python lm_lora_run.py build ROOT           # model, data/{sft,pref,grpo,prompt}, rewards.py
    python lm_lora_run.py ours FLAG...         # mlx-sched lm-lora FLAG...
    python lm_lora_run.py theirs FLAG...       # mlx_lm_lora.train FLAG... (Metal key given)

``ours`` prints "iteration N" after each of the trainer's reports (global numbering,
through the chained callback mlx_lm_lora.train.run hands on), so a test can kill it there.
``ours --stop-at N --stop-with TERM|INT|KILL FLAG...`` makes the run send itself that
signal at iteration N (see :func:`stop_at`); the two flags are not passed on.
``--forget-random-key`` (a control for tests) makes a resume leave mlx's random key as
the new process has it instead of restoring the checkpoint's.
"""

import json
import os
import random
import signal
import sys
from pathlib import Path

from mlx_lm.tuner.callbacks import TrainingCallback

from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model

REWARDS = """\
from mlx_lm_lora.trainer.grpo_reward_functions import register_reward_function


@register_reward_function()
def length_reward(prompts, completions, answer, types=None):
    return [min(len(c), 64) / 64.0 for c in completions]
"""

# The data folder each mode reads.
DATA = {"sft": "sft", "grpo": "grpo", "klpo": "grpo"} | dict.fromkeys(
    ("online_dpo", "ppo", "xpo", "rlhf_reinforce"), "prompt"
)


def build(root: Path) -> None:
    """The tiny model, and data for each mode: text, prompt/chosen/rejected, prompt/answer,
    prompt only; plus a reward function that is not 0 for a random model's output."""
    build_tiny_model(root / "model")
    build_tiny_dataset(root / "data" / "sft", n_train=64, n_valid=8, n_test=4)
    rng = random.Random(0)
    for kind in ("pref", "grpo", "prompt"):
        folder = root / "data" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", 24), ("valid", 4)):
            rows = []
            for _ in range(n):
                a, b = rng.randint(1, 9), rng.randint(1, 9)
                row = {"prompt": f"what is {a} plus {b}?"}
                if kind == "pref":
                    row |= {"chosen": f"{a} plus {b} is {a + b}.", "rejected": "the cat is red."}
                if kind == "grpo":
                    row["answer"] = str(a + b)
                rows.append(json.dumps(row) + "\n")
            (folder / f"{split}.jsonl").write_text("".join(rows))
    (root / "rewards.py").write_text(REWARDS)


def flags(root: Path, mode: str, out: Path, iters: int, **options) -> list[str]:
    """mlx_lm_lora.train flags for a short run of ``mode`` on the tiny data."""
    options = {
        "batch_size": 2, "steps_per_report": 1, "steps_per_eval": 4, "val_batches": 1,
        "save_every": 4, "max_seq_length": 64, "learning_rate": 1e-3, "seed": 3,
        "gradient_accumulation_steps": 1, **options,
    }  # fmt: skip
    out_flags = [
        "--model", str(root / "model"), "--data", str(root / "data" / DATA.get(mode, "pref")),
        "--train", "--train-mode", mode, "--iters", str(iters), "--adapter-path", str(out),
    ]  # fmt: skip
    for key, value in options.items():
        out_flags += [f"--{key.replace('_', '-')}", str(value)]
    if mode in ("grpo", "klpo"):
        out_flags += ["--group-size", "2", "--max-completion-length", "8",
                      "--reward-functions-file", str(root / "rewards.py"),
                      "--reward-functions", "length_reward,r1_count_xml"]  # fmt: skip
    if mode in ("online_dpo", "ppo", "xpo", "rlhf_reinforce"):
        out_flags += ["--judge", str(root / "model"), "--max-completion-length", "8"]
    return out_flags


def forget_random_key(argv: list[str]) -> list[str]:
    """``argv`` without ``--forget-random-key``; with it, a resume does not restore mlx's key.

    A control: a comparison that cannot tell this run from an exact one proves nothing.
    """
    if "--forget-random-key" not in argv:
        return argv
    from mlx_sched_callbacks.run import TrainingRun

    assert hasattr(TrainingRun, "_restore_random"), "the control needs updating"
    TrainingRun._restore_random = lambda self, state: None
    return [a for a in argv if a != "--forget-random-key"]


def stop_at(argv: list[str]) -> list[str]:
    """``argv`` without ``--stop-at N --stop-with SIG``; with them, the run stops itself at N.

    The signal is sent once, when the run is about to hand iteration N's batch to the
    trainer: a polite one (TERM, INT) when the trainer asks for that batch, before it is
    drawn (or, at the first batch of a trainer call, right after it is drawn); KILL just
    after iteration N - 1 has been counted (and checkpointed, if that was due). Either
    way iterations 1..N-1 have run and N has not.
    """
    if "--stop-at" not in argv:
        return argv
    argv = list(argv)
    i = argv.index("--stop-at")
    at = int(argv.pop(i + 1))
    argv.pop(i)
    how = "TERM"
    if "--stop-with" in argv:
        i = argv.index("--stop-with")
        how = argv.pop(i + 1)
        argv.pop(i)
    signum = getattr(signal, f"SIG{how}")

    from mlx_sched_callbacks.run import TrainingRun

    sent = []

    def send(run):
        if not sent and run._pulled + 1 == at:
            sent.append(how)
            print(f"sending SIG{how} before iteration {at}", flush=True)
            os.kill(os.getpid(), signum)

    ask, begin = TrainingRun.before_next_batch, TrainingRun.begin_iteration

    def before_next_batch(self):
        if how != "KILL":
            send(self)
        ask(self)
        send(self)

    def begin_iteration(self):
        send(self)
        begin(self)

    TrainingRun.before_next_batch = before_next_batch
    TrainingRun.begin_iteration = begin_iteration
    return argv


class PrintIterations(TrainingCallback):
    def on_train_loss_report(self, info):
        print(f"iteration {info['iteration']}", flush=True)


def main() -> None:
    command, argv = sys.argv[1], sys.argv[2:]
    if command == "build":
        build(Path(argv[0]))
        return
    from mlx_lm_lora import train as lora_train

    if command == "theirs":
        import mlx.core as mx

        from mlx_sched_callbacks.trainers.mlx_lm_lora import metal_key_for_cpu

        # Its LoRA layers are made before it seeds mlx: start from the seed, as ours does.
        mx.random.seed(int(argv[argv.index("--seed") + 1]))
        sys.argv = ["mlx_lm_lora.train", *argv]
        with metal_key_for_cpu():
            lora_train.main()
        return
    from mlx_sched_callbacks.cli.lm_lora import main as lm_lora_main

    argv = forget_random_key(stop_at(argv))
    run = lora_train.run
    lora_train.run = lambda args, training_callback=None: run(args, PrintIterations())
    lm_lora_main(argv)


if __name__ == "__main__":
    main()
