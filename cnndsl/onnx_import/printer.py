"""Pass (e): the statement tree -> program text, as a person writes it.

A line is a layer that computes something new (conv, pool, fc, ...) followed by the pointwise
layers after it (`conv 3x3/2 pad1 -> 64 nobias; bn; relu`); constructs open a brace, a branch that
fits on one line stays on one. Each statement is printed by its kind's own `text()`; inside a
block, a number that is a parameter is printed as that parameter's expression (`-> 4*c`, `/s`).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from .. import ir
from ..kinds.base import Padding, number_text
from ..outputs import stamped
from .layers import Branching, Call, Item, Layer

POINTWISE = (ir.BatchNorm, ir.Activation, ir.LayerNorm, ir.GroupNorm, ir.LayerScale, ir.Dropout, ir.DropPath)
INDENT = "  "
_SENTINEL = 7_300_001  # seven digits: no sentinel is part of another's text


def statement(node: ir.Node, exprs: dict[str, str] | None = None) -> str:
    """`node.text()`, with the fields in `exprs` (field -> expression) written as expressions."""
    if not exprs:
        return node.text()
    values, swapped = {}, {}
    for offset, (name, expr) in enumerate(sorted(exprs.items())):
        sentinel = _SENTINEL + offset
        values[str(sentinel)] = expr
        current = getattr(node, name)
        if isinstance(current, Padding):
            swapped[name] = Padding(top=sentinel, bottom=sentinel, left=sentinel, right=sentinel)
        elif isinstance(current, tuple):
            swapped[name] = (sentinel, sentinel)
        else:
            swapped[name] = sentinel
    text = dataclasses.replace(node, **swapped).text()
    for sentinel, expr in values.items():
        atom = expr if re.fullmatch(r"[A-Za-z_]\w*|\d+", expr) else f"({expr})"
        text = text.replace(f"{sentinel}x{sentinel}", atom)
        text = re.sub(rf"\b(pad|groups|dil|outpad){sentinel}\b", rf"\1 {expr}", text)
        text = text.replace(sentinel, expr)
    return text


def call_text(call: Call, params: tuple[tuple[str, int | None], ...], exprs: dict[str, str] | None = None) -> str:
    """`name(64, s=2) x3`; inside a block, arguments that are the caller's parameters as expressions."""
    args, exprs = dict(call.args), exprs or {}
    written = []
    for name, default in params:
        if name in exprs:
            written.append(exprs[name] if default is None else f"{name}={exprs[name]}")
        elif default is None:
            written.append(number_text(args[name]))
        elif args[name] != default:
            written.append(f"{name}={number_text(args[name])}")
    text = call.block + (f"({', '.join(written)})" if written else "")
    return text + (f" x{call.count}" if call.count > 1 else "")


def lines(items: tuple[Item, ...], exprs: dict[int, dict[str, str]], blocks: dict, indent: str = "") -> list[str]:
    out: list[str] = []
    current: list[str] = []

    def flush():
        if current:
            out.append(indent + "; ".join(current))
            current.clear()

    for item in items:
        if isinstance(item, Layer):
            if not isinstance(item.node, POINTWISE) or not current:
                flush()
            current.append(statement(item.node, exprs.get(id(item))))
            continue
        flush()
        if isinstance(item, Call):
            out.append(indent + call_text(item, blocks[item.block], exprs.get(id(item))))
            continue
        out.extend(_construct(item, exprs, blocks, indent))
    flush()
    return out


def _construct(item: Branching, exprs, blocks, indent: str) -> list[str]:
    inner = indent + INDENT
    if item.kind == "residual":
        out = [f"{indent}residual {{", *lines(item.branches[0], exprs, blocks, inner)]
        if item.shortcut is not None:
            out.append(f"{indent}}} shortcut{' always' if item.always else ''} {{")
            out.extend(lines(item.shortcut, exprs, blocks, inner))
        out.append(f"{indent}}}")
        return out
    out = [f"{indent}{item.kind} {{"]
    for branch in item.branches:
        body = lines(branch, exprs, blocks, inner + INDENT)
        if not body:
            out.append(f"{inner}branch {{}}")
        elif len(body) == 1 and len(body[0]) < 90:
            out.append(f"{inner}branch {{ {body[0].strip()} }}")
        else:
            out.extend([f"{inner}branch {{", *body, f"{inner}}}"])
    out.append(f"{indent}}}")
    return out


def _tuple(values: np.ndarray) -> str:
    return "(" + ", ".join(number_text(float(str(np.float32(v)))) for v in values.reshape(-1)) + ")"


def program(name: str, input_shape: tuple[int, ...], preprocess: dict[str, np.ndarray], blocks, body,
            origin: str, notes: list[str]) -> str:
    """The whole file: a header comment, the block definitions, the network."""
    head = [f"# note: {note}" for note in notes]
    block_params = {b.name: b.params for b in blocks}
    text = head + [""]
    for block in blocks:
        params = ", ".join(p if d is None else f"{p}={number_text(d)}" for p, d in block.params)
        text.append(f"block {block.name}{f'({params})' if params else ''} {{")
        text.extend(lines(block.body, block.exprs, block_params, INDENT))
        text.extend(["}", ""])
    text += [f"network {name}", f"input {'x'.join(map(str, input_shape))}"]
    if preprocess:
        section = []
        if "scale" in preprocess:
            section.append(f"scale {number_text(float(str(np.float32(preprocess['scale']))))}")
        if "mean" in preprocess:
            section.append(f"standardize mean {_tuple(preprocess['mean'])} std {_tuple(preprocess['std'])}")
        text.append("preprocess { " + "; ".join(section) + " }")
    text.append("")
    text.extend(lines(body, {}, block_params))
    return stamped(f"# imported from {origin} by 'cnndsl import'", "\n".join(text) + "\n")
