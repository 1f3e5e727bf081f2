"""Optional dependencies in the tests: a test that needs one says so, and never goes quiet without it.

`require("torch")` imports a package the core does not need. Where it is missing, the calling test
(or, at module level, the test file) fails with a message that names the extra installing it: the
README's test command (`./install.sh test`) installs every extra, and a skipped test would let a
suite pass with that part unseen.

`needs("torch", ...)` is the same as a marker, for tests whose helpers import the package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

EXTRAS = {  # import name -> the extra of pyproject.toml that installs it
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "sklearn": "train",
    "PIL": "train",
    "torchinfo": "test",
    "hypothesis": "test",
    "lark": "test",
}


def require(name: str) -> ModuleType:
    """The module `name`; without it, fail the test (or file) naming the extra."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        problem = str(error)
    top = name.split(".")[0]
    reason = (f"needs {top}, which is not installed ({problem}): pip install -e '.[{EXTRAS.get(top, 'test')}]' "
              "(./install.sh test installs every extra)")
    pytest.fail(f"this test {reason}", pytrace=False)


def needs(*names: str) -> pytest.MarkDecorator:
    """Mark a test as needing the optional packages `names` (checked by conftest.py before it runs)."""
    return pytest.mark.needs(*names)
