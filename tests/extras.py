"""Optional dependencies in the tests: a test that needs one says so, and never goes quiet without it.

`require("torch")` imports a package the core does not need. Where it is missing, the calling test
(or, at module level, the test file) is skipped with a reason that names the extra installing it;
under continuous integration (`CI` set to anything but "", "0" or "false") it fails instead, since
CI runs `./install.sh test`, which installs every extra, and a skipped suite would pass unseen.

`needs("torch", ...)` is the same as a marker, for tests whose helpers import the package.
"""

from __future__ import annotations

import importlib
import os
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


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(name: str) -> ModuleType:
    """The module `name`; without it, skip the test (or file) naming the extra, or fail under CI."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        problem = str(error)
    top = name.split(".")[0]
    reason = (f"needs {top}, which is not installed ({problem}): pip install -e '.[{EXTRAS.get(top, 'test')}]' "
              "(./install.sh test installs every extra)")
    if in_ci():
        pytest.fail(f"CI is set and this test {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def needs(*names: str) -> pytest.MarkDecorator:
    """Mark a test as needing the optional packages `names` (checked by conftest.py before it runs)."""
    return pytest.mark.needs(*names)
