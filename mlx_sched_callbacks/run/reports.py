"""A trainer's reports and validations, logged beside the rate on the update axis."""

from __future__ import annotations

import time

MLX_LM_REPORT_TAGS = {
    "train_loss": "train/loss",
    "iterations_per_second": "train/iterations_per_second",
    "tokens_per_second": "train/tokens_per_second",
    "trained_tokens": "train/trained_tokens",
    "peak_memory": "train/peak_memory_gb",
}


class Reports:
    """Validation and loss reports of a :class:`TrainingRun`."""

    def _maybe_evaluate(self, iteration: int) -> None:
        args = self.args
        due = iteration == 1 or iteration % args.steps_per_eval == 0 or iteration == args.iters
        if not self.val_dataset or not due:
            return
        tic = time.perf_counter()
        val_loss = self.evaluate()
        self.model.train()
        val_time = time.perf_counter() - tic
        self.show_validation(iteration, val_loss, val_time)
        self.callback.log_scalar("val/loss", val_loss, self.x(iteration))
        self.callback.on_validation(val_loss)  # feeds reduce_on_plateau phases first
        self._after_validation(iteration, val_loss)
        if self.next_callback is not None:
            self.next_callback.on_val_loss_report(
                {"iteration": iteration - 1, "val_loss": val_loss, "val_time": val_time}
            )

    def show_validation(self, iteration: int, val_loss: float, val_time: float) -> None:
        self._say(f"Iter {iteration}: Val loss {val_loss:.3f}, Val took {val_time:.3f}s")

    def report(self, info: dict) -> dict:
        """Log a trainer's loss report beside the rate; return it with global counts.

        ``info["iteration"]`` is the trainer's own count in this ``train()`` call.
        """
        info = dict(info)
        info["iteration"] = self._start_iteration + info["iteration"]
        if "trained_tokens" in info:
            info["trained_tokens"] = self._tokens_before + info["trained_tokens"]
            self._last_trained_tokens = info["trained_tokens"]
        x = self.x(info["iteration"])

        def log():
            for field, tag in self.report_tags.items():
                value = info.get(field)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.callback.log_scalar(tag, value, x)

        self._guarded(log)
        return info
