import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def read_scalars(log_dir, tag="train/learning_rate"):
    """``[(step, value), ...]`` as TensorBoard's own reader sees them."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]
