"""README's examples run as written."""

import doctest
import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_doctest_blocks():
    examples = [b for b in python_blocks() if b.lstrip().startswith(">>>")]
    assert examples
    for block in examples:
        # An empty namespace: the block must import what it uses, as a reader's would.
        test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert runner.failures == 0


def test_several_schedules_block_runs():
    (block,) = [b for b in python_blocks() if "MultiOptimizer" in b]
    namespace = {}
    setup = "import mlx.optimizers as optim\nfrom mlx_sched_callbacks import *\n"
    exec(setup + "from mlx_sched_callbacks import schedules", namespace)
    exec(block, namespace)
    assert namespace["callback"].schedule.schedules[1].name == "reduce_on_plateau"
