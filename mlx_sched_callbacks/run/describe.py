"""A run that explains itself in TensorBoard: once per run, the command, the resolved config,
the schedule and the versions as a text summary, and a chart with both losses."""

from __future__ import annotations

import json
import sys
from importlib.metadata import PackageNotFoundError, version

from tensorboardX import summary

DESCRIPTION_TAG = "run/description"
PACKAGES = ("mlx", "mlx-lm", "mlx-lm-lora", "mlx-vlm", "mlx-sched-callbacks")
# One chart each: the two losses together, the rate beside the gradient norm.
LAYOUT = {
    "mlx-sched": {
        "loss": ["Multiline", ["train/loss", "val/loss", "val/best_loss"]],
        "rate and gradient norm": ["Multiline", ["train/learning_rate", "train/grad_norm"]],
    }
}


def versions() -> dict:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _block(value) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    return "\n".join("    " + line for line in text.splitlines())  # markdown code block


def description(command: str, config: dict | None, schedule: dict) -> str:
    """Markdown for TensorBoard's text tab."""
    parts = [f"**command**\n\n    {command}"]
    if config is not None:
        parts.append(f"**config**\n\n{_block(config)}")
    parts.append(f"**schedule**\n\n{_block(schedule)}")
    parts.append(f"**versions**\n\n{_block(versions())}")
    return "\n\n".join(parts)


class Describes:
    """The description of a :class:`TrainingRun`, written at its fresh start."""

    run_config: dict | None = None  # the resolved config, as the command saw it

    def _describe(self) -> None:
        writer = self.callback.writer
        if writer is None or self.iteration:
            return
        schedules = {key: s.to_dict() for key, s in self.callback.schedules.items()}
        command = self.resume_command or " ".join(sys.argv)
        command = command.removesuffix(" --resume")
        text = description(command, self.run_config, schedules)
        writer.add_summary(summary.text(DESCRIPTION_TAG, text), 0)
        writer.add_summary(summary.custom_scalars(LAYOUT), 0)
