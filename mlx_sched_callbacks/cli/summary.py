"""The last lines of a trainer command: where everything is, and what to run next.

After a finished run: the adapters (and the best ones, when validation kept them), the
checkpoints, the TensorBoard logs and the commands that view them, resume the run and
use the adapters in the trainer's own tools. After a polite stop: the checkpoint and
the command that continues. After a refused resume: that nothing was changed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .common import tensorboard_command

BEST_ADAPTERS = "best_adapters.safetensors"


@dataclass
class RunSummary:
    """What a trainer command tells the user when its run ends."""

    folder: Path  # the adapter folder, with checkpoints/ inside
    log_dir: str
    resume: str  # the command that continues this run
    next_steps: list[str] = field(default_factory=list)
    adapters: str = "adapters.safetensors"
    trained: bool = False

    def finished(self) -> None:
        if not self.trained:
            return
        folder = self.folder
        lines = [f"Done. The run is in {folder}:"]
        lines.append(f"  adapters:     {folder / self.adapters}")
        if (folder / BEST_ADAPTERS).is_file():
            best = folder / BEST_ADAPTERS
            lines.append(f"  best adapter: {best}  (see {best.with_suffix('.json').name})")
        lines.append(f"  checkpoints:  {folder / 'checkpoints'}")
        lines.append(f"  TensorBoard:  {self.log_dir}")
        lines.append(f"See the curves: {tensorboard_command(self.log_dir)}")
        lines.append(f"Resume after a stop or a kill: {self.resume}")
        lines += [f"Next: {step}" for step in self.next_steps]
        print("\n".join(lines), flush=True)

    def stopped(self, stop) -> None:
        """After :class:`~mlx_sched_callbacks.stopping.TrainingStopped`."""
        where = stop.checkpoint or "no checkpoint (a resume starts at iteration 1)"
        print(
            f"Run stopped after iteration {stop.iteration}; checkpoint: {where}\n"
            f"  TensorBoard:  {self.log_dir}  (view: {tensorboard_command(self.log_dir)})\n"
            f"Continue with: {self.resume}",
            flush=True,
        )

    def refused(self) -> None:
        """After a resume was refused (the one-line error follows on stderr)."""
        print(
            f"Resume refused; nothing was changed: the checkpoints in "
            f"{self.folder / 'checkpoints'} and the logs in {self.log_dir} are as they were.",
            flush=True,
        )


def mlx_lm_next_steps(model: str, folder) -> list[str]:
    """mlx-lm's own tools on the adapters: generate with them, fuse them into the model."""
    adapters = ["--model", str(model), "--adapter-path", str(folder)]
    return [
        shlex.join(["mlx_lm.generate", *adapters, "--prompt", "Hello"]),
        shlex.join(["mlx_lm.fuse", *adapters, "--save-path", f"{folder}-fused"]),
    ]


def mlx_lm_lora_next_steps(model: str, folder, fused: bool) -> list[str]:
    """mlx_lm_lora.train writes mlx-lm adapters; by default (--fuse) also the fused model."""
    if fused:
        return [shlex.join(["mlx_lm.generate", "--model", str(folder), "--prompt", "Hello"])]
    return mlx_lm_next_steps(model, folder)


def mlx_vlm_next_steps(model: str, folder) -> list[str]:
    return [
        shlex.join(["mlx_vlm.generate", "--model", str(model), "--adapter-path", str(folder),
                    "--image", "IMAGE", "--prompt", "Describe this image."])
    ]  # fmt: skip
