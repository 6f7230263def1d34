"""The examples run as a user runs them."""

import subprocess
import sys
from pathlib import Path

from conftest import read_scalars

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_mlx_lm_lora_example_stops_resumes_and_logs_one_curve(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "mlx_lm_lora.py"), "--out", str(out), "--iters", "40",
         "--stop-at", "20"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "resumed at iteration 20" in result.stdout
    assert [s for s, _ in read_scalars(out / "tensorboard")] == list(range(1, 41))
    assert (out / "adapters.safetensors").exists()
