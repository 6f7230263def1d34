"""A tiny qwen2_vl model and an image + text chat dataset, built locally with no hub access.

For tests and demos of the mlx-vlm adapter: ``build_tiny_vlm(path)`` writes a
folder that ``mlx_vlm.load(str(path))`` and ``python -m mlx_vlm.train --model
path`` read under ``HF_HUB_OFFLINE=1`` (190,720 parameters: a 2-layer text model
of width 64 and a 2-layer vision tower; each 56x56 image becomes 4 image tokens).
``build_tiny_vlm_dataset(path)`` writes ``train.jsonl`` and ``valid.jsonl`` rows
``{"messages": [user, assistant], "images": ["images/NAME.png"]}`` with random
PNGs beside them; ``build_tiny_vlm_grpo_dataset(path)`` writes prompt-only rows
``{"prompt", "answer", "images"}`` for mlx-vlm's GRPO, and a reward file. All are
deterministic: the same seed gives the same model and rows.

Needs mlx-vlm (``pip install "mlx-sched-callbacks[vlm]"``).
"""

import json
import random
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .lm import _text, _train_tokenizer

__all__ = ["build_tiny_vlm", "build_tiny_vlm_dataset", "build_tiny_vlm_grpo_dataset"]

SPECIAL_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A minimal Qwen chat template: an image item becomes <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IMAGE_SIZE = 56  # with min_pixels = max_pixels = 56*56: a 4x4 patch grid, 4 merged tokens


def _config(ids: dict) -> dict:
    return {
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": 576,  # 512 BPE + the special tokens, rounded up
        "max_position_embeddings": 1024,
        "rope_theta": 10000.0,
        # The sections sum to head_dim / 2 = 8.
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": True,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "bos_token_id": 0,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": 2,
        "vision_config": {
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,  # an int: transformers' Qwen2VLConfig refuses 2.0
            "in_channels": 3,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    }


def build_tiny_vlm(path, seed: int = 0) -> Path:
    """Write a tiny random qwen2_vl (config, weights, tokenizer, processor) to ``path``.

    Building instantiates a model, which consumes mlx's global random state: seed
    it afterwards if what follows must be reproducible.
    """
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    config = _config({t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS})
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    processor = {
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "min_pixels": IMAGE_SIZE**2,
        "max_pixels": IMAGE_SIZE**2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (path / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(path))
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    # The model as mlx_vlm.utils.load_model builds it, with a seeded random init; every
    # weight is stored (a missing vision_tower.* would make mlx-vlm drop the tower).
    config = {**json.loads(json.dumps(config)), "text_config": {}}  # a copy mlx-vlm may change
    model_class, _ = get_model_and_args(config=config, model_path=path)
    model_config = model_class.ModelConfig.from_dict(config)
    model_config = update_module_configs(model_config, model_class, config, ["text", "vision"])
    mx.random.seed(seed)
    weights = dict(tree_flatten(model_class.Model(model_config).parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    return path


def _write_image_rows(path, n_train: int, n_valid: int, seed: int, row) -> Path:
    """``train.jsonl`` and ``valid.jsonl`` of ``row(text_rng, image)``, one random image each."""
    from PIL import Image

    for name, n in (("n_train", n_train), ("n_valid", n_valid)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}.")
    path = Path(path)
    (path / "images").mkdir(parents=True, exist_ok=True)
    text_rng, pixel_rng = random.Random(seed), np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        rows = []
        for i in range(n):
            image = f"images/{split}{i}.png"
            pixels = pixel_rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path / image)
            rows.append(row(text_rng, image))
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tiny_vlm_dataset(path, n_train: int = 24, n_valid: int = 8, seed: int = 0) -> Path:
    """Write ``train.jsonl`` and ``valid.jsonl`` (one random image per row) to ``path``."""

    def row(text_rng, image):
        messages = [
            {"role": "user", "content": "what is this?"},
            {"role": "assistant", "content": _text(text_rng)},
        ]
        return {"messages": messages, "images": [image]}

    return _write_image_rows(path, n_train, n_valid, seed, row)


# A reward for GRPO on a random model: it depends on the completion's text, so the
# completions of a group differ in reward and the advantages (and gradients) are not 0.
GRPO_REWARDS = """\
def char_reward(*, completions, **kwargs):
    return [sum(map(ord, completion)) % 97 / 97.0 for completion in completions]
"""


def build_tiny_vlm_grpo_dataset(path, n_train: int = 16, n_valid: int = 4, seed: int = 0) -> Path:
    """Write GRPO rows ``{"prompt", "answer", "images"}`` and ``rewards.py`` to ``path``.

    ``train.jsonl`` and ``valid.jsonl`` hold one random image and an arithmetic
    question each; ``rewards.py`` defines ``char_reward`` for ``python -m
    mlx_vlm.train --train-mode grpo --reward-functions-file path/rewards.py
    --reward-functions char_reward`` (the default ``accuracy_reward`` is 0 for
    every completion of a random model: no gradient).
    """

    def row(text_rng, image):
        a, b = text_rng.randint(1, 9), text_rng.randint(1, 9)
        return {"prompt": f"what is {a} plus {b}?", "answer": str(a + b), "images": [image]}

    path = _write_image_rows(path, n_train, n_valid, seed, row)
    (path / "rewards.py").write_text(GRPO_REWARDS)
    return path
