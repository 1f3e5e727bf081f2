"""Analysis passes over the IR: shapes, receptive fields, cost, the user's expectations.

`analyze(network)` runs them all and returns a `Report`: the figures `cnndsl analyze` prints,
per layer and in total. Each pass is a pure function of the IR; nothing here imports torch or
numpy.
"""

from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass, field
from functools import cached_property
from math import prod
from typing import TYPE_CHECKING, NamedTuple

from .. import ir
from ..errors import CnnDslError, Diagnostic, ExpectationError, Span
from ..kinds.base import rational_json, rational_text
from .cost import TensorSpec, tensor_specs
from .receptive_field import Field, receptive_fields
from .shapes import LayerShape, Shapes, active, active_depths, fmt, infer_shapes, same_padding, window

if TYPE_CHECKING:
    from ..kinds.base import Rational
    from .erf import EffectiveField

__all__ = ["Report", "LayerReport", "active", "analyze", "infer_shapes", "receptive_fields", "tensor_specs",
           "same_padding", "window", "Shapes", "LayerShape", "Field", "TensorSpec", "fmt"]

BYTES_PER_VALUE = 4  # float32


class LayerReport(NamedTuple):
    """One row of the analysis: a layer (or residual, concat, add) and its figures."""

    name: str
    op: str
    line: int
    column: int
    statement: str
    depth: int
    input: tuple[int, ...]
    output: tuple[int, ...]
    params: int
    macs: int
    rf: tuple[int, int]  # the largest extent over output positions, where that depends on the position
    jump: tuple[Rational, Rational]  # ints where whole, else exact Fractions
    offset: tuple[Rational, Rational]
    call_lines: tuple[int, ...]
    node: ir.Node
    # After a squeeze-and-excitation gate or group norm every output depends on the whole input;
    # `rf` stays the spatial field (what the figures people quote mean).
    global_context: bool = False

    def to_json(self, shape: LayerShape | None = None, erf: EffectiveField | None = None, *,
                field: bool = True) -> dict:
        """The row as JSON: `statement` as written, `evaluated` as it runs, the window's geometry
        (`kernel`, `stride`, `pad` as resolved top/bottom/left/right, `dilation`, `groups`) where
        the layer has one (from `shape`), `erf` where given; rf, jump and offset are null without a
        spatial field (`field` False)."""
        out = {
            "name": self.name, "op": self.op, "line": self.line, "column": self.column,
            "statement": self.statement, "evaluated": self.node.text(), "input": list(self.input),
            "output": list(self.output), "params": self.params, "macs": self.macs,
            "rf": list(self.rf) if field else None,
            "jump": [rational_json(j) for j in self.jump] if field else None,
            "offset": [rational_json(o) for o in self.offset] if field else None,
            "global_context": self.global_context, "call_lines": list(self.call_lines),
        }
        out.update(_geometry(self.node, shape))
        if erf is not None:
            out["erf"] = list(erf.size)
        return out


@dataclass(frozen=True)
class Report:
    network: str
    input: tuple[int, ...]
    output: tuple[int, ...]
    params: int
    trainable_params: int
    buffers: int
    macs: int
    weight_bytes: int
    activation_bytes: int
    rf: tuple[int, int]
    jump: tuple[Rational, Rational]
    offset: tuple[Rational, Rational]
    warnings: tuple[Diagnostic, ...] = ()
    shapes: Shapes = field(default_factory=Shapes, repr=False, compare=False)
    # node name -> receptive field of its output
    fields: dict[str, Field] = field(default_factory=dict, repr=False, compare=False)
    # What the rows are made from, when first asked for: the network, and the nodes after a gate
    # or group norm (`LayerReport.global_context`).
    network_ir: ir.Network | None = field(default=None, repr=False, compare=False)
    global_context: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @cached_property
    def field_inputs(self) -> dict[str, Field]:
        """node name -> the receptive field it starts from (what `explain` shows as "rf: before -> after"),
        from the field pass run again when first asked for."""
        if not self.fields or self.network_ir is None:
            return {}
        inputs: dict[str, Field] = {}
        receptive_fields(self.network_ir, self.shapes, inputs)
        return inputs

    @cached_property
    def layers(self) -> tuple[LayerReport, ...]:
        """One row per layer, residual and join, in order, as the table shows them. Made on first use:
        `cnndsl check` needs only the totals (for 90,000 statements the rows were a fifth of its memory)."""
        if self.network_ir is None:
            return ()
        return tuple(_rows(self.network_ir, self.shapes, self.fields, self.global_context))

    def layer(self, name: str) -> LayerReport:
        """The row of layer `name`; a CnnDslError naming the closest names when there is none."""
        for row in self.layers:
            if row.name == name:
                return row
        names = [row.name for row in self.layers]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close else
                "the layer names are the first column of `cnndsl analyze`")
        raise CnnDslError(f"{self.network} has no layer named {name!r}", hint=hint)

    def explain(self, layer: str | LayerReport, width: int | None = None) -> str:
        """What `cnndsl analyze --explain` prints for a layer: its name, line and evaluated statement,
        then the arithmetic behind its figures, one indented line each (wrapped to `width` if given)."""
        import textwrap

        row = self.layer(layer) if isinstance(layer, str) else layer
        text = [f"{row.name} (line {row.line}): {row.node.text()}"]
        text += [f"  {line}" for line in self.explain_lines(row)]
        if width is not None:
            text = [wrapped for line in text for wrapped in textwrap.wrap(
                line, width, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)]
        return "\n".join(text)

    def explain_lines(self, layer: str | LayerReport) -> tuple[str, ...]:
        """The arithmetic behind a row's figures, one line each (the body of `explain`)."""
        row = self.layer(layer) if isinstance(layer, str) else layer
        shape = self.shapes[row.name]
        lines = row.node.explain(shape)
        before, after = self.field_inputs.get(row.name), self.fields.get(row.name)
        if after is not None and before is not None and before != after:
            lines += (_rf_explain(before, after),)
        return lines

    def __str__(self) -> str:
        """The `cnndsl analyze` table in plain text, fitted to the terminal (COLUMNS, else 80)."""
        from ..summary import render_text, terminal_width

        return render_text(self, terminal_width())

    def _repr_html_(self) -> str:
        from ..summary import render_html

        return render_html(self)

    def table(self, width: int | None = None, *, depth: int | None = None,
              erf: dict[str, EffectiveField] | None = None, explain: bool = False) -> str:
        """The table as `cnndsl analyze` prints it, at `width` (None: unlimited), with the rows below
        `depth` collapsed into their block calls and an ERF column from `erf` (`effective_fields`)."""
        from ..summary import render_text

        return render_text(self, width, depth=depth, erf=erf, explain=explain)

    def to_json(self, erf: dict[str, EffectiveField] | None = None) -> dict:
        """Every figure as JSON; with `erf`, each spatial layer's `erf` ([height, width])."""
        return {
            "network": self.network, "input": list(self.input), "output": list(self.output),
            "params": self.params, "trainable_params": self.trainable_params, "buffers": self.buffers,
            "macs": self.macs, "weight_bytes": self.weight_bytes, "activation_bytes": self.activation_bytes,
            # A network with no spatial field has none to give: null, as its layers and the table's "-" say.
            "rf": list(self.rf) if self.fields else None,
            "jump": [rational_json(j) for j in self.jump] if self.fields else None,
            "offset": [rational_json(o) for o in self.offset] if self.fields else None,
            "layers": [row.to_json(self.shapes.get(row.name), erf.get(row.name) if erf else None,
                                   field=bool(self.fields)) for row in self.layers],
            "warnings": [{"line": w.span.line if w.span else None, "column": w.span.column if w.span else None,
                          "message": w.message} for w in self.warnings],
        }


def _geometry(node: ir.Node, shape: LayerShape | None) -> dict:
    """kernel, stride, pad, dilation and groups of a windowed layer, as it runs."""
    out: dict = {}
    for key in ("kernel", "stride", "dilation"):
        value = getattr(node, key, None)
        if isinstance(value, tuple):
            out[key] = list(value)
    if "kernel" in out:
        if shape is not None and shape.windows is not None:
            out["pad"] = list(shape.pads)
        elif isinstance(getattr(node, "padding", None), tuple):
            pad = node.padding
            out["pad"] = [pad.top, pad.bottom, pad.left, pad.right]
    if isinstance(node, (ir.Conv, ir.Deconv)):
        out["groups"] = shape.groups if shape is not None else node.groups
    return out


def _rf_explain(before: Field, after: Field) -> str:
    text = (f"rf: {before.size[0]} -> {after.size[0]}, jump {rational_text(before.jump[0])} -> "
            f"{rational_text(after.jump[0])}, first centre {rational_text(before.start[0])} -> "
            f"{rational_text(after.start[0])}")
    if after.spans is not None and after.spans[0] is not None:
        spans = after.spans[0]
        text += (f" (rows seen depend on the position, repeating every {spans.period} outputs; rf is the "
                 f"largest extent)")
    return text


def analyze(network: ir.Network, input_shape: tuple[int, ...] | None = None, *, check_expects: bool = True
            ) -> Report:
    """All figures for `network` (at `input_shape` if given). Raises CnnDslError on a shape error or a
    broken `expect` line."""
    shapes = infer_shapes(network, input_shape)
    context: set[str] = set()  # nodes after a gate or group norm
    spatial = len(input_shape or network.input_shape) == 3
    fields = receptive_fields(network, shapes, None, context) if spatial else {}
    params = buffers = macs = activations = 0
    for node in active(network.body, shapes):
        if type(node) is ir.Seq:
            continue
        shape = shapes[node.name]
        cost = node.cost(shape)
        params += cost.params
        buffers += cost.buffers
        macs += cost.macs
        activations += prod(shape.output)
    trainable = params
    pre = network.preprocess
    if pre is not None:
        buffers += 1 + (2 * network.input_shape[0] if pre.standardize else 0)
    final = fields.get(network.body.name) if fields else None
    out_shape = shapes.of(network.body).output
    report = Report(
        network=network.name, input=tuple(input_shape or network.input_shape), output=out_shape,
        params=params, trainable_params=trainable, buffers=buffers, macs=macs,
        weight_bytes=(params + buffers) * BYTES_PER_VALUE, activation_bytes=activations * BYTES_PER_VALUE,
        rf=final.size if final else (0, 0), jump=final.jump if final else (0, 0),
        offset=final.start if final else (0, 0), warnings=tuple(shapes.warnings.items), shapes=shapes,
        fields=fields, network_ir=network, global_context=frozenset(context))
    if check_expects:
        try:
            check_expectations(network, report)
        except CnnDslError as err:
            raise err.with_source(network.source) from None
    return report


def _rows(network: ir.Network, shapes: Shapes, fields: dict[str, Field], context: frozenset[str]
          ) -> list[LayerReport]:
    rows = []
    statements: dict[Span, str] = {}  # a block's statements recur in every call of it
    call_lines: dict[tuple[Span, ...], tuple[int, ...]] = {}
    for node, depth in active_depths(network.body, shapes, _indents):
        if type(node) is ir.Seq:
            continue
        shape = shapes.of(node)
        cost = node.cost(shape)
        statement = statements.get(node.span)
        if statement is None:
            statement = statements[node.span] = network.source.statement(node.span)
        lines = call_lines.get(node.calls)
        if lines is None:
            lines = call_lines[node.calls] = tuple(c.line for c in node.calls)
        f = fields.get(node.name)
        rows.append(LayerReport(
            node.name, node.kind, node.span.line, node.span.column, statement, depth, shape.input,
            shape.output, cost.params, cost.macs, f.size if f else (0, 0), f.jump if f else (0, 0),
            f.start if f else (0, 0), lines, node, node.name in context))
    return rows


def _indents(node: ir.Node) -> bool:
    """Whether the table indents what is inside `node`: a block call, a branch or a shortcut does;
    the network's body and a residual's body do not."""
    return type(node) is ir.Seq and node.name != "" and not node.name.endswith(".body")


_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}


def _figure(what: str, report: Report):
    return {
        "params": report.params, "trainable_params": report.trainable_params, "macs": report.macs,
        "memory": report.weight_bytes + report.activation_bytes, "rf": report.rf, "output": report.output,
    }[what]


def check_expectations(network: ir.Network, report: Report) -> None:
    """Raise an ExpectationError for each `expect` line the report breaks (all of them at once)."""
    errors = [err for expect in network.expects if (err := _broken(expect, report)) is not None]
    if errors:
        raise CnnDslError.collect(errors)


def _broken(expect: ir.Expect, report: Report) -> ExpectationError | None:
    actual = _figure(expect.what, report)
    compare = _COMPARE[expect.comparison]
    notes: list[str] = []
    if expect.what == "output":
        wanted = tuple(int(v) for v in expect.value)
        ok = compare(tuple(actual), wanted) if expect.comparison == "==" else False
        shown, want = fmt(actual), fmt(wanted)
        if expect.comparison != "==":
            return ExpectationError("expect output compares shapes with '=' only", expect.span,
                                    hint=f"write 'expect output {want}'")
    elif expect.what == "rf":
        ok = all(compare(axis, expect.value[0]) for axis in actual)
        shown, want = fmt(actual), f"{expect.value[0]:g}"
    else:
        ok = compare(actual, expect.value[0])
        shown, want = f"{actual:,}", f"{expect.value[0]:,}"
        if not ok and expect.what in ("params", "trainable_params"):  # (the rows are made only for this)
            heaviest = sorted((row for row in report.layers if row.params), key=lambda row: -row.params)[:3]
            if heaviest:
                notes.append("most parameters: " + ", ".join(
                    f"{row.name} {row.params:,} (line {row.line})" for row in heaviest))
    if ok:
        return None
    return ExpectationError(
        f"expectation failed: {expect.what} {expect.comparison} {want}, but the network has "
        f"{expect.what} {shown}", expect.span, notes=notes,
        hint="change the network, or the expectation if the network is right")
