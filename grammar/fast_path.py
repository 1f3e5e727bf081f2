"""What cnndsl's fast parser needs from the grammar beyond lark's tables, generated with them into
the parser module (`python -m cnndsl.grammar`): the reduce action of every rule, as Python code, and
the characters each terminal's tokens can start with. Build time only: `cnndsl.parser` reads the
result (see its "parsing" section for the scheme).

The parser's stack holds one entry per symbol: (value, line, column, end_line, end_column). A
token's value is the token where some rule keeps its terminal (`KEPT_TERMINALS`), else None; a rule's
value is what its `_ToSyntax` method returns, or for an inlined rule (`_stmt`, a `x*` repetition)
the list of its kept children, which its parent splices in as lark's tree builder would. The
positions are the rule's span, from its first token to its last (None for an empty rule, whose
span is Span(0, 0)). Generated per rule, an action knows which children it keeps, which it splices
and which child starts and ends its span: nothing is tested while parsing that the grammar decides.
A rule whose value is its one child's (`_atom: number`, `?expr: _sum`) gets no action (None): the
parser only changes state. Rules whose actions differ only in the method they call share the code:
`shape_N(method)` makes the action of each.
"""

from __future__ import annotations

import re
import re._constants as op  # the regex's own parse: no second reading of the regex syntax to keep true
import re._parser


def kept_children(rule) -> tuple[int, ...]:
    """The indices of the children lark's tree builder keeps: all but filtered-out tokens (keywords,
    `_SEP`), unless the rule keeps every token (`!rule`)."""
    return tuple(i for i, symbol in enumerate(rule.expansion)
                 if rule.options.keep_all_tokens or not (symbol.is_term and symbol.filter_out))


def _passes_through(rule, keep: tuple[int, ...]) -> str | None:
    """"inline" for an inlined rule of one kept symbol (`_atom: number`), "collapse" for a `?rule` of
    one (`?expr: _sum`): both leave their child's value as it is, unless it is a spliced list."""
    if len(rule.expansion) != 1 or keep != (0,):
        return None
    if rule.origin.name.startswith("_"):
        return "inline"
    return "collapse" if rule.options.expand1 else None


def _facts(rules) -> tuple[set[str], dict[str, set[str]]]:
    """The rules that may span nothing, and what each rule's value may be: "list" (the children of
    an inlined rule, spliced by its parent) or "item" (anything else), or either."""
    nullable: set[str] = set()
    kinds: dict[str, set[str]] = {rule.origin.name: set() for rule in rules}
    changed = True
    while changed:  # fixed points of both
        changed = False
        for rule in rules:
            name, keep = rule.origin.name, kept_children(rule)
            if name not in nullable and all(not s.is_term and s.name in nullable for s in rule.expansion):
                nullable.add(name)
                changed = True
            if name.startswith("_") and len(keep) == 1:  # `_atom: "(" expr ")"`: the child's value
                child = rule.expansion[keep[0]]
                made = {"item"} if child.is_term else kinds[child.name]
            else:
                made = {"list"} if name.startswith("_") else {"item"}
            if not made <= kinds[name]:
                kinds[name] |= made
                changed = True
    return nullable, kinds


def _action(rule, nullable: set[str], kinds: dict[str, set[str]]) -> list[str] | None:
    """The body of the reduce action of `rule`, a function `reduce(c)` of the list of its children's
    entries returning the rule's entry, which calls `method` for the rule's value; None when the
    rule's value is its one child's."""
    expansion, name, keep = rule.expansion, rule.origin.name, kept_children(rule)
    inline, expand1 = name.startswith("_"), rule.options.expand1
    child_kinds = [{"item"} if s.is_term else kinds[s.name] for s in expansion]
    passes = _passes_through(rule, keep)
    if passes == "inline" or (passes == "collapse" and child_kinds[0] == {"item"}):
        return None
    size = len(expansion)
    lines = []
    if size:
        lines.append(f"    {''.join(f'c{i}, ' for i in range(size))}= c")
    if passes == "collapse":  # `?rule: _spliced`, and the child is a list of values
        return lines + ["    v = c0[0]",
                        "    if type(v) is not list: return c0",
                        "    if len(v) == 1: return (v[0], c0[1], c0[2], c0[3], c0[4])",
                        "    return (method(new_tuple(Span, c0[1:]), v), c0[1], c0[2], c0[3], c0[4])"]
    parts = []
    for i in keep if not (inline and len(keep) == 1) else ():
        if child_kinds[i] == {"item"}:
            parts.append(f"c{i}[0]")
        else:
            lines.append(f"    v{i} = c{i}[0]")
            if child_kinds[i] != {"list"}:
                lines.append(f"    if type(v{i}) is not list: v{i} = [v{i}]")
            parts.append(f"*v{i}")
    if inline and len(keep) == 1:  # `_atom: "(" expr ")"`: its value is its one child's, not spliced
        lines.append(f"    values = c{keep[0]}[0]")
    elif parts and parts[0].startswith("*"):
        # Reuse the first spliced list: a left-recursive `x*` grows one list, linear in its length.
        lines.append(f"    values = {parts[0][1:]}")
        if parts[1:]:
            lines.append(f"    values += [{', '.join(parts[1:])}]")
    else:
        lines.append(f"    values = [{', '.join(parts)}]")

    def edge(indices) -> str | None:  # the child that starts (ends) the span, if no empty one may
        for i in indices:
            if expansion[i].is_term or expansion[i].name not in nullable:
                return f"c{i}" if i == indices[0] else None
        return None

    first, last = edge(range(size)), edge(range(size - 1, -1, -1))
    if first and last:  # the common case, in as few steps as it takes
        if inline:
            return lines + [f"    return (values, {first}[1], {first}[2], {last}[3], {last}[4])"]
        lines.append(f"    span = new_tuple(Span, ({first}[1], {first}[2], {last}[3], {last}[4]))")
        if expand1:
            lines.append("    if len(values) == 1: return (values[0], span[0], span[1], span[2], span[3])")
        return lines + ["    return (method(span, values), span[0], span[1], span[2], span[3])"]
    else:
        lines += [f"    f = {first or 'first_entry(c)' if size else 'None'}",
                  f"    z = {last or 'last_entry(c)' if size else 'None'}",
                  "    if f is None:",
                  "        line = column = end_line = end_column = None",
                  "        span = Span(0, 0)",
                  "    else:",
                  "        line, column, end_line, end_column = f[1], f[2], z[3], z[4]",
                  "        span = new_tuple(Span, (line, column, end_line, end_column))"]
    if inline:
        lines.append("    return (values, line, column, end_line, end_column)")
        return lines
    if expand1:
        lines.append("    if len(values) == 1: return (values[0], line, column, end_line, end_column)")
    lines.append("    return (method(span, values), line, column, end_line, end_column)")
    return lines


def first_characters(regexp: str, flags: int = 0) -> str | None:
    """The ASCII characters a match of `regexp` can start with, in order, or None for "any" (also
    where this reading gives up: case-insensitive, back references, a regex matching nothing)."""
    def first(items) -> tuple[frozenset[str] | None, bool]:  # (characters, whether it may match empty)
        found: set[str] = set()
        for code, arg in items:
            if code is op.LITERAL:
                return frozenset(found | {chr(arg)}), False
            if code is op.IN:
                if any(c is op.NEGATE for c, _ in arg):
                    return None, False
                charset = re.compile(f"[{_charset(arg)}]")
                return frozenset(found | {ch for ch in _ASCII if charset.fullmatch(ch)}), False
            if code in (op.AT, op.ASSERT, op.ASSERT_NOT):
                continue  # zero width: the next item starts the match
            if code is op.SUBPATTERN:
                if arg[1] & re.IGNORECASE:
                    return None, False
                part, empty = first(arg[3])
            elif code is op.BRANCH:
                parts = [first(alternative) for alternative in arg[1]]
                if any(p is None for p, _ in parts):
                    return None, False
                part, empty = frozenset().union(*(p for p, _ in parts)), any(e for _, e in parts)
            elif code in (op.MAX_REPEAT, op.MIN_REPEAT, op.POSSESSIVE_REPEAT):
                part, empty = first(arg[2])
                empty = empty or arg[0] == 0
            elif code is op.ATOMIC_GROUP:
                part, empty = first(arg)
            else:
                return None, False
            if part is None:
                return None, False
            found |= part
            if not empty:
                return frozenset(found), False
        return frozenset(found), True

    parsed = re._parser.parse(regexp, flags)
    if (flags | parsed.state.flags) & re.IGNORECASE:
        return None
    characters, empty = first(list(parsed))
    return None if empty or characters is None else "".join(sorted(characters))


_ASCII = [chr(code) for code in range(128)]
_CATEGORIES = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s",
               "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W"}


def _charset(items) -> str:
    """A character class's items, from the regex's parse, written back as the class's body."""
    parts = []
    for code, arg in items:
        if code is op.LITERAL:
            parts.append(re.escape(chr(arg)))
        elif code is op.RANGE:
            parts.append(f"{re.escape(chr(arg[0]))}-{re.escape(chr(arg[1]))}")
        elif code is op.CATEGORY:
            parts.append(_CATEGORIES[str(arg)])
        else:
            raise AssertionError(f"unexpected item {code} in a character class")
    return "".join(parts)


def source(parser) -> list[str]:
    """The fast path's part of the generated parser module, for lark's `parser` of the grammar."""
    rules = parser.rules
    nullable, kinds = _facts(rules)
    kept = sorted({rule.expansion[i].name for rule in rules for i in kept_children(rule)
                   if rule.expansion[i].is_term})
    first = {t.name: first_characters(t.pattern.to_regexp(), parser.lexer_conf.g_regex_flags)
             for t in sorted(parser.terminals, key=lambda t: t.name)}
    shapes: dict[tuple[str, ...], int] = {}  # rules differing only in their method share one maker
    made = {}
    for rule in rules:
        action = _action(rule, nullable, kinds)
        if action is None:
            made[str(rule)] = "None"
            continue
        shape = shapes.setdefault(tuple(action), len(shapes))
        inline = rule.origin.name.startswith("_")
        made[str(rule)] = f"shape_{shape}({'None' if inline else 'transformer.' + str(rule.alias or rule.origin.name)})"
    lines = [
        "",
        "# cnndsl's fast path (grammar/fast_path.py explains these; cnndsl/parser.py reads them).",
        f"KEPT_TERMINALS = frozenset({kept!r})",
        "FIRST_CHARACTERS = {" + ",\n ".join(f"{name!r}: {chars!r}" for name, chars in first.items()) + "}",
        "",
        "",
        "def reduce_actions(transformer, Span, new_tuple, first_entry, last_entry):",
        '    """Each rule\'s reduce action (by `str(rule)`), calling `transformer`\'s method for the rule."""',
    ]
    for action, shape in shapes.items():
        lines += ["", f"    def shape_{shape}(method):", "        def reduce(c):",
                  *(f"        {line}" for line in action), "        return reduce"]
    lines += ["", "    return {"]
    lines += [f"        {key!r}: {value}," for key, value in made.items()]
    lines += ["    }"]
    return lines
