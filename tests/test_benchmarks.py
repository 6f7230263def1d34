"""The benchmark runs end to end in --quick mode. No timing is asserted: machines are noisy."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
ROWS = [
    "| No callback (the floor)",
    "| Ours, a step it does not log",
    "| Ours, logging every step",
    "| mlx's schedule inside a compiled update",
    "| mlx's schedule evaluated eagerly",
    "| torch `SequentialLR(LinearLR, CosineAnnealingLR).step()`",
    "| torch `.step()` + `SummaryWriter.add_scalar`",
    "| 1,000,000-step warmup + cosine",
    "| event-file bytes per logged point",
    "| traces of an `mx.compile`d step over 200 steps | rate changing every step: 1 "
    "| constant rate: 1 |",
    "| tiny-llama LoRA iteration",
    "| the same with the gradient norm in its compiled step",
    "| the same with the gradient norm and the non-finite guard",
    "| Ours, a step it does not log, non-finite guard on",
    "| traces stay at the baseline | 1 vs 1 | yes |",
]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def run_quick(*python_args):
    result = subprocess.run(
        [sys.executable, *python_args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for row in ROWS:
        assert any(line.startswith(row) for line in lines), (row, result.stdout)
    return result.stdout


def test_quick_run_prints_every_row():
    out = run_quick(str(RUN), "--quick")
    torch_row = next(line for line in out.splitlines() if "SummaryWriter.add_scalar" in line)
    assert ("skipped" in torch_row) != HAS_TORCH
    assert ("torch rows skipped" in out) != HAS_TORCH


@pytest.mark.skipif(not HAS_TORCH, reason="without torch the run above already skips it")
def test_quick_run_without_torch_skips_its_rows_with_a_note():
    hide_torch = (
        "import runpy, sys; sys.modules['torch'] = None; "  # import torch now fails
        f"sys.argv = [{str(RUN)!r}, '--quick']; runpy.run_path({str(RUN)!r}, run_name='__main__')"
    )
    out = run_quick("-c", hide_torch)
    assert "torch rows skipped" in out and 'pip install -e ".[bench]"' in out
