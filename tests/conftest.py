"""Shared test set-up: the `needs` marker for optional packages (a missing one fails the test, naming
its extra), and skips that show their reasons.

The numbers every backend must produce come from one reference, `tests/reference.py`; the optional
packages a test imports are declared with `extras.needs(...)` or `extras.require(...)`.
"""

from __future__ import annotations

import pytest
from extras import require


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs(*modules): the test imports these optional packages; without them it fails, "
        "naming the extra that installs them")
    # Skips are listed with their reasons in the short summary, even under -q.
    chars = config.option.reportchars or ""
    if not set(chars) & set("saAN"):  # -rN asks for no summary
        config.option.reportchars = chars + "s"


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs"):
        for name in mark.args:
            require(name)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored afterwards: on this shared 2-core machine spinning
    threads make small ops slower, and no figure depends on the thread count. Modules that need it
    say `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    torch = require("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
