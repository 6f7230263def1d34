"""``mlx-sched plot``: real matplotlib, real files, TensorBoard's own reader."""

import json
import subprocess
import sys

import matplotlib.image
import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import read_scalars

from mlx_sched_callbacks import LRScheduleCallback
from mlx_sched_callbacks import schedules as S
from mlx_sched_callbacks.cli.plot import main as plot_main
from mlx_sched_callbacks.plot import (
    MATPLOTLIB_MISSING,
    format_rate,
    natural_length,
    phase_boundaries,
    plot_schedule,
    schedule_table,
    write_tensorboard_plan,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

MLX_LM_CONFIG = """\
model: does/not/exist
data: does/not/exist/either
train: true
iters: 1100
lr_schedule:
  name: cosine_decay
  arguments: [1e-5, 1000, 1e-7]
  warmup: 100
"""


def nested():
    """Boundaries at 50 and 650 (outer) and 250, 550 (inner, offset by 50).

    The inner join's boundary 800 would be step 850, past its phase's end at 650:
    it never takes effect.
    """
    inner = S.join_schedules(
        [
            S.constant(1e-3),
            S.cosine_decay(1e-3, 300, 1e-5),
            S.step_decay(1e-5, 0.5, 40),
            S.constant(5.0),
        ],
        [200, 500, 800],
    )
    tail = S.linear_schedule(1e-6, 0.0, 100)
    return S.join_schedules([S.linear_schedule(0.0, 1e-3, 50), inner, tail], [50, 650])


def printed_table(out: str) -> list[tuple[str, int, float]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("point"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        name, step, value = line.rsplit(None, 2)
        rows.append((name, int(step), float(value)))
    return rows


def assert_png(path, width, height):
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(path).shape[:2] == (height, width)


def test_png_and_exact_table_from_a_spec_file(tmp_path, capsys):
    schedule = nested()
    spec = tmp_path / "nested.json"
    spec.write_text(json.dumps(schedule.to_dict()))
    out = tmp_path / "nested.png"
    plot_main([str(spec), "--steps", "700", "--out", str(out), "--width", "641", "--height", "333"])
    assert_png(out, 641, 333)
    rows = printed_table(capsys.readouterr().out)
    assert [step for _, step, _ in rows] == [0, 49, 50, 249, 250, 549, 550, 649, 650, 699]
    for _, step, value in rows:
        assert value == float(format_rate(schedule(step)))  # one format, 7 digits
    assert [name for name, step, _ in rows if step in (50, 250, 550, 650)] == ["boundary"] * 4
    # The printed table is schedule_table's.
    assert rows == [(n, s, float(format_rate(v))) for n, s, v in schedule_table(schedule, 700)]


def test_mlx_lm_config_in_a_subprocess_png_table_and_tensorboard_plan(tmp_path):
    config = tmp_path / "lora.yaml"
    config.write_text(MLX_LM_CONFIG)
    plan = tmp_path / "runs" / "exp1_plan"
    code = "import sys; from mlx_sched_callbacks.cli.plot import main; main(sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", code, "--config", str(config), "--tensorboard", str(plan)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "lr_schedule.png", 1200, 500)  # the defaults, in the working dir

    schedule = S.from_mlx_lm_config(
        {"name": "cosine_decay", "arguments": [1e-5, 1000, 1e-7], "warmup": 100}
    )
    assert "steps: 1100 " in result.stdout
    rows = printed_table(result.stdout)
    # mlx-lm joins its warmup at warmup + 1.
    assert [(name, step) for name, step, _ in rows] == [
        ("first", 0),
        ("before boundary", 100),
        ("boundary", 101),
        ("last", 1099),
    ]
    for _, step, value in rows:
        assert value == float(format_rate(schedule(step)))

    points = read_scalars(plan)
    assert [step for step, _ in points] == list(range(1, 1101))
    expected = np.float32([schedule(n) for n in range(1100)])
    np.testing.assert_array_equal(np.float32([v for _, v in points]), expected)


def test_config_without_lr_schedule_is_constant_over_updates_not_iterations(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("iters: 90\ngrad_accumulation_steps: 4\nlearning_rate: 3.0e-4\n")
    plot_main(["--config", str(config), "--out", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert "steps: 22 " in out  # 90 iterations make 22 whole updates of 4
    assert printed_table(out) == [("first", 0, 3e-4), ("last", 21, 3e-4)]


def test_steps_flag_overrides_config_iters(tmp_path, capsys):
    config = tmp_path / "lora.yaml"
    config.write_text(MLX_LM_CONFIG)
    plot_main(["--config", str(config), "--steps", "101", "--out", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    # Boundary 101 lies past the last step 100: not in the table, and said so.
    assert [(n, s) for n, s, _ in printed_table(out)] == [("first", 0), ("last", 100)]
    assert "boundaries past the last step 100 never take effect: [101]" in out


def test_steps_inferred_from_a_schedule_with_an_end(tmp_path, capsys):
    spec = tmp_path / "s.yaml"  # YAML works as well as JSON
    spec.write_text("name: cosine_decay\ninit: 0.001\ndecay_steps: 300\nend: 1.0e-5\n")
    plot_main([str(spec), "--out", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert "steps: 301 " in out and "inferred" in out
    assert printed_table(out)[-1] == ("last", 300, 1e-5)

    # mlx-lm's lr_schedule form works as a SPEC too: warmup 100 joins at 101, 900 after.
    spec.write_text('{"name": "cosine_decay", "arguments": [0.001, 900], "warmup": 100}')
    plot_main([str(spec), "--out", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert "steps: 1002 " in out
    assert printed_table(out)[-1] == ("last", 1001, 0.0)


def test_table_merges_rows_on_one_step_and_skips_unreached_boundaries():
    s = S.join_schedules([S.constant(1.0), S.constant(2.0), S.constant(3.0)], [1, 5])
    assert schedule_table(s, 6) == [
        ("first / before boundary", 0, 1.0),
        ("boundary", 1, 2.0),
        ("before boundary", 4, 2.0),
        ("boundary / last", 5, 3.0),
    ]
    assert schedule_table(s, 3) == [
        ("first / before boundary", 0, 1.0),
        ("boundary", 1, 2.0),
        ("last", 2, 2.0),
    ]


def test_nested_boundaries_are_offset_and_cut_at_their_phase():
    assert phase_boundaries(nested()) == [50, 250, 550, 650]  # 50 + 800 is never reached
    assert phase_boundaries(S.cosine_decay(1.0, 10)) == []
    assert natural_length(nested()) == 750  # the tail's 100 steps after 650
    assert natural_length(S.warmup_cosine(1.0, 10, 100)) == 100
    assert natural_length(S.warmup_stable_decay(1.0, 10, 20, 30)) == 60
    assert natural_length(S.exponential_decay(1.0, 0.9)) is None


def test_plot_draws_the_values_and_a_line_at_each_boundary():
    schedule = nested()
    figure = plot_schedule(schedule, 700, width=400, height=300)
    (ax,) = figure.axes
    curve = next(line for line in ax.lines if line.get_label() == "learning rate")
    np.testing.assert_array_equal(curve.get_ydata(), schedule.values(700))
    vertical = [line.get_xdata()[0] for line in ax.lines if line is not curve]
    assert vertical == [50, 250, 550, 650]
    assert "700 steps" in ax.get_title()


def test_plot_into_a_given_axes_and_a_long_run_as_an_envelope():
    from matplotlib.figure import Figure

    figure = Figure()
    ax1, ax2 = figure.subplots(1, 2)
    schedule = S.step_decay(1.0, 0.5, 100_000)
    assert plot_schedule(schedule, 1_000_000, ax=ax2) is figure
    assert not ax1.lines
    ydata = ax2.lines[0].get_ydata()
    assert len(ydata) < 20_000  # not a million points
    assert set(ydata) == {1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 2**-6, 2**-7, 2**-8, 2**-9}


def test_tensorboard_plan_with_every_k_matches_what_the_callback_logs(tmp_path):
    schedule = nested()
    optimizer = optim.SGD(learning_rate=0.0)
    with LRScheduleCallback(schedule, optimizer, tmp_path / "exp1", log_every=7) as callback:
        for _ in range(300):
            callback.on_step_begin()
            callback.on_step_end()
    assert write_tensorboard_plan(schedule, 300, tmp_path / "exp1_plan", every=7) == 42
    real = read_scalars(tmp_path / "exp1")
    assert len(real) == 42
    assert read_scalars(tmp_path / "exp1_plan") == real


def test_tensorboard_plan_replaces_an_earlier_plan_and_refuses_a_real_run(tmp_path, capsys):
    plan = tmp_path / "plan"
    write_tensorboard_plan(S.constant(1.0), 10, plan)
    write_tensorboard_plan(S.constant(2.0), 5, plan)
    assert read_scalars(plan) == [(x, 2.0) for x in range(1, 6)]
    assert len(list(plan.glob("*tfevents*"))) == 1

    run = tmp_path / "exp1"
    with LRScheduleCallback(S.constant(1.0), optim.SGD(learning_rate=0.0), run) as callback:
        callback.on_step_begin()
        callback.on_step_end()
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ValueError, match="not a plan"):
        write_tensorboard_plan(S.constant(2.0), 5, run)
    out = tmp_path / "never.png"
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(S.constant(2.0).to_dict()))
    with pytest.raises(SystemExit):
        plot_main([str(spec), "--steps", "5", "--out", str(out), "--tensorboard", str(run)])
    assert "--tensorboard" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    assert sorted(p.name for p in run.iterdir()) == before
    assert read_scalars(run) == [(1, 1.0)]


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        plot_main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_input_names_the_argument(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert f"SPEC {missing}: no such file" in error_of([str(missing)], capsys)
    assert f"--config {missing}: no such file" in error_of(["--config", str(missing)], capsys)

    typo = tmp_path / "typo.json"
    typo.write_text('{"name": "cosine_decy", "init": 1e-3, "decay_steps": 10}')
    err = error_of([str(typo), "--steps", "10"], capsys)
    assert f"SPEC {typo}" in err and "'cosine_decy'" in err and "'cosine_decay'" in err

    config = tmp_path / "c.yaml"
    config.write_text("lr_schedule:\n  name: cosine\n  arguments: [1.0e-5, 100]\n")
    err = error_of(["--config", str(config)], capsys)
    assert f"--config {config}: lr_schedule" in err and "'cosine'" in err

    endless = tmp_path / "endless.json"
    endless.write_text(json.dumps(S.exponential_decay(1e-3, 0.999).to_dict()))
    err = error_of([str(endless)], capsys)
    assert "--steps N is required" in err and "exponential_decay" in err
    assert "--steps must be a positive" in error_of([str(endless), "--steps", "0"], capsys)

    assert "pass it as --config" in error_of([str(config)], capsys)
    assert "either a SPEC file or --config" in error_of([], capsys)
    assert "either a SPEC file or --config" in error_of([str(endless), "--config", "x"], capsys)
    assert "--out" in error_of([str(endless), "--steps", "9", "--out", "no/dir/p.png"], capsys)


def test_help_explains_both_inputs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("mlx-sched plot", "SPEC", "--config", "--steps", "--tensorboard", "--every"):
        assert needle in text


def test_missing_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    with pytest.raises(ImportError) as error:
        plot_schedule(S.constant(1.0), 10)
    assert str(error.value) == MATPLOTLIB_MISSING
    assert "pip install 'mlx-sched-callbacks[plot]'" in MATPLOTLIB_MISSING
