"""Tiny models and data built offline, for the demo, the tests and the examples: a llama
model with a tokenizer trained here (``lm``) and a llava-style vision model with image data
(``vlm``). Random weights; nothing is downloaded."""

from .lm import build_tiny_dataset, build_tiny_model, build_tiny_preference_dataset, load_tiny
from .vlm import build_tiny_vlm, build_tiny_vlm_dataset, build_tiny_vlm_grpo_dataset

__all__ = [
    "build_tiny_dataset",
    "build_tiny_model",
    "build_tiny_preference_dataset",
    "build_tiny_vlm",
    "build_tiny_vlm_dataset",
    "build_tiny_vlm_grpo_dataset",
    "load_tiny",
]
