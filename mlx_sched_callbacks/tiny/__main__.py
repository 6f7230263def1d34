"""``python -m mlx_sched_callbacks.tiny DIR``: the tiny models and data, for the example configs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# What ``build_all`` writes under DIR, and what each is for.
CONTENTS = {
    "model": "tiny llama model (random weights, tokenizer trained here)",
    "data": "text rows (train/valid/test.jsonl) for mlx-sched lora",
    "pref-data": "prompt/chosen/rejected rows for mlx-sched lm-lora --train-mode dpo",
    "vlm-model": "tiny llava-style vision model (random weights)",
    "vlm-data": "chat rows with one image each for mlx-sched vlm",
}


def build_all(root, vlm: bool = True) -> list[Path]:
    """Build everything in :data:`CONTENTS` under ``root`` (the vision parts need mlx-vlm)."""
    from . import build_tiny_dataset, build_tiny_model, build_tiny_preference_dataset

    root = Path(root)
    built = [
        build_tiny_model(root / "model"),
        build_tiny_dataset(root / "data"),
        build_tiny_preference_dataset(root / "pref-data"),
    ]
    if vlm:
        from . import build_tiny_vlm, build_tiny_vlm_dataset

        built += [build_tiny_vlm(root / "vlm-model"), build_tiny_vlm_dataset(root / "vlm-data")]
    return built


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlx_sched_callbacks.tiny",
        description="Build the tiny models and data (offline, random weights, about 2 s) "
        "that the demo, the tests and examples/*.yaml use: "
        + "; ".join(f"DIR/{name}: {what}" for name, what in CONTENTS.items()),
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="where to build them")
    parser.add_argument(
        "--no-vlm", action="store_true", help="skip the vision model and data (no mlx-vlm)"
    )
    args = parser.parse_args(argv)
    for path in build_all(args.dir, vlm=not args.no_vlm):
        print(f"built {path}  ({CONTENTS[path.name]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
