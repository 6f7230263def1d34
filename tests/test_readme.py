"""README's examples run as written.

A block that needs set-up (a model, data, a training step) runs after a few lines that
build what README says in words right before it; the block itself is run unchanged.
"""

import doctest
import json
import re
from pathlib import Path

import mlx.core as mx
import numpy as np
from conftest import read_scalars
from mlx.utils import tree_flatten

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

# How each ```python block is recognised, and the test that runs it.
BLOCKS = {
    "doctest": lambda b: b.lstrip().startswith(">>>"),
    "training loop": lambda b: "callback.on_step_begin()" in b,
    "several schedules": lambda b: "MultiOptimizer" in b,
    "MlxLmTraining": lambda b: "MlxLmTraining(" in b,
}


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, re.S)


def blocks(kind):
    return [b for b in python_blocks() if BLOCKS[kind](b)]


def test_every_python_block_is_run_by_a_test():
    for block in python_blocks():
        kinds = [kind for kind, matches in BLOCKS.items() if matches(block)]
        assert len(kinds) == 1, f"a README block no test runs (or two claim):\n{block}"


def test_doctest_blocks():
    examples = blocks("doctest")
    assert examples
    for block in examples:
        # An empty namespace: the block must import what it uses, as a reader's would.
        test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert runner.failures == 0


# "your mx.compile'd step" and a batch source: a linear model fitted with the block's optimizer.
TRAINING_LOOP_SETUP = """
import mlx.core as mx
import mlx.nn as nn

mx.random.seed(0)
model = nn.Linear(8, 1)


def next_batch():
    x = mx.random.normal((16, 8))
    return x, x.sum(axis=1, keepdims=True)


def train_step(x, y):
    loss_and_grad = nn.value_and_grad(model, lambda m: nn.losses.mse_loss(m(x), y))
    loss, grads = loss_and_grad(model)
    optimizer.update(model, grads)  # the block's optimizer
    mx.eval(model.parameters(), optimizer.state)
    return loss
"""


def test_training_loop_block_runs(tmp_path, monkeypatch):
    (block,) = blocks("training loop")
    monkeypatch.chdir(tmp_path)  # the block writes runs/exp1 and checkpoints/
    namespace = {}
    exec(TRAINING_LOOP_SETUP + block, namespace)

    schedule = namespace["schedule"]
    assert namespace["callback"].step == 1000
    expected = [(s, float(np.float32(schedule(s - 1)))) for s in range(1, 1001)]
    assert read_scalars(tmp_path / "runs/exp1") == expected
    assert json.loads((tmp_path / "checkpoints/callback.json").read_text())["step"] == 1000
    assert namespace["optimizer"].state["step"].item() == 1000


def test_several_schedules_block_runs(tmp_path, monkeypatch):
    (block,) = blocks("several schedules")
    monkeypatch.chdir(tmp_path)  # the block writes runs/exp2
    namespace = {}
    # The imports of the section's first block, which this one continues.
    setup = "import mlx.optimizers as optim\nfrom mlx_sched_callbacks import *\n"
    exec(setup + "from mlx_sched_callbacks import schedules", namespace)
    exec(block, namespace)
    assert namespace["callback"].schedule.schedules[1].name == "reduce_on_plateau"


# What README says before the block: a model with LoRA layers, an optimizer built with a
# float rate, a schedule, mlx-lm's TrainingArgs, and train and validation sets from
# mlx-lm's load_dataset; here on the tiny built-in model and data.
MLX_LM_SETUP = """
import types

import mlx.optimizers as optim
from mlx_lm.tuner.datasets import load_dataset
from mlx_lm.tuner.trainer import TrainingArgs
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlx_sched_callbacks import schedules
from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model, load_tiny

model, tokenizer = load_tiny(build_tiny_model("tiny/model"))
model.freeze()
linear_to_lora_layers(model, 2, {"rank": 8, "dropout": 0.0, "scale": 20.0})
optimizer = optim.AdamW(learning_rate=0.0)
schedule = schedules.warmup_cosine(1e-3, warmup_steps=2, total_steps=20)
training_args = TrainingArgs(
    batch_size=4, iters=20, val_batches=2, steps_per_eval=10, steps_per_save=10,
    adapter_file="adapters/adapters.safetensors",
)
data = types.SimpleNamespace(
    data=str(build_tiny_dataset("tiny/data")), train=True, test=False, mask_prompt=False
)
train_set, val_set, _ = load_dataset(data, tokenizer)
"""


def test_mlx_lm_training_block_runs(tmp_path, monkeypatch, capsys):
    (block,) = blocks("MlxLmTraining")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(MLX_LM_SETUP + block, namespace)

    out = capsys.readouterr().out
    assert "No complete checkpoint in adapters/checkpoints; starting at 1" in out
    schedule = namespace["schedule"]
    expected = [(s, float(np.float32(schedule(s - 1)))) for s in range(1, 21)]
    assert read_scalars(tmp_path / "runs/lora") == expected
    saved = mx.load(str(tmp_path / "adapters/adapters.safetensors"))
    trained = dict(tree_flatten(namespace["model"].trainable_parameters()))
    assert saved.keys() == trained.keys() and saved
    for key in saved:
        np.testing.assert_array_equal(np.array(saved[key]), np.array(trained[key]), err_msg=key)
    assert sorted(p.name for p in (tmp_path / "adapters/checkpoints").iterdir()) == [
        "step_000000010",
        "step_000000020",
    ]
