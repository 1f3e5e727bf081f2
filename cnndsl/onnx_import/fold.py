"""Pass (d): repeated subtrees -> `block` definitions and calls, runs of equal calls -> `x N`.

A *unit* is a construct (residual, concat, add, mul) with the activations right after it (ResNet's
relu after the add). Units of the same template — the same statements and options, whatever
their numbers — become one block. Each number that differs between the calls becomes a
parameter, unless it is a multiple or a fraction of one already found (`-> 4*c`), the padding a
kernel parameter implies (`pad (k-1)/2`) or the channels entering the call (`in_c`). A residual
with a projection and one without fit one block, as the language builds a shortcut only where
the body changes the shape; the calls without one leave the shortcut's numbers free. Units are
found at every depth and inner ones folded first, so a block may call another (its arguments
then being the caller's parameters, found the same way).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields

from .. import ir
from ..kinds.base import Padding
from .layers import Branching, Call, Item, Layer

SLOTS: dict[type, tuple[str, ...]] = {
    ir.Conv: ("out_channels", "kernel", "stride", "padding", "groups", "dilation"),
    ir.Deconv: ("out_channels", "kernel", "stride", "padding"),
    ir.Pool: ("kernel", "stride", "padding"),
    ir.Linear: ("out_features",),
    ir.Channels: ("start", "stop"),
    ir.Shuffle: ("groups",),
    ir.GroupNorm: ("groups",),
}
ROLE = {"out_channels": "c", "out_features": "c", "start": "c", "stop": "c", "kernel": "k", "stride": "s",
        "padding": "p", "groups": "g", "dilation": "d"}
NAMES = {"residual": "resblock", "concat": "mixed", "concat crop": "level", "add": "sum", "mul": "gated"}
FACTORS = range(2, 9)
TRAILING = (ir.Activation, ir.Shuffle)  # what a unit takes after its construct (ResNet's relu)


@dataclass(frozen=True, eq=False)
class BlockDef:
    name: str
    params: tuple[tuple[str, int | None], ...]  # (name, default or None)
    body: tuple[Item, ...]
    exprs: dict[int, dict[str, str]]  # id(layer in body) -> field -> expression


def _slot(node: ir.Node, field: str) -> int | None:
    """A field's number where it can be a parameter: square pairs, even padding, plain ints."""
    value = getattr(node, field)
    if isinstance(value, Padding):
        even = not value.same and value.top == value.bottom == value.left == value.right
        return value.top if even else None
    if isinstance(value, tuple):
        return value[0] if value[0] == value[1] else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _fields(node: ir.Node) -> tuple[str, ...]:
    return tuple(f for f in SLOTS.get(type(node), ()) if _slot(node, f) is not None)


def _item_fields(item: Layer | Call) -> tuple[str, ...]:
    return tuple(name for name, _ in item.args) if isinstance(item, Call) else _fields(item.node)


def _item_slot(item: Layer | Call, field: str) -> int | None:
    return dict(item.args)[field] if isinstance(item, Call) else _slot(item.node, field)


def signature(item: Item):
    """What must agree for two items to be one template: everything but the slot numbers (and a
    residual's shortcut, checked apart)."""
    if isinstance(item, Layer):
        slots = _fields(item.node)
        literal = tuple((f.name, getattr(item.node, f.name)) for f in fields(item.node)
                        if f.name not in slots and f.name not in ("name", "span", "calls"))
        return ("layer", type(item.node).__name__, literal, slots)
    if isinstance(item, Call):
        return ("call", item.block, item.count, tuple(name for name, _ in item.args))
    assert isinstance(item, Branching)
    return ("construct", item.kind, item.always, tuple(tuple(signature(i) for i in b) for b in item.branches))


def _walk(items, prefix=()):
    """(path, layer or call) for every layer and block call, the shortcut's too."""
    for index, item in enumerate(items):
        if isinstance(item, (Layer, Call)):
            yield prefix + (index,), item
        elif isinstance(item, Branching):
            for b, branch in enumerate(item.branches):
                yield from _walk(branch, prefix + (index, "b", b))
            if item.shortcut is not None:
                yield from _walk(item.shortcut, prefix + (index, "s"))


def _shortcuts(items, prefix=()):
    for index, item in enumerate(items):
        if isinstance(item, Branching):
            if item.kind == "residual":
                yield prefix + (index,), item.shortcut
            for b, branch in enumerate(item.branches):
                yield from _shortcuts(branch, prefix + (index, "b", b))


def _template(occurrences: list[tuple[Item, ...]]) -> tuple[Item, ...]:
    """The first occurrence, with each residual's shortcut taken from an occurrence that has one."""
    out = []
    for position, item in enumerate(occurrences[0]):
        if not isinstance(item, Branching):
            out.append(item)
            continue
        others = [occ[position] for occ in occurrences]
        branches = tuple(_template([o.branches[b] for o in others]) for b in range(len(item.branches)))
        having = [o.shortcut for o in others if o.shortcut is not None]
        shortcut = _template(having) if having else None
        out.append(Branching(item.kind, branches, shortcut, item.always, item.in_shape, item.out_shape))
    return tuple(out)


def _expression(values: list[int | None], params: list[tuple[str, list[int]]], field: str) -> str | None:
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    for name, vector in params:
        if all(v == vector[i] for i, v in known):
            return name
    for name, vector in params:
        for k in FACTORS:
            if all(v == k * vector[i] for i, v in known):
                return f"{k}*{name}"
            if all(v * k == vector[i] for i, v in known):
                return f"{name}/{k}"
        if field == "padding" and all(2 * v + 1 == vector[i] for i, v in known):
            return f"({name}-1)/2"
    return None


def _fold_group(name: str, units: list[tuple[Item, ...]]) -> tuple[BlockDef, list[tuple[tuple[str, int], ...]]] | None:
    for path_shortcuts in zip(*(list(_shortcuts(u)) for u in units), strict=True):
        present = {repr([signature(i) for i in s]) for _, s in path_shortcuts if s is not None}
        if len(present) > 1:
            return None
    body = _template(units)
    layers = dict(_walk(body))
    per_unit = [dict(_walk(u)) for u in units]
    params: list[tuple[str, list[int]]] = []
    defaults: dict[str, int] = {}
    in_c = [u[0].in_shape[0] for u in units]
    exprs: dict[int, dict[str, str]] = {}
    used_names: Counter = Counter()
    for path, layer in layers.items():
        for field in _item_fields(layer):
            values = [_item_slot(p[path], field) if path in p else None for p in per_unit]
            if len({v for v in values if v is not None}) <= 1:
                continue
            expr = _expression(values, params, field) or _expression(values, [("in_c", in_c)], field)
            if expr is None:
                role = ROLE.get(field, field.rstrip("0123456789"))
                used_names[role] += 1
                expr = role if used_names[role] == 1 else f"{role}{used_names[role]}"
                known = [v for v in values if v is not None]
                if role == "s" and 1 in known:
                    defaults[expr] = 1
                fill = defaults.get(expr, Counter(known).most_common(1)[0][0])
                params.append((expr, [fill if v is None else v for v in values]))
            exprs.setdefault(id(layer), {})[field] = expr
    ordered = [p for p in params if p[0] not in defaults] + [p for p in params if p[0] in defaults]
    block = BlockDef(name, tuple((p, defaults.get(p)) for p, _ in ordered), body, exprs)
    args = [tuple((p, vector[i]) for p, vector in ordered) for i in range(len(units))]
    return block, args


def _units(items: tuple[Item, ...]) -> list[tuple[int, int]]:
    """(start, end) of each unit of a sequence: a construct and the activations and shuffles after it."""
    units, index = [], 0
    while index < len(items):
        if isinstance(items[index], Branching):
            end = index + 1
            while end < len(items) and isinstance(items[end], Layer) and isinstance(items[end].node, TRAILING):
                end += 1
            units.append((index, end))
            index = end
        else:
            index += 1
    return units


def _sequences(items: tuple[Item, ...]):
    """The sequence and every branch and shortcut inside it, at any depth."""
    yield items
    for item in items:
        if isinstance(item, Branching):
            for branch in item.branches:
                yield from _sequences(branch)
            if item.shortcut is not None:
                yield from _sequences(item.shortcut)


class _Folder:
    """Blocks for the groups of equal units at every depth; a unit inside another is folded first,
    so the outer block calls the inner one (a gate inside a residual block)."""

    def __init__(self, tree: tuple[Item, ...]):
        self.groups: dict = {}
        self.key: dict[int, tuple] = {}  # id(a unit's first item) -> its group
        for sequence in _sequences(tree):
            for start, end in _units(sequence):
                unit = tuple(sequence[start:end])
                key = tuple(signature(i) for i in unit)
                self.groups.setdefault(key, []).append(unit)
                self.key[id(unit[0])] = key
        self.blocks: dict = {}
        self.order: list[BlockDef] = []
        self.named: Counter = Counter()

    def block(self, key):
        """(BlockDef, {id(unit's first item): args}) for a group of two or more units, else None."""
        if key not in self.blocks:
            self.blocks[key] = None
            members = self.groups[key]
            if len(members) >= 2:
                kind = members[0][0].kind
                self.named[kind] += 1
                name = NAMES[kind] + ("" if self.named[kind] == 1 else str(self.named[kind]))
                folded = _fold_group(name, [self.inside(unit) for unit in members])
                if folded is not None:
                    block, args = folded
                    self.blocks[key] = (block, {id(u[0]): a for u, a in zip(members, args, strict=True)})
                    self.order.append(block)
        return self.blocks[key]

    def inside(self, items: tuple[Item, ...]) -> tuple[Item, ...]:
        """The items with the sequences inside their constructs folded (not the items themselves)."""
        out = []
        for item in items:
            if isinstance(item, Branching):
                item = Branching(item.kind, tuple(self.rewrite(b) for b in item.branches),
                                 self.rewrite(item.shortcut) if item.shortcut is not None else None, item.always,
                                 item.in_shape, item.out_shape)
            out.append(item)
        return tuple(out)

    def rewrite(self, items: tuple[Item, ...], runs: bool = False) -> tuple[Item, ...]:
        """The sequence with its units as calls (equal calls in a row as one `x N` where `runs`)."""
        calls = {}
        for start, end in _units(items):
            entry = self.block(self.key[id(items[start])])
            if entry is not None:
                block, args = entry
                calls[start] = (end, Call(block.name, args[id(items[start])], 1, tuple(items[start:end]),
                                          items[start].in_shape))
        body: list[Item] = []
        index = 0
        while index < len(items):
            if index not in calls:
                body.extend(self.inside(items[index:index + 1]))
                index += 1
                continue
            end, call = calls[index]
            last = body[-1] if body else None
            if runs and isinstance(last, Call) and (last.block, last.args) == (call.block, call.args):
                body[-1] = Call(last.block, last.args, last.count + 1, last.expanded + call.expanded, last.in_shape)
            else:
                body.append(call)
            index = end
        return tuple(body)


def fold(tree: tuple[Item, ...]) -> tuple[tuple[BlockDef, ...], tuple[Item, ...]]:
    """Block definitions (a called block before its callers) and the body that calls them."""
    folder = _Folder(tree)
    body = folder.rewrite(tree, runs=True)
    return tuple(folder.order), body
