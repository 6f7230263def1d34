"""A new user's first hour, through the real commands: the example configs on the tiny
models, each command's closing summary and what its printed commands do, unknown config
keys, --debug, no colour codes in a log, the demo's and plot's words."""

import importlib.util
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import read_scalars, served_scalars
from test_cli import ENV, mlx_sched, one_line_error, printed_after, run

from mlx_sched_callbacks import schedules

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ESC = "\x1b"


def example(name: str) -> str:
    return str(EXAMPLES / name)


def summary_paths(out: str) -> dict:
    return {
        label: printed_after(out, label)
        for label in ("adapters:", "checkpoints:", "TensorBoard:")
        if label in out
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``mlx-sched demo --build-only`` in a fresh folder: what the example configs read."""
    cwd = tmp_path_factory.mktemp("first_hour")
    result = mlx_sched("demo", "--build-only", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd, result.stdout


def test_build_only_prints_how_to_run_each_example(built):
    cwd, out = built
    vlm = importlib.util.find_spec("mlx_vlm") is not None  # the vision parts need mlx-vlm
    for name in ("model", "data", "pref-data", "vlm-model", "vlm-data"):
        wanted = vlm or not name.startswith("vlm")
        assert (f"built mlx-sched-demo/{name}  (" in out) == wanted, name
        assert (cwd / "mlx-sched-demo" / name).is_dir() == wanted, name
    for command, config in (
        ("lora", "lora_config.yaml"),
        ("lm-lora", "lm_lora_dpo_config.yaml"),
        ("vlm", "vlm_config.yaml"),
    ):
        wanted = vlm or command != "vlm"
        assert (f"  mlx-sched {command} -c examples/{config}\n" in out) == wanted, command
    assert not (cwd / "mlx-sched-demo/adapters").exists()  # built, nothing trained
    helped = run([sys.executable, "-m", "mlx_sched_callbacks.tiny", "--help"])
    assert helped.returncode == 0 and "usage: python -m mlx_sched_callbacks.tiny" in helped.stdout


@pytest.fixture(scope="module")
def lora_run(built):
    """The mlx-lm example config as shipped, shortened to 20 iterations by flags."""
    cwd, _ = built
    result = mlx_sched(
        "lora", "-c", example("lora_config.yaml"), "--iters", "20", "--save-every", "10",
        "--steps-per-eval", "10", cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return cwd, result


def test_lora_example_ends_with_where_everything_is(lora_run):
    cwd, result = lora_run
    out = result.stdout
    folder = "mlx-sched-demo/lora-adapters"
    assert summary_paths(out) == {
        "adapters:": f"{folder}/adapters.safetensors",
        "checkpoints:": f"{folder}/checkpoints",
        "TensorBoard:": f"{folder}/tensorboard/lora-adapters",
    }
    for path in summary_paths(out).values():
        assert (cwd / path).exists(), path
    assert (cwd / folder / "checkpoints/step_000000020").is_dir()
    # The example's warmup + cosine schedule, as mlx-lm reads it, set at each step.
    config = yaml.safe_load(Path(example("lora_config.yaml")).read_text())
    config["lr_schedule"]["arguments"] = [1e-3, 178, 1e-5]  # YAML 1.1 reads 1e-3 as a string
    schedule = schedules.from_mlx_lm_config(config["lr_schedule"])
    expected = [(s, float(np.float32(schedule(s - 1)))) for s in range(1, 21)]
    assert read_scalars(cwd / folder / "tensorboard") == expected
    # Logs without a terminal carry no colour codes (mlx-lm's console forces truecolor).
    assert ESC not in out and ESC not in result.stderr
    assert "Resume after a stop or a kill: mlx-sched lora -c " in out


def test_lora_summary_commands_run(lora_run):
    cwd, result = lora_run
    out = result.stdout
    command = printed_after(out, "See the curves:")
    tags, rows = served_scalars(shlex.split(command), want=20, cwd=cwd, run="lora-adapters")
    assert {"train/learning_rate", "train/loss", "val/loss"} <= set(tags["lora-adapters"]), tags
    generate, fuse = [line.removeprefix("Next: ") for line in out.splitlines() if "Next: " in line]
    assert generate.startswith("mlx_lm.generate --model mlx-sched-demo/model --adapter-path ")
    assert fuse.startswith("mlx_lm.fuse --model mlx-sched-demo/model --adapter-path ")
    generated = run(f"{generate} --max-tokens 4", cwd=cwd)
    assert generated.returncode == 0, generated.stderr
    assert "Generation:" in generated.stdout or "tokens-per-sec" in generated.stdout


def test_a_polite_stop_says_where_the_checkpoint_is_and_its_command_resumes(built, tmp_path):
    cwd, _ = built
    folder = tmp_path / "stopped"
    argv = ["mlx-sched", "lora", "-c", example("lora_config.yaml"), "--iters", "40",
            "--save-every", "100", "--steps-per-eval", "100",
            "--adapter-path", str(folder)]  # fmt: skip
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True, env=ENV)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if re.match(r"\s+10\s", line):  # mlx-lm's report of iteration 10
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    out = "".join(lines)
    stop = re.search(r"Run stopped after iteration (\d+); checkpoint: (\S+)", out)
    assert stop, out[-800:]
    assert Path(stop[2]).is_dir() and Path(stop[2]).parent == folder / "checkpoints"
    assert printed_after(out, "TensorBoard:") == str(folder / "tensorboard" / folder.name)
    command = printed_after(out, "Continue with:")
    assert command.endswith("--resume") and "Done." not in out
    resumed = run(command, cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming at iteration {stop[1]}" in resumed.stdout
    assert "Done. The run is in" in resumed.stdout
    assert [s for s, _ in read_scalars(folder / "tensorboard")] == list(range(1, 41))


def test_dpo_example_runs_with_its_summary(built):
    pytest.importorskip("mlx_lm_lora")
    cwd, _ = built
    result = mlx_sched(
        "lm-lora", "-c", example("lm_lora_dpo_config.yaml"), "--iters", "8", "--save-every",
        "4", "--steps-per-eval", "4", cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = cwd / "mlx-sched-demo/dpo-adapters"
    for path in summary_paths(result.stdout).values():
        assert (cwd / path).exists(), path
    assert (folder / "checkpoints/step_000000008").is_dir()
    assert "Next: mlx_lm.generate --model mlx-sched-demo/model --adapter-path " in result.stdout
    assert [s for s, _ in read_scalars(folder / "tensorboard")] == list(range(1, 9))
    assert ESC not in result.stdout  # mlx-lm-lora's Colors, blanked off a terminal


def test_vlm_example_runs_with_its_summary(built):
    pytest.importorskip("mlx_vlm")
    cwd, _ = built
    result = mlx_sched("vlm", "-c", example("vlm_config.yaml"), "--iters", "8", cwd=cwd)
    assert result.returncode == 0, result.stderr
    folder = cwd / "mlx-sched-demo/vlm-adapters"
    assert summary_paths(result.stdout)["adapters:"] == (
        "mlx-sched-demo/vlm-adapters/adapters.safetensors"
    )
    assert (folder / "adapters.safetensors").is_file()
    assert "Next: mlx_vlm.generate --model mlx-sched-demo/vlm-model --adapter-path " in (
        result.stdout
    )
    assert len(read_scalars(folder / "tensorboard")) == 8
    assert ESC not in result.stdout


# -- unknown config keys -----------------------------------------------------------------


def typo_config(path: Path, source: str, **keys) -> Path:
    config = yaml.load(Path(example(source)).read_text(), yaml.SafeLoader)
    path.write_text(yaml.safe_dump({**config, **keys}))
    return path


def test_unknown_config_key_is_named_and_strict_refuses_it(built, tmp_path):
    cwd, _ = built
    # Keys mlx-lm reads without a flag (text_feature) are known: the drop-in promise.
    config = typo_config(
        tmp_path / "typo.yaml", "lora_config.yaml", modle="x", text_feature="text",
        adapter_path=str(tmp_path / "a"),
    )  # fmt: skip
    strict = mlx_sched("lora", "-c", config, "--strict-config", cwd=cwd)
    one_line_error(strict, "lora", "unknown config key `modle` (did you mean `model`?)")
    assert "text_feature" not in strict.stderr
    assert not (tmp_path / "a").exists()  # refused before anything was written
    # Without --strict-config: one warning line before anything loads, then the run.
    warned = mlx_sched("lora", "-c", config, "--iters", "2", "--val-batches", "1", cwd=cwd)
    assert warned.returncode == 0, warned.stderr
    warning = [line for line in warned.stderr.splitlines() if "warning" in line]
    assert warning == [
        f"mlx-sched lora: warning: --config {config}: unknown config key `modle` (did you mean "
        "`model`?); neither mlx_lm.lora nor mlx-sched reads it, so it is ignored "
        "(--strict-config makes this an error)."
    ]
    assert (tmp_path / "a/adapters.safetensors").is_file()


def test_unknown_config_key_lm_lora(built, tmp_path):
    pytest.importorskip("mlx_lm_lora")
    cwd, _ = built
    dpo = typo_config(tmp_path / "dpo.yaml", "lm_lora_dpo_config.yaml", betta=0.2)
    one_line_error(
        mlx_sched("lm-lora", "-c", dpo, "--strict-config", cwd=cwd),
        "lm-lora", "unknown config key `betta` (did you mean `beta`?)", "mlx_lm_lora.train",
    )  # fmt: skip


def test_unknown_config_key_vlm(built, tmp_path):
    pytest.importorskip("mlx_vlm")
    cwd, _ = built
    vlm = tmp_path / "vlm.yaml"  # mlx_vlm.train's reader is YAML 1.1: floats stay floats
    vlm.write_text(Path(example("vlm_config.yaml")).read_text() + "lora_rnak: 8\n")
    # mlx_vlm.train refuses unknown keys itself, strict or not: so does mlx-sched vlm.
    for strict in ([], ["--strict-config"]):
        one_line_error(
            mlx_sched("vlm", "-c", vlm, *strict, cwd=cwd),
            "vlm", "unknown config key `lora_rnak` (did you mean `lora_rank`?)",
        )  # fmt: skip


# -- --debug, the demo's words, plot's table ---------------------------------------------


def test_debug_adds_a_traceback_to_plot_and_demo(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "cosine_decay", "arguments": [1.0e-3, 0]}')
    plain = one_line_error(mlx_sched("plot", bad), "plot", "decay_steps")
    debugged = mlx_sched("--debug", "plot", bad)
    assert debugged.returncode == 2
    assert debugged.stderr.startswith("Traceback (most recent call last):")
    assert "ValueError: " in debugged.stderr and debugged.stderr.splitlines()[-1] == plain
    plain = one_line_error(mlx_sched("demo", "--kill-at", "3"), "demo", "--kill-at")
    debugged = mlx_sched("--debug", "demo", "--kill-at", "3")
    assert debugged.returncode == 2 and debugged.stderr.splitlines()[-1] == plain
    assert debugged.stderr.startswith("  File ")  # the stack of the check


def test_demo_says_what_it_loads_and_a_resume_does_not_suggest_a_kill(tmp_path):
    first = mlx_sched("demo", "--out", "d", "--iters", "20", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Loading pretrained model" not in first.stdout
    assert "Loading the tiny model in d/model (random weights, built here)" in first.stdout
    assert "--kill-at 10" in first.stdout
    assert ESC not in first.stdout
    again = mlx_sched("demo", "--out", "d", "--iters", "20", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Resuming at iteration 20" in again.stdout and "--kill-at" not in again.stdout


def test_plot_table_has_one_number_format(tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text('{"name": "cosine_decay", "arguments": [1.2e-3, 1000, 1.2e-7], "warmup": 100}')
    result = mlx_sched("plot", spec, "--steps", "1200", "--out", tmp_path / "p.png")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("point")))
    rows = lines[start + 1 : lines.index("", start)]
    assert len(rows) == 4, rows
    for row in rows:
        assert re.fullmatch(r".+\s\d+  \d\.\d{6}e[+-]\d\d", row), row
    assert rows[-1].endswith("1.200000e-07")
