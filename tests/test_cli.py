"""What a user sees from ``mlx-sched``: the demo's closing lines and the commands they print,
run as printed; one-line errors (exit 2) for mistakes in the input; tracebacks for bugs."""

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import read_scalars, served_scalars

from mlx_sched_callbacks import cli, schedules
from mlx_sched_callbacks.cli import lora as cli_lora
from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model

BIN = Path(sys.executable).parent
# The console scripts a user's activated virtual environment puts on PATH.
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
ENV["HF_HUB_OFFLINE"] = "1"  # tests never reach a model hub
ENV.pop("MLX_SCHED_DEBUG", None)


def run(command, cwd=None, env=ENV, timeout=300):
    """Run a command line as a user types it (a string) or as a list."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def mlx_sched(*args, cwd=None, env=ENV):
    return run(["mlx-sched", *map(str, args)], cwd=cwd, env=env)


def one_line_error(result, command, *needles) -> str:
    """The single stderr line of a user error, after checking its form and exit code 2."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith(f"mlx-sched {command}: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def demo_schedule(iters):
    warmup = max(iters // 10, 1)
    return schedules.from_mlx_lm_config(
        {"name": "cosine_decay", "arguments": [1e-3, iters - warmup, 1e-5], "warmup": warmup}
    )


def printed_after(out: str, label: str) -> str:
    """The value a line ``label value  (note)`` prints."""
    (line,) = [line for line in out.splitlines() if line.strip().startswith(label)]
    return line.strip()[len(label) :].split("  (")[0].strip()


# -- the demo ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``mlx-sched demo --iters 40`` run from a fresh folder, with the default --out."""
    cwd = tmp_path_factory.mktemp("demo")
    result = mlx_sched("demo", "--iters", "40", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd, result.stdout


def test_demo_says_where_everything_is(demo):
    cwd, out = demo
    where = {
        "model:": "mlx-sched-demo/model",
        "data:": "mlx-sched-demo/data",
        "adapters:": "mlx-sched-demo/adapters/adapters.safetensors",
        "checkpoints:": "mlx-sched-demo/adapters/checkpoints",
        "TensorBoard:": "mlx-sched-demo/tensorboard/demo",
    }
    for label, path in where.items():
        assert printed_after(out, label) == path
        assert (cwd / path).exists(), path
    assert (cwd / "mlx-sched-demo/model/config.json").is_file()
    assert (cwd / "mlx-sched-demo/data/train.jsonl").is_file()
    assert (cwd / "mlx-sched-demo/adapters/checkpoints/step_000000040").is_dir()
    assert printed_after(out, "Resume after a kill:") == "mlx-sched demo --iters 40 --resume"


def test_demo_tensorboard_command_as_printed_serves_the_curves(demo):
    cwd, out = demo
    command = printed_after(out, "See the curves:")
    assert command == "tensorboard --logdir mlx-sched-demo/tensorboard"
    # As printed, from the folder the demo ran in; a free port on loopback, as the
    # default port 6006 may be taken on a shared machine.
    text = "/data/plugin/text/text?run=demo&tag=run%2Fdescription%2Ftext_summary"
    layout = "/data/plugin/custom_scalars/layout"
    tags, rows = served_scalars(
        shlex.split(command), want=40, cwd=cwd, run="demo", also=[text, layout]
    )
    # The run is listed by name, not as ".", and explains itself once.
    assert list(tags) == ["demo"]
    assert {"train/learning_rate", "train/loss", "val/loss", "train/grad_norm"} <= set(tags["demo"])
    (description,), layout = served_scalars.also
    assert description["step"] == 0 and "mlx-sched demo --iters 40" in description["text"]
    for needle in ("linear_schedule", "cosine_decay", "mlx-lm", "mlx-sched-callbacks", "iters"):
        assert needle in description["text"], needle
    charts = [c for category in layout["category"] for c in category["chart"]]
    loss = next(c for c in charts if c["title"] == "loss")
    assert loss["multiline"]["tag"][:2] == ["train/loss", "val/loss"]
    schedule = demo_schedule(40)
    assert [step for _, step, _ in rows] == list(range(1, 41))
    assert [value for _, _, value in rows] == [float(np.float32(schedule(s))) for s in range(40)]


def test_demo_kill_prints_the_command_that_continues(tmp_path):
    killed = mlx_sched("demo", "--out", "run", "--iters", "120", "--kill-at", "100", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL
    lines = killed.stdout.splitlines()
    assert lines[-2].startswith("Killing this process with SIGKILL at iteration 100 (--kill-at)")
    saved = int(lines[-2].split("the newest checkpoint is at iteration ")[1].rstrip("."))
    command = printed_after(killed.stdout, "Continue with:")
    assert command == "mlx-sched demo --out run --iters 120 --resume"

    resumed = run(command, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming at iteration {saved} from" in resumed.stdout
    schedule = demo_schedule(120)
    expected = [(s, float(np.float32(schedule(s - 1)))) for s in range(1, 121)]
    assert read_scalars(tmp_path / "run/tensorboard") == expected


def test_demo_refuses_a_kill_it_cannot_make_exactly(tmp_path):
    for kill_at in ("125", "0", "200"):
        result = mlx_sched("demo", "--out", tmp_path / "d", "--kill-at", kill_at)
        one_line_error(result, "demo", "--kill-at must be a multiple of 10", f"got {kill_at}.")
    assert not (tmp_path / "d").exists()  # refused before anything was built
    one_line_error(mlx_sched("demo", "--iters", "x"), "demo", "--iters", "'x'")
    one_line_error(mlx_sched("demo", "--iters", "1"), "demo", "--iters must be at least 2")


def test_demo_resume_with_another_schedule_names_the_flag_and_the_flag_works(tmp_path):
    out = tmp_path / "d"
    assert mlx_sched("demo", "--out", out, "--iters", "20").returncode == 0
    changed = mlx_sched("demo", "--out", out, "--iters", "30", "--resume")
    line = one_line_error(changed, "demo", "schedule differs", "pass --allow-schedule-change")
    assert "allow_schedule_change=True" not in line
    allowed = mlx_sched(
        "demo", "--out", out, "--iters", "30", "--resume", "--allow-schedule-change"
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "Resuming at iteration 20" in allowed.stdout
    assert [s for s, _ in read_scalars(out / "tensorboard")] == list(range(1, 31))


# -- lora --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "model"), build_tiny_dataset(root / "data")


def write_config(path, tiny, **extra):
    model, data = tiny
    config = {
        "model": str(model), "data": str(data), "train": True, "num_layers": 2,
        "batch_size": 4, "iters": 10, "val_batches": 2, "steps_per_eval": 10,
        "save_every": 10, "adapter_path": str(path.parent / "adapters"), **extra,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


MLX_LM_SCHEDULE = {"name": "cosine_decay", "arguments": [1e-3, 10, 1e-5], "warmup": 2}


def test_lora_resume_with_another_schedule_names_the_flag(tiny, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny, lr_schedule=MLX_LM_SCHEDULE)
    first = mlx_sched("lora", "--config", config)
    assert first.returncode == 0, first.stderr
    assert "See the curves: tensorboard --logdir " in first.stdout
    longer = {**MLX_LM_SCHEDULE, "arguments": [1e-3, 20, 1e-5]}
    changed = write_config(tmp_path / "c.yaml", tiny, lr_schedule=longer, iters=20)
    line = one_line_error(
        mlx_sched("lora", "--config", changed, "--resume"),
        "lora",
        "step_000000010/callback.json",
        "decay_steps: 10 != 20",
        "pass --allow-schedule-change to continue with the new schedule",
    )
    assert "allow_schedule_change=True" not in line


@pytest.mark.parametrize(
    "lr_schedule, needles",
    [
        ({"name": "cosine_decy", "arguments": [1e-3, 10]}, ["'cosine_decy'", "'cosine_decay'"]),
        ({**MLX_LM_SCHEDULE, "warmup": -5}, ["warmup must be an integer", "got -5"]),
    ],
    ids=["misspelt name", "negative warmup"],
)
def test_bad_lr_schedule_in_a_config(tiny, tmp_path, lr_schedule, needles):
    config = write_config(tmp_path / "c.yaml", tiny, lr_schedule=lr_schedule)
    where = f"lr_schedule in --config {config}: "
    one_line_error(mlx_sched("lora", "--config", config), "lora", where, *needles)
    one_line_error(
        mlx_sched("plot", "--config", config), "plot", f"--config {config}: lr_schedule", *needles
    )


def test_a_config_that_is_missing_or_not_yaml(tmp_path):
    missing = tmp_path / "missing.yaml"
    for command in ("lora", "plot"):
        one_line_error(
            mlx_sched(command, "--config", missing), command, f"--config {missing}: no such file"
        )
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: m\ndata: d\n  train: true\n")
    for command in ("lora", "plot"):
        one_line_error(
            mlx_sched(command, "--config", broken),
            command,
            f"--config {broken} is not valid YAML",
            "at line 3",
        )
    listed = tmp_path / "list.yaml"
    listed.write_text("- model: m\n")
    one_line_error(mlx_sched("lora", "--config", listed), "lora", "expected a mapping")


def test_a_model_that_does_not_exist(tiny, tmp_path):
    _, data = tiny
    (tmp_path / "models").mkdir()
    train = ["--data", data, "--train"]
    for local in ("./no-model", str(tmp_path / "no-model"), "models/no-model", "a/b/c"):
        one_line_error(
            mlx_sched("lora", "--model", local, *train, cwd=tmp_path),
            "lora",
            f"--model {local}: no such folder (nothing was downloaded for it)",
        )
    # Looks like a hub repo id: mlx-lm asks the hub (offline here), and that is one line too.
    one_line_error(
        mlx_sched("lora", "--model", "nobody-here/no-model", *train, cwd=tmp_path),
        "lora",
        "--model nobody-here/no-model: no such folder, and the Hugging Face hub did not give",
        "LocalEntryNotFoundError",
    )
    config = write_config(tmp_path / "c.yaml", tiny, model="./no-model")
    one_line_error(
        mlx_sched("lora", "--config", config, cwd=tmp_path),
        "lora",
        f"model: ./no-model in --config {config}: no such folder",
    )
    model_file = tmp_path / "weights.safetensors"
    model_file.write_bytes(b"")
    one_line_error(
        mlx_sched("lora", "--model", model_file, *train), "lora", "a file; give the model folder"
    )


def test_data_that_does_not_exist(tiny, tmp_path):
    model, _ = tiny
    train = ["--model", model, "--train", "--num-layers", "2"]
    one_line_error(
        mlx_sched("lora", *train, "--data", "./no-data", cwd=tmp_path),
        "lora",
        "--data ./no-data: no such folder (nothing was downloaded for it)",
    )
    # mlx-lm asks the hub through the datasets package, which only some extras install.
    hub = importlib.util.find_spec("datasets") is not None
    one_line_error(
        mlx_sched("lora", *train, "--data", "no-data", cwd=tmp_path),
        "lora",
        "--data no-data: no such folder, and the Hugging Face hub did not give a dataset"
        if hub
        else "--data no-data: no such folder; a Hugging Face hub dataset of that name needs "
        "the datasets package (pip install datasets)",
    )
    (tmp_path / "empty").mkdir()
    one_line_error(
        mlx_sched("lora", *train, "--data", "empty", cwd=tmp_path),
        "lora",
        "--data empty: Training set not found or empty",
    )


def test_argparse_errors_are_one_line(tiny):
    one_line_error(mlx_sched("lora", "--bogus"), "lora", "unrecognized arguments: --bogus")
    one_line_error(mlx_sched("lora", "--iters", "x"), "lora", "argument --iters", "'x'")
    one_line_error(mlx_sched("plot", "--steps", "x"), "plot", "argument --steps", "'x'")
    model, data = tiny
    one_line_error(
        mlx_sched("lora", "--model", model, "--data", data), "lora", "give --train to fine-tune"
    )
    unknown = mlx_sched("nope")
    assert unknown.returncode == 2 and unknown.stderr.splitlines() == [
        "mlx-sched: error: unknown command 'nope'; the commands are lora, lm-lora, vlm, demo, "
        "plot, find-lr (see mlx-sched --help)"
    ]


def test_plot_bad_input_is_one_line(tmp_path):
    one_line_error(mlx_sched("plot", tmp_path / "no.json"), "plot", "no.json: no such file")
    typo = tmp_path / "typo.json"
    typo.write_text('{"name": "cosine_decy", "init": 1e-3, "decay_steps": 10}')
    one_line_error(mlx_sched("plot", typo), "plot", f"SPEC {typo}", "'cosine_decy'")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: a\n  b: c\n")
    one_line_error(mlx_sched("plot", broken), "plot", f"SPEC {broken}: cannot parse it")


def test_debug_shows_the_traceback_of_a_user_error(tiny, tmp_path):
    config = write_config(
        tmp_path / "c.yaml", tiny, lr_schedule={"name": "cosine_decy", "arguments": [1]}
    )
    plain = one_line_error(mlx_sched("lora", "--config", config), "lora", "'cosine_decy'")
    for result in (
        mlx_sched("--debug", "lora", "--config", config),
        mlx_sched("lora", "--config", config, env={**ENV, "MLX_SCHED_DEBUG": "1"}),
    ):
        assert result.returncode == 2
        assert result.stderr.startswith("Traceback (most recent call last):")
        assert "ValueError: from_mlx_lm_config: name must be one of" in result.stderr
        assert result.stderr.splitlines()[-1] == plain


# -- which errors are the user's: the wrapper in main, with stand-in commands -------------


def test_library_input_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    def bad_schedule(argv):
        schedules.cosine_decay(0.1, 0)  # our library's ValueError for bad input

    monkeypatch.setattr(cli_lora, "main", bad_schedule)
    assert cli.main(["lora"]) == 2
    assert capsys.readouterr().err == (
        "mlx-sched lora: error: cosine_decay: decay_steps must be an integer in [1, 2**53], "
        "got 0.\n"
    )

    def bug(argv):
        return {}[0]

    def numpy_surprise(argv):
        np.zeros(3).reshape(2)  # a ValueError, but not from a package that checks input

    def a_type_error(argv):
        schedules.cosine_decay(0.1)  # a TypeError: from the CLI, always a bug

    for command, error in (
        (bug, KeyError),
        (numpy_surprise, ValueError),
        (a_type_error, TypeError),
    ):
        monkeypatch.setattr(cli_lora, "main", command)
        with pytest.raises(error):
            cli.main(["lora"])
