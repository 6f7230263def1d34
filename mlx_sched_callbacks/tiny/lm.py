"""A tiny llama model and a toy text dataset, built locally with no hub access.

They exist for tests and demos: a model small enough that a LoRA run through
mlx-lm's real trainer takes a few hundredths of a second per step on a CPU, and
a dataset whose loss visibly drops within a few steps.

``build_tiny_model(path)`` writes a directory that ``mlx_lm.load(str(path))``
reads under ``HF_HUB_OFFLINE=1``: a llama ``config.json``, seeded random weights
in ``model.safetensors`` and a byte-level BPE tokenizer trained on the built-in
corpus. ``build_tiny_dataset(path)`` writes ``{"text": ...}`` JSONL files that
``mlx_lm.lora --data path`` accepts. ``load_tiny(path)`` builds if needed and
loads.

Both builds are deterministic: the same seed gives the same bytes.
"""

import json
import random
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["build_tiny_dataset", "build_tiny_model", "load_tiny"]

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
VOCAB_SIZE = 512

CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
    "torch_dtype": "float32",
}

# Written last by build_tiny_model: a directory without it is incomplete.
_MARKER = "tiny_model.json"
_FORMAT = 1
# The tokenizer is trained on a fixed corpus, whatever the model's seed.
_CORPUS_SEED = 1234
_CORPUS_SIZE = 2000

_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_COLOURS = "red blue green yellow black white brown grey".split()
_ANIMALS = {
    "cat": "cats",
    "dog": "dogs",
    "fox": "foxes",
    "owl": "owls",
    "horse": "horses",
    "mouse": "mice",
    "bird": "birds",
    "fish": "fish",
    "cow": "cows",
    "goat": "goats",
}
_NAMES = "Anna Ben Carl Dora Eva Finn Gus Hana".split()
_MOODS = "happy sleepy hungry quiet small big fast old".split()


def _sentence(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(11), rng.randrange(10)
        return f"{_NUMBERS[a]} plus {_NUMBERS[b]} is {_NUMBERS[a + b]}."
    if kind == 1:
        start, length = rng.randrange(15), rng.randrange(3, 7)
        return "count: " + " ".join(_NUMBERS[start : start + length]) + "."
    if kind == 2:
        n = rng.randrange(2, 10)
        colour, animal = rng.choice(_COLOURS), rng.choice(list(_ANIMALS))
        return f"{rng.choice(_NAMES)} has {_NUMBERS[n]} {colour} {_ANIMALS[animal]}."
    colour, animal = rng.choice(_COLOURS), rng.choice(list(_ANIMALS))
    return f"the {colour} {animal} is {rng.choice(_MOODS)}."


def _text(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randrange(1, 4)))


def _train_tokenizer() -> PreTrainedTokenizerFast:
    rng = random.Random(_CORPUS_SEED)
    corpus = [_text(rng) for _ in range(_CORPUS_SIZE)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    bos_id = tok.token_to_id(BOS)
    if bos_id != CONFIG["bos_token_id"] or tok.get_vocab_size() > VOCAB_SIZE:
        raise RuntimeError(
            f"Tokenizer came out with bos id {bos_id} and "
            f"{tok.get_vocab_size()} tokens; expected id "
            f"{CONFIG['bos_token_id']} and at most {VOCAB_SIZE} tokens."
        )
    # Prepend BOS like llama tokenizers do.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def _random_weights(seed: int) -> dict:
    """Weights named exactly as mlx-lm's llama ``Model`` names them.

    Each array is drawn from its own key split from ``mx.random.key(seed)``,
    from the distribution mlx's layers use by default: embeddings normal with
    std ``1/sqrt(hidden_size)``, linear weights uniform in
    ``+-1/sqrt(input_dims)``, norm scales ones.
    """
    args = ModelArgs.from_dict(CONFIG)
    # Model() draws its own init from mlx's global random state; only its
    # parameter names and shapes are used here.
    params = tree_flatten(Model(args).parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    weights = {}
    for (name, p), key in zip(params, keys, strict=True):
        if name.endswith("norm.weight"):
            weights[name] = mx.ones(p.shape)
        elif name.endswith("embed_tokens.weight"):
            weights[name] = mx.random.normal(p.shape, scale=p.shape[1] ** -0.5, key=key)
        else:
            bound = p.shape[1] ** -0.5
            weights[name] = mx.random.uniform(-bound, bound, p.shape, key=key)
    mx.eval(weights)
    return weights


def _read_marker(path: Path):
    try:
        return json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def build_tiny_model(path, seed: int = 0) -> Path:
    """Write a tiny llama model (config, weights, tokenizer) to ``path``.

    The weights depend only on ``seed``; the tokenizer is the same for every
    seed. A directory already holding a complete build with the same seed is
    reused as it is. Returns ``path`` as a ``Path``.

    Note that building, like ``mlx_lm.load``, instantiates a model and so
    consumes draws from mlx's global random state: seed it after loading.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    path = Path(path)
    marker = {"format": _FORMAT, "seed": seed, "config": CONFIG}
    if _read_marker(path) == marker:
        return path

    path.mkdir(parents=True, exist_ok=True)
    (path / _MARKER).unlink(missing_ok=True)
    (path / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    mx.save_safetensors(str(path / "model.safetensors"), _random_weights(seed))
    _train_tokenizer().save_pretrained(str(path))
    (path / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return path


def build_tiny_dataset(
    path, n_train: int = 200, n_valid: int = 40, seed: int = 0, n_test: int = 20
) -> Path:
    """Write ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl`` to ``path``.

    Each line is ``{"text": ...}``: one to three templated sentences (sums,
    counting, animals and colours), under 60 tokens with the tiny tokenizer.
    The text depends only on ``seed`` and the sizes; a file that already holds
    it is left as it is (a refused command writes nothing). Returns ``path``.
    """
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for name, n in sizes.items():
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n_{name} must be a positive int, got {n!r}.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, n in sizes.items():
        text = "".join(json.dumps({"text": _text(rng)}) + "\n" for _ in range(n))
        file = path / f"{name}.jsonl"
        if not file.is_file() or file.read_text() != text:
            file.write_text(text)
    return path


def load_tiny(path, seed: int = 0):
    """Build the tiny model at ``path`` if needed and load it with mlx-lm.

    Returns ``(model, tokenizer)`` as ``mlx_lm.load`` does. Seed mlx's random
    state after this call if what follows (LoRA layers, dropout) must be
    reproducible.
    """
    return mlx_lm.load(str(build_tiny_model(path, seed)))


def build_tiny_preference_dataset(path, n_train: int = 24, n_valid: int = 4, seed: int = 0):
    """Write DPO/ORPO/CPO rows ``{"prompt", "chosen", "rejected"}`` to ``path``.

    ``train.jsonl`` and ``valid.jsonl``: a sum asked, the right answer chosen, a
    sentence about a cat rejected. Returns ``path``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        rows = []
        for _ in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            row = {"prompt": f"what is {a} plus {b}?", "chosen": f"{a} plus {b} is {a + b}.",
                   "rejected": "the cat is red."}  # fmt: skip
            rows.append(json.dumps(row) + "\n")
        (path / f"{split}.jsonl").write_text("".join(rows))
    return path
