"""Shared test set-up: the `needs` marker for optional packages, and skips that show their reasons.

The numbers every backend must produce come from one reference, `tests/reference.py`; the optional
packages a test imports are declared with `extras.needs(...)` or `extras.require(...)`.
"""

from __future__ import annotations

from extras import require


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs(*modules): the test imports these optional packages; without them it is skipped "
        "naming the extra that installs them (a failure when the CI environment variable is set)")
    # Skips are listed with their reasons in the short summary, even under -q.
    chars = config.option.reportchars or ""
    if not set(chars) & set("saAN"):  # -rN asks for no summary
        config.option.reportchars = chars + "s"


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs"):
        for name in mark.args:
            require(name)
