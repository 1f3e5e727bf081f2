"""`cnndsl lsp`: the language server, over stdio (pygls, the `lsp` extra).

The command lives here without importing pygls, so that `cnndsl --help` works without the extra
and a missing pygls is a user error naming it; the protocol is in `server`, the figures in
`features`.
"""

from __future__ import annotations

import click

from ..cli import _user_errors
from ..errors import CnnDslError

__all__ = ["lsp"]


@click.command(name="lsp")
@_user_errors
def lsp() -> None:
    """Run the language server on stdin/stdout (diagnostics, hover, shapes, completion, formatting)."""
    try:
        from .server import build
    except ImportError as err:
        if (err.name or "").split(".")[0] not in ("pygls", "lsprotocol"):
            raise
        raise CnnDslError("the language server needs pygls, which is not installed",
                          hint="pip install 'cnndsl[lsp]'") from None
    build().start_io()
