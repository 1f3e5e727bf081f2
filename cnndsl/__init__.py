"""cnndsl: a language and compiler for convolutional networks.

    import cnndsl
    net = cnndsl.load("net.cnn")          # or cnndsl.parse(text)
    print(net.analyze().params)
    model = net.to_torch()                # an nn.Module (needs the `torch` extra)
    cnndsl.compile(net, target="onnx", out="net.onnx")

Parsing, checking and analysis import neither lark (the parser is lark's stand-alone module,
generated from the grammar) nor torch, numpy or onnx: each backend imports what it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CnnDslError, Diagnostic, Source, Span

if TYPE_CHECKING:
    from .api import Net, compile, diagnose, load, parse

__version__ = "0.1.0"
__all__ = ["Net", "parse", "load", "compile", "diagnose", "CnnDslError", "Diagnostic", "Source", "Span", "__version__"]


def __getattr__(name: str) -> object:
    # The API is imported on first use (PEP 562), so the `cnndsl` command can set itself up before
    # the parser, IR and analysis modules load.
    if name in ("Net", "compile", "diagnose", "load", "parse"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnndsl' has no attribute {name!r}")
