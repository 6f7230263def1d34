"""Exact by carrying state, through mlx-lm-lora's and mlx-vlm's real trainers, in real processes.

``mlx-sched lm-lora`` (sft, dpo, grpo, online_dpo) and ``mlx-sched vlm`` (sft, grpo),
with LoRA dropout 0.1 where the trainer allows it (mlx-vlm's GRPO refuses dropout: there
the sampled rollouts use mlx's random key), gradient accumulation 2, reports every 3
iterations (so reports fall inside accumulation groups and a resumed trainer call must
end on the report grid) and a checkpoint every 6: each run is stopped once by SIGKILL,
SIGTERM or SIGINT at a chosen iteration, on the save grid or off it, then resumed with
``--resume``, and compared with an uninterrupted run:

* sha256 of ``adapters.safetensors``, of every numbered ``NNNNNNN_adapters.safetensors``
  and of every file of every checkpoint folder the two runs share;
* TensorBoard: ``train/learning_rate`` point for point; ``train/loss``, ``val/loss`` and
  ``train/trained_tokens`` step by step (see :func:`assert_same_curves`);
* the reports the chained callback sees after the resume.

Drop-in: each CLI with dropout 0.1 and a checkpoint every 10 gives the vanilla trainer's
adapter files byte for byte (``mlx_lm_lora.train`` sft and grpo, ``mlx_vlm.train`` sft).

Controls: the same stop resumed without restoring mlx's random key must be caught, so
the comparisons can fail (dropout and sampling are really in play).

A few fixed stops run by default; ``MLX_SCHED_STOPS=N`` (and ``MLX_SCHED_SEED``) adds N
stops at random iterations with random signals across all these modes. A polite stop
whose resume point is off the report grid with a report due inside an accumulation group
(:func:`misaligned`) is a known failure of the core (xfail, strict).
"""

import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml
from conftest import read_scalars

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lm_lora_run import flags as lm_lora_flags  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
WORKERS = 3

# One run shape for every trainer: 14 iterations, k = 2, a report every 3 iterations,
# a checkpoint every 6, validation every 4.
ITERS, K, REPORT, SAVE, EVAL = 14, 2, 3, 6, 4
LR_SCHEDULE = {"name": "cosine_decay", "arguments": [1e-3, 6, 1e-5], "warmup": 2}
DROPOUT = {"rank": 8, "dropout": 0.1, "scale": 10.0}
CODES = {"TERM": 128 + signal.SIGTERM, "INT": 128 + signal.SIGINT, "KILL": -signal.SIGKILL}

# (mode, signal, N): the signal arrives with iterations 1..N-1 run and N not (see
# lm_lora_run.stop_at). KILL at 7 comes right after the checkpoint at 6 (on the grid),
# at 9/10 between checkpoints; TERM/INT at 4, 5, 9, 11 stop at the end of the group
# under way, off the save grid and inside a report window; INT at 7 stops at once, on
# both grids.
LM_LORA_STOPS = [
    ("sft", "TERM", 4), ("sft", "KILL", 7), ("sft", "INT", 9),
    ("dpo", "KILL", 10), ("dpo", "TERM", 11),
    ("grpo", "INT", 5), ("grpo", "KILL", 9),
    ("online_dpo", "TERM", 9), ("online_dpo", "KILL", 7), ("online_dpo", "INT", 7),
    ("sft", "INT", 8),  # stops at 8: resumed off the report grid, a report due at 9
]  # fmt: skip
VLM_STOPS = [
    ("sft", "TERM", 4), ("sft", "KILL", 9), ("sft", "INT", 7),
    ("grpo", "KILL", 7), ("grpo", "TERM", 9), ("grpo", "INT", 5),
    ("sft", "TERM", 2),  # stops at 2: resumed off the report grid, a report due at 3
]  # fmt: skip

# Controls: the same stop, resumed without restoring mlx's random key, must differ (the
# randomness is LoRA dropout in sft, sampling in vlm's grpo): the comparison can fail.
LM_LORA_CONTROLS = [("sft", "KILL", 9)]
VLM_CONTROLS = [("sft", "KILL", 9), ("grpo", "KILL", 9)]
# Drop-in against the vanilla CLI (mlx-vlm: sft).
DROP_IN_LM_LORA = ["sft", "grpo"]
# A mode's rough cost per run, to start the longest jobs first.
COST = {"online_dpo": 4, "grpo": 3, "dpo": 2, "sft": 1}


def case_id(case):
    return "-".join(map(str, case))


# -- running -------------------------------------------------------------------------


def run(command):
    """Run ``command``; return (exit code, stdout + stderr)."""
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    return done.returncode, done.stdout + "\n" + done.stderr


def in_parallel(jobs: dict) -> dict:
    """Run ``{name: (cost, function)}`` side by side, costliest first; ``{name: function()}``."""
    order = sorted(jobs, key=lambda name: -jobs[name][0])
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {name: pool.submit(jobs[name][1]) for name in order}
        return {name: future.result() for name, future in futures.items()}


def stopped_and_resumed(command, out, how, at, *resume_flags):
    """The two processes of one stop: (stopped, resumed), each (code, output)."""

    def job():
        first = run([*command(out), "--stop-at", str(at), "--stop-with", how])
        return first, run([*command(out), "--resume", *resume_flags])

    return job


class Trainer:
    """The commands of one trainer's runs, and where they go."""

    def __init__(self, root: Path, ours, theirs):
        self.root, self.ours, self.theirs = root, ours, theirs

    def whole(self, mode):
        return self.root / f"whole-{mode}"

    def stopped(self, case):
        return self.root / f"stopped-{case_id(case)}"

    def control(self, case):
        return self.root / f"control-{case_id(case)}"

    def jobs(self, stops, controls):
        jobs = {}
        for mode in sorted({case[0] for case in stops}):
            whole = (lambda m: lambda: run(self.ours(m)(self.whole(m))))(mode)
            jobs[f"whole-{mode}"] = COST[mode], whole
        for case in stops:
            mode, how, at = case
            job = stopped_and_resumed(self.ours(mode), self.stopped(case), how, at)
            jobs[case_id(case)] = 2 * COST[mode], job
        for case in controls:
            mode, how, at = case
            job = stopped_and_resumed(
                self.ours(mode), self.control(case), how, at, "--forget-random-key"
            )
            jobs[f"control-{case_id(case)}"] = 2 * COST[mode], job
        return jobs


# -- mlx-lm-lora ------------------------------------------------------------------------


def lm_lora_trainer(root: Path) -> Trainer:
    subprocess.run([sys.executable, str(HERE / "lm_lora_run.py"), "build", str(root)], check=True)
    config = root / "dropout.yaml"
    config.write_text(yaml.safe_dump(
        {"fuse": False, "lora_parameters": DROPOUT, "lr_schedule": LR_SCHEDULE}
    ))  # fmt: skip
    plain = root / "dropout-no-schedule.yaml"
    plain.write_text(yaml.safe_dump({"fuse": False, "lora_parameters": DROPOUT}))

    def ours(mode):
        def command(out):
            options = dict(gradient_accumulation_steps=K, steps_per_report=REPORT,
                           save_every=SAVE, steps_per_eval=EVAL)  # fmt: skip
            return [sys.executable, str(HERE / "lm_lora_run.py"), "ours",
                    *lm_lora_flags(root, mode, out, ITERS, **options), "--config", str(config),
                    "--keep-checkpoints", "20"]  # fmt: skip

        return command

    def theirs(kind, mode, out):
        # Drop-in: dropout 0.1, a checkpoint every 10, reports every 3 with k = 2.
        options = dict(gradient_accumulation_steps=K, steps_per_report=REPORT, save_every=10,
                       steps_per_eval=EVAL)  # fmt: skip
        return [sys.executable, str(HERE / "lm_lora_run.py"), kind,
                *lm_lora_flags(root, mode, out, 20, **options), "--config", str(plain)]  # fmt: skip

    return Trainer(root, ours, theirs)


@pytest.fixture(scope="module")
def lm_lora(tmp_path_factory):
    pytest.importorskip("mlx_lm_lora")
    trainer = lm_lora_trainer(tmp_path_factory.mktemp("exact_lm_lora"))
    jobs = trainer.jobs(LM_LORA_STOPS, LM_LORA_CONTROLS)
    for mode in DROP_IN_LM_LORA:
        for kind in ("ours", "theirs"):
            out = trainer.root / f"drop-in-{kind}-{mode}"
            command = trainer.theirs(kind, mode, out)
            jobs[out.name] = 1.5 * COST[mode], (lambda c: lambda: run(c))(command)
    return trainer, in_parallel(jobs)


# -- mlx-vlm ------------------------------------------------------------------------------


def vlm_trainer(root: Path) -> Trainer:
    from mlx_sched_callbacks.tiny import (
        build_tiny_vlm,
        build_tiny_vlm_dataset,
        build_tiny_vlm_grpo_dataset,
    )

    model = build_tiny_vlm(root / "model")
    data = {"sft": build_tiny_vlm_dataset(root / "sft"),
            "grpo": build_tiny_vlm_grpo_dataset(root / "grpo")}  # fmt: skip

    def shape(mode, iters, save):
        flags = [
            "--model", model, "--data", data[mode], "--train-mode", mode, "--iters", iters,
            "--batch-size", 2, "--gradient-accumulation-steps", K, "--steps-per-report", REPORT,
            "--steps-per-eval", EVAL, "--val-batches", 1, "--steps-per-save", save,
            "--optimizer", "adamw", "--weight-decay", 0.01, "--learning-rate", 1e-3,
            "--lora-rank", 4, "--seed", 5,
        ]  # fmt: skip
        if mode == "sft":
            flags += ["--lora-dropout", 0.1]
        else:
            # mlx-vlm's GRPO refuses LoRA dropout; its rollouts sample with mlx's key, and
            # beta > 0 (a reference model) gives a loss that is not 0.
            flags += ["--group-size", 2, "--max-completion-length", 8, "--max-seq-length", 64,
                      "--temperature", 1.0, "--beta", 0.1, "--reward-functions-file",
                      data[mode] / "rewards.py", "--reward-functions", "char_reward"]  # fmt: skip
        return list(map(str, flags))

    def ours(mode):
        def command(out):
            return [sys.executable, str(HERE / "vlm_run.py"), "cli", *shape(mode, ITERS, SAVE),
                    "--output-path", str(out), "--keep-checkpoints", "20",
                    "--lr-schedule", json.dumps(LR_SCHEDULE)]  # fmt: skip

        return command

    def theirs(kind, mode, out):
        # Drop-in: dropout 0.1, a checkpoint every 10.
        start = [str(HERE / "vlm_run.py"), "cli"] if kind == "ours" else ["-m", "mlx_vlm.train"]
        return [sys.executable, *start, *shape(mode, 20, 10), "--output-path", str(out)]

    return Trainer(root, ours, theirs)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    pytest.importorskip("mlx_vlm")
    trainer = vlm_trainer(tmp_path_factory.mktemp("exact_vlm"))
    jobs = trainer.jobs(VLM_STOPS, VLM_CONTROLS)
    for kind in ("ours", "theirs"):
        out = trainer.root / f"drop-in-{kind}-sft"
        command = trainer.theirs(kind, "sft", out)
        jobs[out.name] = 1.5 * COST["sft"], (lambda c: lambda: run(c))(command)
    return trainer, in_parallel(jobs)


# -- what is compared ----------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def array_differences(a: Path, b: Path) -> str:
    """Which arrays of two safetensors files differ, and by how much."""
    try:
        x, y = mx.load(str(a)), mx.load(str(b))
    except Exception as error:  # noqa: BLE001 - a description, for a failure message
        return f"(not comparable as arrays: {error})"
    if list(x) != list(y):
        return f"keys differ or are in another order: {sorted(set(x) ^ set(y)) or 'order'}"
    out = []
    for key in x:
        if x[key].dtype != y[key].dtype or x[key].shape != y[key].shape:
            out.append(f"{key}: {x[key].dtype}{x[key].shape} vs {y[key].dtype}{y[key].shape}")
            continue
        diff = np.abs(np.array(x[key], dtype=np.float64) - np.array(y[key], dtype=np.float64))
        if diff.max() > 0:
            out.append(f"{key}: max |diff| {diff.max():.3g}")
    return "; ".join(out[:6]) + (f" (+{len(out) - 6} more)" if len(out) > 6 else "") or (
        "same arrays, other bytes"
    )


def describe(path: Path, other: Path) -> str:
    if path.suffix == ".safetensors":
        return array_differences(path, other)
    return f"{path.read_text()[:600]!r} vs {other.read_text()[:600]!r}"


def checkpoint_steps(folder: Path) -> set:
    return {int(p.name[5:]) for p in (folder / "checkpoints").glob("step_*") if p.is_dir()}


def numbered(folder: Path) -> list:
    return sorted(p.name for p in folder.glob("[0-9]*_adapters.safetensors"))


def assert_same_files(out: Path, whole: Path, extra_checkpoints=()):
    """Adapters, numbered adapters and every shared checkpoint file: the same bytes."""
    problems = []

    def same(relative):
        a, b = out / relative, whole / relative
        if not a.is_file() or not b.is_file():
            problems.append(
                f"{relative}: missing in {'the resumed run' if b.is_file() else 'whole'}"
            )
        elif sha256(a) != sha256(b):
            problems.append(f"{relative} differs: {describe(a, b)}")

    same("adapters.safetensors")
    if numbered(out) != numbered(whole):
        problems.append(f"numbered adapter files {numbered(out)} != {numbered(whole)}")
    for name in numbered(whole):
        same(name)
    ours, theirs = checkpoint_steps(out), checkpoint_steps(whole)
    assert theirs == set(range(SAVE, ITERS, SAVE)) | {ITERS}, theirs
    # A polite stop adds the checkpoint at the stop; nothing else may differ.
    if ours != theirs | set(extra_checkpoints):
        problems.append(f"checkpoints {sorted(ours)} != {sorted(theirs | set(extra_checkpoints))}")
    for step in sorted(ours & theirs):
        folder = f"checkpoints/step_{step:09d}"
        names = sorted(p.name for p in (whole / folder).iterdir())
        assert {"adapters.safetensors", "optimizer.safetensors", "callback.json",
                "trainer.json", "manifest.json"} <= set(names), names  # fmt: skip
        if names != sorted(p.name for p in (out / folder).iterdir()):
            problems.append(f"{folder}: other files")
        for name in names:
            same(f"{folder}/{name}")
    assert not problems, "\n".join(problems)


def windows(reports):
    """Each report iteration with the window of iterations it covers: (start, end]."""
    return list(zip([0, *reports], reports))


def x(iteration):
    return math.ceil(iteration / K)


def assert_same_curves(out: Path, whole: Path, reports: list, resumed_at: int, stopped_at=None):
    """TensorBoard of a stopped and resumed run against an uninterrupted one.

    ``train/learning_rate``: point for point. ``train/loss``: every point of a report
    window that the resume did not cut (wholly before or wholly after it) is there, with
    its value; a cut window's report is there at its step with the loss of the part run
    after the resume; a polite stop inside a window may add one point of its own, at the
    stop. ``val/loss``: point for point. ``train/trained_tokens``: every point of the
    uninterrupted run, with its value; the polite stop's own point may add one.
    """
    rates = read_scalars(out / "tensorboard")
    assert rates == read_scalars(whole / "tensorboard"), f"rates: {rates}"
    assert [s for s, _ in rates] == list(range(1, x(ITERS) + 1))
    cut = [end for start, end in windows(reports) if start < resumed_at < end]
    own = [] if stopped_at is None or stopped_at in reports else [x(stopped_at)]
    for tag in ("train/loss", "val/loss", "train/trained_tokens"):
        theirs, ours = (
            read_scalars(whole / "tensorboard", tag),
            read_scalars(out / "tensorboard", tag),
        )
        assert theirs, tag
        if tag == "train/loss":
            assert [step for step, _ in theirs] == [x(r) for r in reports], (tag, theirs)
            kept = [point for (_, end), point in zip(windows(reports), theirs) if end not in cut]
            allowed = Counter([x(end) for end in cut] + own)
        else:
            kept, allowed = theirs, Counter(own if tag == "train/trained_tokens" else [])
        missing = Counter(kept) - Counter(ours)
        extra = Counter(ours) - Counter(kept)
        first = min((step for step, _ in missing), default=None)
        assert not missing, (
            f"{tag}: first differs at step {first} (iteration {first * K - 1}..{first * K}); "
            f"whole {theirs}, resumed at {resumed_at}: {ours}"
        )
        assert not Counter(step for step, _ in extra) - allowed, (
            f"{tag}: points of its own {sorted(extra)}, allowed at {sorted(allowed)}; "
            f"whole {theirs}, resumed at {resumed_at}: {ours}"
        )


def report_iterations(output: str) -> list:
    """The iterations the chained callback was told about, from a run's output."""
    return [int(n) for n in re.findall(r"^iteration (\d+)$", output, re.MULTILINE)]


def expected_stop(how, at):
    """(exit code, where the stopped run's last checkpoint is, where the resume starts)."""
    done = at - 1
    if how == "KILL":
        return -signal.SIGKILL, done // SAVE * SAVE
    reported = done % REPORT == 0 or done == ITERS
    stop = done if done % K == 0 and reported else min(math.ceil(at / K) * K, ITERS)
    return 128 + getattr(signal, f"SIG{how}"), stop


def check_case(trainer: Trainer, results: dict, case, command_name: str, out=None):
    """One stop (run into ``out``) against the uninterrupted run of its mode."""
    mode, how, at = case
    whole, out = trainer.whole(mode), out or trainer.stopped(case)
    code, said = results[f"whole-{mode}"]
    assert code == 0, said[-3000:]
    reports = report_iterations(said)
    (first_code, first), (second_code, second) = results[case_id(case)]
    code, start = expected_stop(how, at)
    assert f"sending SIG{how} before iteration {at}" in first, first[-3000:]
    assert first_code == code, f"stopped run exited {first_code}:\n{first[-3000:]}"
    assert second_code == 0, f"resumed run exited {second_code}:\n{second[-3000:]}"
    stopped_reports = report_iterations(first)
    if how != "KILL":
        said = re.search(rf"Stopped by SIG{how} after iteration (\d+) \(checkpoint (\S+)\)", first)
        assert said, first[-3000:]
        assert int(said[1]) == start, f"stopped after {said[1]}, expected {start}"
        assert Path(said[2]) == out / f"checkpoints/step_{start:09d}"
        assert f"Continue with: mlx-sched {command_name}" in first and "--resume" in first
        # The trainer reported what it ran before the stop, and nothing past it.
        expected = [r for r in reports if r <= start]
        assert stopped_reports == expected + ([] if start in expected else [start])
    if start:
        assert f"Resuming at iteration {start} from" in second, second[-3000:]
    else:
        assert "No complete checkpoint" in second, second[-3000:]
    # Every comparison runs; a failure names each one that failed.
    failed = []

    def check(what, *args):
        try:
            what(*args)
        except AssertionError as error:
            failed.append(f"{what.__name__}: {error}")

    def reports_after_the_resume_land_where_the_whole_run_has_them():
        ours, theirs = report_iterations(second), [r for r in reports if r > start]
        assert ours == theirs, f"reported at {ours}, the uninterrupted run at {theirs}"

    extra = [start] if how != "KILL" and start % SAVE and start != ITERS else []
    check(assert_same_files, out, whole, extra)
    check(assert_same_curves, out, whole, reports, start, None if how == "KILL" else start)
    check(reports_after_the_resume_land_where_the_whole_run_has_them)
    assert not failed, f"resumed at {start}:\n" + "\n".join(failed)


def misaligned(case) -> bool:
    """Whether the resume point is off the report grid with a report due inside a group.

    Resumed at s, the trainer reports every REPORT of its own iterations from s and at
    the end of its call, which must end at an update boundary: with REPORT = 3 and K = 2
    a resume at 2 or 8 (mod 6) cannot report at 3 or 9 (mod 6), mid-group, as the
    uninterrupted run does (see the module's xfail reason).
    """
    start = expected_stop(case[1], case[2])[1]
    if start % REPORT == 0 or start >= ITERS:
        return False
    grid = math.lcm(REPORT, K)
    return min((start // REPORT + 1) * REPORT, ITERS) != min((start // grid + 1) * grid, ITERS)


# -- the tests -------------------------------------------------------------------------------


MISALIGNED = (
    "core: a polite stop ends at the group under way (run/stops.py), e.g. at 8 "
    "with k=2, steps_per_report=3; the resumed trainer call runs to the next lcm(3, 2) point "
    "(run/training.py), 12, and reports at 11 and 12 where the uninterrupted run reports "
    "at 9 and 12: the report at 9 and the loss of the window 10..12 are lost, trained_tokens "
    "lacks the point at 9"
)


def cases(stops):
    return [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=MISALIGNED))
        if misaligned(c)
        else c
        for c in stops
    ]


@pytest.mark.parametrize("case", cases(LM_LORA_STOPS), ids=case_id)
def test_lm_lora_stop_anywhere_resumes_to_the_same_bytes(lm_lora, case):
    trainer, results = lm_lora
    check_case(trainer, results, case, "lm-lora")


@pytest.mark.parametrize("case", cases(VLM_STOPS), ids=case_id)
def test_vlm_stop_anywhere_resumes_to_the_same_bytes(vlm, case):
    trainer, results = vlm
    check_case(trainer, results, case, "vlm")


def assert_control_differs(trainer, results, case, command_name):
    name = f"control-{case_id(case)}"
    with pytest.raises(AssertionError, match="adapters.safetensors differs"):
        check_case(trainer, {**results, case_id(case): results[name]}, case, command_name,
                   trainer.control(case))  # fmt: skip


@pytest.mark.parametrize("case", LM_LORA_CONTROLS, ids=case_id)
def test_lm_lora_a_resume_that_forgets_the_random_key_is_caught(lm_lora, case):
    assert_control_differs(*lm_lora, case, "lm-lora")


@pytest.mark.parametrize("case", VLM_CONTROLS, ids=case_id)
def test_vlm_a_resume_that_forgets_the_random_key_is_caught(vlm, case):
    assert_control_differs(*vlm, case, "vlm")


def assert_drop_in(trainer, results, mode, also=()):
    ours, theirs = (trainer.root / f"drop-in-{kind}-{mode}" for kind in ("ours", "theirs"))
    for kind in ("ours", "theirs"):
        code, said = results[f"drop-in-{kind}-{mode}"]
        assert code == 0, f"{kind} exited {code}:\n{said[-3000:]}"
    names = ["adapters.safetensors", *numbered(theirs), *also]
    assert numbered(ours) == numbered(theirs) == [
        "0000010_adapters.safetensors", "0000020_adapters.safetensors"
    ]  # fmt: skip
    differ = [f"{n}: {describe(ours / n, theirs / n)}" for n in names
              if sha256(ours / n) != sha256(theirs / n)]  # fmt: skip
    assert not differ, "\n".join(differ)


@pytest.mark.parametrize("mode", DROP_IN_LM_LORA)
def test_lm_lora_cli_with_dropout_equals_mlx_lm_lora_train(lm_lora, mode):
    trainer, results = lm_lora
    assert_drop_in(trainer, results, mode)


def test_vlm_cli_with_dropout_equals_mlx_vlm_train(vlm):
    trainer, results = vlm
    assert_drop_in(trainer, results, "sft", also=["adapter_config.json"])


@pytest.mark.skipif(not os.environ.get("MLX_SCHED_STOPS"), reason="set MLX_SCHED_STOPS=N")
def test_random_stops_resume_to_the_same_bytes(lm_lora, vlm):
    rng = random.Random(int(os.environ.get("MLX_SCHED_SEED", "0")))
    trainers = {"lm-lora": lm_lora, "vlm": vlm}
    modes = [("lm-lora", m) for m in ("sft", "dpo", "grpo", "online_dpo")] + [
        ("vlm", m) for m in ("sft", "grpo")
    ]
    cases = []
    for i in range(int(os.environ["MLX_SCHED_STOPS"])):
        name, mode = rng.choice(modes)
        cases.append((name, (mode, rng.choice(list(CODES)), rng.randrange(2, ITERS + 1)), i))

    def one(item):
        """None when the case went as expected, else what went otherwise."""
        name, case, i = item
        trainer, results = trainers[name]
        out = trainer.stopped(case).with_name(f"random{i}-{case_id(case)}")
        try:
            job = stopped_and_resumed(trainer.ours(case[0]), out, case[1], case[2])
            check_case(trainer, {**results, case_id(case): job()}, case, name, out)
        except AssertionError as error:
            if misaligned(case):  # a known failure (xfail above)
                return None
            return f"{name} {case_id(case)}: {str(error)[:1500]}"
        return f"{name} {case_id(case)}: passed, expected to fail" if misaligned(case) else None

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        failures = [f for f in pool.map(one, cases) if f]
    known = [c[:2] for c in cases if misaligned(c[1])]
    print(f"{len(cases)} random stops: {[c[:2] for c in cases]}; {len(failures)} unexpected, "
          f"{len(known)} known to fail (resumed off the report grid): {known}")  # fmt: skip
    assert not failures, "\n".join(failures)
