"""`cnndsl draw`: the architecture as an SVG diagram, laid out from the IR's series-parallel structure.

Statements run top to bottom; the branches of a residual or a join stand side by side above the
box that joins them. A block call is one box labelled with the call as written (`basic(128, s=2)`),
and a statement repeated with `x N` (the expander leaves N copies with the same span and call
sites) is one box marked `xN`, so ResNet-152 is fourteen boxes. Each edge is labelled with the shape
of the tensor it carries, read from the analysis (never recomputed here).

No Graphviz: a series-parallel graph lays itself out. A `Part` is a laid-out piece in its own
coordinates; `series` stacks parts on a common axis and `_parallel` puts branches side by side,
so the layout is one recursion over the IR.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import click

from . import ir, outputs
from .analysis import Report, fmt
from .analysis.shapes import active
from .summary import human

ROW_GAP = 30  # vertical room between boxes: the edge and its shape label
COL_GAP = 22
BOX_H = 26
CALL_H = 40
CHAR_W = 7.3  # 12px monospace
SMALL_W = 6.1  # 10px
MAX_LABEL = 44  # characters; longer labels are cut, the whole text stays in the tooltip
IDENTITY_W = 18  # the column of a `branch {}` or an identity shortcut
MARGIN = 16
LEGEND_W = 170

# One colour per kind (fill, the name the legend shows). A kind not listed gets a colour from its name.
KIND_STYLE: dict[str, tuple[str, str]] = {
    "conv": ("#8db7e8", "conv"),
    "deconv": ("#b3a4e6", "deconv"),
    "pool": ("#9fd69a", "pool"),
    "fc": ("#e2a3d6", "fc"),
    "bn": ("#f3dc87", "batch norm"),
    "ln": ("#efc97a", "layer norm"),
    "gn": ("#e8cf98", "group norm"),
    "layerscale": ("#e9e1b5", "layer scale"),
    "activation": ("#f4a582", "activation"),
    "dropout": ("#cfcfcf", "dropout"),
    "droppath": ("#bdbdbd", "drop path"),
    "flatten": ("#d9d2c3", "flatten"),
    "upsample": ("#a6dbd7", "upsample"),
    "shuffle": ("#c8e6a0", "channel shuffle"),
    "channels": ("#b8e0c8", "channels"),
    "residual": ("#ffffff", "residual add"),
    "concat": ("#ffffff", "concat"),
    "add": ("#ffffff", "add"),
    "mul": ("#ffffff", "mul"),
    "call": ("#f7f7f7", "block call"),
    "input": ("#eeeeee", "input / output"),
}
JOINS = ("residual", "concat", "add", "mul")


def kind_of(node: ir.Node) -> str:
    """The colour key of a node: its kind, with every activation one kind and every pool one."""
    if isinstance(node, ir.Activation):
        return "activation"
    if isinstance(node, ir.Seq):
        return "call"
    return node.kind


def kind_colour(kind: str) -> str:
    if kind in KIND_STYLE:
        return KIND_STYLE[kind][0]
    hue = int(hashlib.sha1(kind.encode()).hexdigest()[:4], 16) % 360  # stable across runs
    return f"hsl({hue}, 55%, 78%)"


@dataclass(frozen=True)
class Item:
    """One box: a statement, a block call, or a statement repeated `x N` (all its copies)."""

    nodes: tuple[ir.Node, ...]
    label: str
    kind: str
    expandable: bool  # a block call or a repeat: the report can open it

    @property
    def first(self) -> ir.Node:
        return self.nodes[0]

    @property
    def name(self) -> str:
        return self.first.name


@dataclass
class Part:
    """A laid-out piece of the diagram in its own coordinates (origin top left)."""

    width: float
    height: float
    axis: float  # the x its entering and leaving edges line up on
    entries: list[tuple[float, float]]  # where edges into it end
    exit: tuple[float, float]  # where the edge out of it starts
    output: str  # the shape of the tensor leaving it
    boxes: list[tuple[Item, float, float, float, float]] = field(default_factory=list)
    edges: list[tuple[float, float, float, float]] = field(default_factory=list)
    labels: list[tuple[float, float, str]] = field(default_factory=list)

    def moved(self, dx: float, dy: float) -> Part:
        return Part(
            self.width, self.height, self.axis + dx, [(x + dx, y + dy) for x, y in self.entries],
            (self.exit[0] + dx, self.exit[1] + dy), self.output,
            [(item, x + dx, y + dy, w, h) for item, x, y, w, h in self.boxes],
            [(x1 + dx, y1 + dy, x2 + dx, y2 + dy) for x1, y1, x2, y2 in self.edges],
            [(x + dx, y + dy, text) for x, y, text in self.labels])

    def add(self, other: Part) -> None:
        self.boxes += other.boxes
        self.edges += other.edges
        self.labels += other.labels


def _shape_label(x: float, y: float, text: str) -> tuple[float, float, str]:
    return (x + 5, y + 16, text)


def group(items: tuple[ir.Node, ...]) -> list[tuple[ir.Node, ...]]:
    """Consecutive nodes of one statement repeated with `x N`: the same span and the same call sites.
    (A block call's `Seq` carries the block's span; its call site is the last of `calls`.)"""
    runs: list[list[ir.Node]] = []
    for node in items:
        if runs and type(runs[-1][0]) is type(node) and runs[-1][0].span == node.span \
                and runs[-1][0].calls == node.calls:
            runs[-1].append(node)
        else:
            runs.append([node])
    return [tuple(run) for run in runs]


class Layout:
    """Lays out a network's statements from its IR and its analysis `Report`."""

    def __init__(self, network: ir.Network, report: Report):
        self.network, self.report = network, report
        self.shapes = report.shapes
        self.rows = {row.name: row for row in report.layers}

    # ------------------------------------------------------------ items
    def item(self, run: tuple[ir.Node, ...]) -> Item:
        first, count = run[0], len(run)
        repeat = f" x{count}" if count > 1 else ""
        if isinstance(first, ir.Seq):
            call = self.network.source.statement(first.calls[-1]) if first.calls else first.text()
            return Item(run, call + repeat, "call", True)
        if first.children():
            return Item(run, first.text() + repeat, "call" if count > 1 else first.key, count > 1)
        return Item(run, first.text() + repeat, kind_of(first), count > 1)

    def figures(self, item: Item) -> tuple[int, int, int]:
        """Parameters, MACs and layers of everything in `item` (all its repeats); a join drawn with its
        branches around it counts only itself, so the boxes of a diagram add up to the network."""
        params = macs = layers = 0
        for node in item.nodes:
            for inner in active(node, self.shapes) if item.expandable else (node,):
                row = self.rows.get(inner.name)
                if row is not None:
                    params += row.params
                    macs += row.macs
                    layers += not inner.children()
        return params, macs, layers

    def subtitle(self, item: Item) -> str:
        params, _, layers = self.figures(item)
        return f"{layers} {'layer' if layers == 1 else 'layers'}, {human(params)} params"

    def output(self, node: ir.Node) -> str:
        return fmt(self.shapes.of(node).output)

    # ------------------------------------------------------------ layout
    def sequence(self, items: tuple[ir.Node, ...]) -> Part | None:
        """The statements of a sequence, top to bottom (None when it has none: an identity)."""
        parts = []
        for run in group(statements(items)):
            item = self.item(run)
            if len(run) == 1 and not item.expandable and run[0].children():
                parts.append(self.compound(run[0], item))
            else:
                parts.append(self.box(item, self.output(run[-1])))
        return series(parts) if parts else None

    def box(self, item: Item, output: str) -> Part:
        height = CALL_H if item.expandable else BOX_H
        width = max(64.0, 18 + CHAR_W * min(len(item.label), MAX_LABEL))
        if item.expandable:
            width = max(width, 18 + SMALL_W * len(self.subtitle(item)))
        return Part(width, height, width / 2, [(width / 2, 0)], (width / 2, height), output,
                    boxes=[(item, 0, 0, width, height)])

    def compound(self, node: ir.Node, item: Item) -> Part:
        """A residual or a join: its branches side by side, then the box that joins them."""
        if isinstance(node, ir.Residual):
            projects = self.shapes.of(node).projects
            branches = [node.body] + ([node.shortcut] if projects and node.shortcut is not None else [None])
        else:
            branches = list(node.branches)
        input_shape = fmt(self.shapes.of(node).input)
        parts = [self.sequence(b.items) if b is not None else None for b in branches]
        join = self.box(item, self.output(node))
        return _parallel(parts, join, input_shape, keep_first_axis=isinstance(node, ir.Residual))

    def terminal(self, text: str, shape: str) -> Part:
        item = Item((), text, "input", False)
        return self.box(item, shape)

    def network_part(self) -> Part:
        body = self.sequence(self.network.body.items)
        parts = [self.terminal("input", fmt(self.report.input))]
        parts += [body] if body is not None else []
        parts.append(self.terminal("output", fmt(self.report.output)))
        return series(parts)


def statements(items: tuple[ir.Node, ...]) -> list[ir.Node]:
    """A sequence's statements, with any plain (non-call) sequence inside it flattened."""
    out: list[ir.Node] = []
    for node in items:
        if isinstance(node, ir.Seq) and node.block is None:
            out.extend(statements(node.items))
        else:
            out.append(node)
    return out


def series(parts: list[Part]) -> Part:
    axis = max(p.axis for p in parts)
    y = 0.0
    out: Part | None = None
    for part in parts:
        placed = part.moved(axis - part.axis, y)
        if out is None:
            out = placed
        else:
            x1, y1 = out.exit
            out.edges += [(x1, y1, x2, y2) for x2, y2 in placed.entries]
            out.labels.append(_shape_label(x1, y1, out.output))
            out.add(placed)
            out.exit, out.output = placed.exit, placed.output
        y += part.height + ROW_GAP
    assert out is not None
    out.width = max(axis - p.axis + p.width for p in parts)
    out.height = y - ROW_GAP
    out.axis = axis
    return out


def _parallel(branches: list[Part | None], join: Part, input_shape: str, keep_first_axis: bool) -> Part:
    """Branches side by side, top-aligned, each edge leaving one ending in `join` below them all."""
    tallest = max((p.height for p in branches if p is not None), default=0.0)
    x = 0.0
    placed: list[tuple[Part, bool]] = []
    for part in branches:
        identity = part is None
        if identity:  # `branch {}` or the identity shortcut: a line down its own column
            mid = IDENTITY_W / 2
            part = Part(IDENTITY_W, tallest, mid, [(mid, 0)], (mid, tallest), input_shape,
                        edges=[(mid, 0, mid, tallest)] if tallest else [])
        placed.append((part.moved(x, 0), identity))
        x += part.width + COL_GAP
    width = x - COL_GAP
    centre = placed[0][0].axis if keep_first_axis else width / 2
    join_x = centre - join.width / 2
    shift = max(0.0, -join_x)
    join_part = join.moved(join_x + shift, tallest + ROW_GAP)
    out = Part(max(width + shift, join_x + shift + join.width), join_part.exit[1], centre + shift, [],
               join_part.exit, join_part.output)
    for part, identity in placed:
        part = part.moved(shift, 0)
        out.add(part)
        out.entries += part.entries
        x1, y1 = part.exit
        if not identity:
            out.labels.append(_shape_label(x1, y1, part.output))
        if y1 < tallest:  # down its own column first, so the edge does not cross the taller branches
            out.edges.append((x1, y1, x1, tallest))
            y1 = tallest
        out.edges += [(x1, y1, x2, y2) for x2, y2 in join_part.entries]
    out.add(join_part)
    return out


# ---------------------------------------------------------------- SVG


@dataclass
class Drawing:
    """An SVG diagram and the boxes in it that the report can open."""

    svg: ET.Element
    expandable: list[tuple[str, Item]]  # (element id, item)

    def text(self) -> str:
        return ET.tostring(self.svg, encoding="unicode")


def render(layout: Layout, part: Part, *, prefix: str = "d", title: str | None = None,
           legend: bool = True) -> Drawing:
    """`part` as an SVG element: one `<g class="node">` per box, edges with their shape labels, a
    legend of the kinds drawn. `prefix` keeps ids unique when several drawings share a page."""
    top = MARGIN + (24 if title else 0)
    kinds = list(dict.fromkeys(item.kind for item, *_ in part.boxes))
    legend_h = 22 + 18 * len(kinds) if legend else 0
    width = max(part.width + 2 * MARGIN + (LEGEND_W if legend else 0), 2 * MARGIN + 8.5 * len(title or ""))
    height = max(part.height + top + MARGIN + 20, legend_h + top + MARGIN)
    svg = ET.Element("svg", {
        "xmlns": "http://www.w3.org/2000/svg", "class": "cnndsl-diagram", "width": _n(width), "height": _n(height),
        "viewBox": f"0 0 {_n(width)} {_n(height)}", "font-family": "DejaVu Sans Mono, Menlo, Consolas, monospace",
        "font-size": "12"})
    defs = ET.SubElement(svg, "defs")
    marker = ET.SubElement(defs, "marker", {"id": f"{prefix}-arrow", "viewBox": "0 0 8 8", "refX": "8", "refY": "4",
                                            "markerWidth": "7", "markerHeight": "7", "orient": "auto"})
    ET.SubElement(marker, "path", {"d": "M0,0 L8,4 L0,8 z", "fill": "#555"})
    if title:
        ET.SubElement(svg, "text", {"x": _n(MARGIN), "y": _n(MARGIN + 12), "font-size": "14",
                                    "font-weight": "bold"}).text = title
    body = part.moved(MARGIN, top)
    edges = ET.SubElement(svg, "g", {"class": "edges", "fill": "none", "stroke": "#555", "stroke-width": "1.3"})
    box_tops = {(round(x + w / 2, 3), round(y, 3)) for _, x, y, w, _ in body.boxes}
    for x1, y1, x2, y2 in body.edges:
        attrs = {"d": _curve(x1, y1, x2, y2)}
        if (round(x2, 3), round(y2, 3)) in box_tops:
            attrs["marker-end"] = f"url(#{prefix}-arrow)"
        ET.SubElement(edges, "path", attrs)
    labels = ET.SubElement(svg, "g", {"class": "shapes", "fill": "#666", "font-size": "10"})
    for x, y, text in body.labels:
        ET.SubElement(labels, "text", {"x": _n(x), "y": _n(y)}).text = text
    expandable = []
    nodes = ET.SubElement(svg, "g", {"class": "nodes"})
    for index, (item, x, y, w, h) in enumerate(body.boxes):
        element = _box(layout, nodes, item, x, y, w, h)
        if item.expandable:
            element_id = f"{prefix}-{index}"
            element.set("data-detail", element_id)
            element.set("tabindex", "0")  # the report opens it by click or by keyboard
            element.set("role", "button")
            expandable.append((element_id, item))
    if legend:
        _legend(svg, kinds, body.width + 2 * MARGIN, top)
    return Drawing(svg, expandable)


def _box(layout: Layout, parent: ET.Element, item: Item, x: float, y: float, w: float, h: float) -> ET.Element:
    if not item.nodes:  # the input and output terminals
        group_ = ET.SubElement(parent, "g", {"class": "terminal"})
        ET.SubElement(group_, "rect", {"x": _n(x), "y": _n(y), "width": _n(w), "height": _n(h), "rx": _n(h / 2),
                                       "fill": kind_colour("input"), "stroke": "#888"})
        _text(group_, x + w / 2, y + h / 2 + 4, item.label, anchor="middle")
        return group_
    params, macs, layers = layout.figures(item)
    first, last = item.nodes[0], item.nodes[-1]
    shape = layout.shapes.of(last)
    attrs = {"class": "node" + (" expandable" if item.expandable else ""), "data-name": first.name,
             "data-kind": item.kind, "data-count": str(len(item.nodes)), "data-line": str(source_line(first)),
             "data-output": fmt(shape.output), "data-params": str(params), "data-macs": str(macs)}
    group_ = ET.SubElement(parent, "g", attrs)
    tooltip = [item.label, f"{first.name}" + (f" ... {last.name}" if len(item.nodes) > 1 else ""),
               f"line {source_line(first)}: {fmt(layout.shapes.of(first).input)} -> {fmt(shape.output)}",
               f"{params:,} parameters, {macs:,} MACs"]
    if isinstance(first, ir.Seq):
        tooltip.insert(1, first.text())
    ET.SubElement(group_, "title").text = "\n".join(tooltip)
    fill, stroke = kind_colour(item.kind), "#444"
    if item.expandable and len(item.nodes) > 1:  # a stack: the copies behind the first
        for offset in (6, 3):
            ET.SubElement(group_, "rect", {"x": _n(x + offset), "y": _n(y + offset), "width": _n(w),
                                           "height": _n(h), "rx": "5", "fill": fill, "stroke": stroke})
    rect = {"x": _n(x), "y": _n(y), "width": _n(w), "height": _n(h), "rx": "5" if item.kind != "residual" else "13",
            "fill": fill, "stroke": stroke}
    if item.expandable:
        rect["stroke-width"] = "1.8"
    ET.SubElement(group_, "rect", rect)
    label = item.label if len(item.label) <= MAX_LABEL else item.label[: MAX_LABEL - 1] + "\u2026"
    if item.expandable:
        _text(group_, x + w / 2, y + 16, label, anchor="middle", weight="bold")
        _text(group_, x + w / 2, y + 32, layout.subtitle(item), anchor="middle",
              size="10", fill="#555")
    else:
        _text(group_, x + w / 2, y + h / 2 + 4, label, anchor="middle")
    return group_


def source_line(node: ir.Node) -> int:
    return node.calls[-1].line if isinstance(node, ir.Seq) and node.calls else node.span.line


def _text(parent: ET.Element, x: float, y: float, text: str, anchor: str = "start", weight: str | None = None,
          size: str | None = None, fill: str | None = None) -> None:
    attrs = {"x": _n(x), "y": _n(y), "text-anchor": anchor}
    if weight:
        attrs["font-weight"] = weight
    if size:
        attrs["font-size"] = size
    if fill:
        attrs["fill"] = fill
    ET.SubElement(parent, "text", attrs).text = text


def _legend(svg: ET.Element, kinds: list[str], x: float, y: float) -> None:
    legend = ET.SubElement(svg, "g", {"class": "legend"})
    _text(legend, x, y + 10, "legend", weight="bold")
    for index, kind in enumerate(kinds):
        top = y + 22 + 18 * index
        ET.SubElement(legend, "rect", {"x": _n(x), "y": _n(top), "width": "14", "height": "12", "rx": "2",
                                       "fill": kind_colour(kind), "stroke": "#444"})
        _text(legend, x + 20, top + 10, KIND_STYLE.get(kind, (None, kind))[1])


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    if abs(x1 - x2) < 0.5:
        return f"M{_n(x1)},{_n(y1)} L{_n(x2)},{_n(y2)}"
    mid = (y1 + y2) / 2
    return f"M{_n(x1)},{_n(y1)} C{_n(x1)},{_n(mid)} {_n(x2)},{_n(mid)} {_n(x2)},{_n(y2)}"


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def title_of(report: Report) -> str:
    return (f"{report.network}: input {fmt(report.input)}, {report.params:,} parameters, "
            f"{human(report.macs)} MACs")


def drawing(net, prefix: str = "d") -> tuple[Layout, Drawing]:
    """The whole network's diagram (`net` an `api.Net`), with the layout it was drawn from."""
    layout = Layout(net.ir, net.report)
    return layout, render(layout, layout.network_part(), prefix=prefix, title=title_of(net.report))


def svg_bytes(net) -> bytes:
    """The diagram as a standalone SVG file."""
    _, result = drawing(net)
    head = (f'<?xml version="1.0" encoding="UTF-8"?>\n<!-- generated by cnndsl draw from '
            f'{_comment(Path(net.source.path).name)} -->\n')
    return (head + result.text() + "\n").encode()


def _comment(text: str) -> str:
    return text.replace("--", "- -")  # `--` may not appear inside an XML comment


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Output .svg (default: next to FILE).")
@click.option("--force", is_flag=True, help="Replace OUT even if cnndsl did not write it.")
@click.option("--input", "input_shape", help="Draw at another input shape, e.g. 3x64x64.")
def draw(file: str, out: str | None, force: bool, input_shape: str | None) -> None:
    """Draw FILE's architecture as an SVG diagram: block calls and repeats as one box each."""
    from .cli import _print_warnings, _shape, _user_errors

    @_user_errors
    def run() -> None:
        from .api import load
        from .outputs import write_output

        net = load(file, _shape(input_shape))
        _print_warnings(net)
        path = Path(out) if out is not None else outputs.beside_source(net, ".svg")
        write_output(path, svg_bytes(net), net, force=force)
        click.echo(f"wrote {path}")

    run()
