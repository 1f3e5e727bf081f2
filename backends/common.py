"""What every code-generating backend writes the same way: class names, comments that carry a
statement, and the comment that says where a node came from."""

from __future__ import annotations

import re

from cnndsl import ir

LINE_LIMIT = 120  # the project's ruff line length: generated files must pass `ruff check`
INDENT = "    "


def wrap_call(lhs: str, func: str, args: list[str], indent: str, tail: str = "") -> list[str]:
    """`lhs func(args)tail` on one line, or with the arguments on a continuation line (one per line
    when they do not fit on one) when that is longer than the project's line length."""
    one = f"{indent}{lhs}{func}({', '.join(args)}){tail}"
    if len(one) <= LINE_LIMIT:
        return [one]
    inner = indent + INDENT
    joined = f"{inner}{', '.join(args)}"
    body = [joined] if len(joined) <= LINE_LIMIT else [f"{inner}{a}," for a in args]
    return [f"{indent}{lhs}{func}(", *body, f"{indent}){tail}"]


def class_name(name: str, fallback: str = "Net") -> str:
    """`resnet_18` -> `Resnet18`: CamelCase from the letters and digits only (leading underscores
    would make Python mangle the name inside class bodies); `fallback` leads a name that would
    start with a digit or be empty."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", name) if p]
    camel = "".join(p[:1].upper() + p[1:] for p in parts)
    if not camel or camel[0].isdigit():
        camel = fallback + camel
    return camel


def printable(text: str) -> str:
    """Text safe inside a one-line comment: a carriage return or line separator from the source
    would otherwise end the comment and start a line of code."""
    return "".join(c if c.isprintable() else "?" for c in text).strip()


def where(node: ir.Node) -> str:
    """`line 12: conv 3x3/2 pad1 -> 128 nobias`: the statement's line and its evaluated text."""
    return printable(f"line {node.span.line}: {node.text()}")
