"""`cnndsl fmt`: one canonical layout for a program, from its token stream.

The text is lexed by the parser itself (lark's interactive parser over the contextual lexer, so
`pad1` is the keyword and a number exactly where the parser reads it so), and written back token by
token: every token keeps its text (numbers as written), only the space between tokens, the `;`
separators, blank lines, indentation and the column of trailing comments change. The rules are in
docs/language.md, "Layout". The result is lexed again and must give the same tokens and comments:
formatting never changes what a program means.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import click

from .cli import EXIT_USER_ERROR, _user_errors
from .errors import CnnDslError, Source
from .parser import _parser, parse_program

__all__ = ["format_text", "fmt"]

INDENT = "  "
COMMENT_GAP = 2  # spaces at least between code and its trailing comment
# Options the docs let a user write glued to a whole number (`pad1`, `dil2`, `groups4`, `outpad1`, `x2`).
GLUED = frozenset({"pad", "dil", "groups", "outpad", "x"})
OPERATORS = frozenset({"+", "-", "*", "/", "//"})
_SEP_PART = re.compile(r";|\r?\n|#[^\n]*")
_WHOLE = re.compile(r"\d+")


@dataclass
class _Token:
    kind: str  # lark's terminal name
    text: str
    start: int
    end: int
    name_ok: bool  # could a NAME be read here (then `x2` would be a name, not `x 2`)


@dataclass
class _Line:
    indent: int
    code: str = ""
    comment: str | None = None
    written: int = 0  # where the comment's '#' was in its original line (0-based)
    hanging: bool = False  # a comment-only line continuing the trailing comment above it


def lex(text: str) -> list[_Token]:
    """Every token the parser reads, `_SEP` (separators and comments) included.
    Raises lark's UnexpectedInput on a syntax error (callers parse first for a clear message)."""
    interactive = _parser().parse_interactive(text)
    tokens = []
    for token in interactive.iter_parse():
        tokens.append(_Token(token.type, str(token), token.start_pos, token.end_pos,
                             "NAME" in interactive.choices()))
    interactive.feed_eof()
    return tokens


def _operand_end(token: _Token) -> bool:
    return token.kind in ("NAME", "NUMBER", "SIZE", "DIMS", "MULT") or token.text == ")"


def _space(before: _Token, token: _Token, depth: int) -> str:
    """What goes between two tokens on one line."""
    t, b = token.text, before.text
    if t in (")", ",") or b in ("(", ":") or b in OPERATORS:
        return ""
    if t == "(":
        return "" if before.kind == "NAME" else " "
    if t in OPERATORS or t == ":":
        return "" if _operand_end(before) else " "
    if t == "=" or b == "=":
        return "" if depth else " "  # `s=2` in a call, `expect params = 5` at the top
    if t == "}" and b == "{":
        return ""
    if b in GLUED and token.kind == "NUMBER" and _WHOLE.fullmatch(t) and not before.name_ok:
        return ""
    return " "


def _column(text: str, pos: int) -> int:
    return pos - (text.rfind("\n", 0, pos) + 1)


class _Writer:
    def __init__(self, text: str, tokens: list[_Token]):
        self.text = text
        self.tokens = tokens
        self.lines: list[_Line | None] = []  # None: a blank line
        self.line = _Line(0)
        self.indent = 0
        self.break_pending = False
        self.semicolon = False
        self.before: _Token | None = None  # the last code token written
        self.depth = 0  # parentheses
        self.braces: list[bool] = []  # per open brace: is it laid out over several lines
        self.multiline = self._multiline_braces()

    def _multiline_braces(self) -> dict[int, bool]:
        """For each '{' (by token index): does its content span lines in the source."""
        out, stack = {}, []
        for index, token in enumerate(self.tokens):
            if token.text == "{":
                stack.append(index)
            elif token.text == "}" and stack:
                opened = stack.pop()
                out[opened] = "\n" in self.text[self.tokens[opened].end:token.start]
        return out

    # ------------------------------------------------------------ lines
    def flush(self) -> None:
        if self.line.code or self.line.comment is not None:
            self.lines.append(self.line)
        self.line = _Line(self.indent)
        self.break_pending = False
        self.semicolon = False
        self.before = None

    def blank(self) -> None:
        if self.lines and self.lines[-1] is not None and not self.lines[-1].code.endswith("{"):
            self.lines.append(None)

    def write(self, token: _Token, continued: bool) -> None:
        if self.break_pending:
            self.flush()
        if continued and self.line.code:
            if self.semicolon:  # `a; \` + newline: the statement has ended, the next one starts a line
                self.flush()
            else:
                self.line.code += " \\"
                self.flush()
                self.line.indent = self.indent + 2
        if token.text == "}":
            self.semicolon = False
            if self.braces.pop():
                self.flush()
                self.indent -= 1
                if self.lines and self.lines[-1] is None:
                    self.lines.pop()  # no blank line before a closing brace
                self.line = _Line(self.indent)
        if self.before is not None and self.line.code:
            space = "; " if self.semicolon and token.text != "}" else _space(self.before, token, self.depth)
            self.line.code += space
        self.semicolon = False
        self.line.code += token.text
        self.before = token
        if token.text == "(":
            self.depth += 1
        elif token.text == ")":
            self.depth = max(self.depth - 1, 0)
        elif token.text == "{":
            multiline = self.multiline.get(self.index, False)
            self.braces.append(multiline)
            if multiline:
                self.indent += 1
                self.break_pending = True

    def separator(self, token: _Token, following: _Token | None) -> None:
        parts = _SEP_PART.findall(token.text)
        comments = any(p.startswith("#") for p in parts)
        newlines = any(p.endswith("\n") for p in parts)
        if (not comments and self.before is not None and self.before.text == "}"
                and following is not None and following.kind == "SHORTCUT"):
            return  # `} shortcut {` on one line: the shortcut's own form
        if not newlines and not comments:
            if self.line.code and not self.line.code.endswith("{") and following is not None:
                self.semicolon = True
            return
        # The separator's source lines: the first is the one its statement ends on.
        lines: list[list[str]] = [[]]
        for part in parts:
            lines[-1].append(part)
            if part.endswith("\n"):
                lines.append([])
        offsets = [m.start() for m in _SEP_PART.finditer(token.text)]
        index = 0
        blanks = 0
        trailing: _Line | None = None  # the code line whose comment a hanging comment continues
        for number, source_line in enumerate(lines):
            comment = next((p for p in source_line if p.startswith("#")), None)
            if comment is not None:
                column = _column(self.text, token.start + offsets[index + source_line.index(comment)])
                comment = comment.rstrip()
                if number == 0 and self.line.code:
                    self.line.comment, self.line.written = comment, column
                    trailing = self.line
                else:
                    self.flush()
                    if blanks:
                        self.blank()
                    hanging = blanks == 0 and trailing is not None and trailing.written == column
                    self.lines.append(_Line(self.indent, "", comment, column, hanging=hanging))
                    trailing = trailing if hanging else None
                blanks = 0
            elif number > 0 and source_line and source_line[-1].endswith("\n"):
                blanks += 1
            index += len(source_line)
        self.flush()
        if blanks and following is not None and following.text != "}":
            self.blank()

    def run(self) -> str:
        tokens = self.tokens
        previous_end = 0
        for index, token in enumerate(tokens):
            self.index = index
            if token.kind == "_SEP":
                following = next((t for t in tokens[index + 1:] if t.kind != "_SEP"), None)
                self.separator(token, following)
            else:
                continued = "\\" in self.text[previous_end:token.start]
                self.write(token, continued)
            previous_end = token.end
        self.flush()
        while self.lines and self.lines[-1] is None:
            self.lines.pop()
        return _render(self.lines)


def _render(lines: list[_Line | None]) -> str:
    out: list[str] = []
    group: list[_Line] = []

    def close_group() -> None:
        if not group:
            return
        width = max(len(INDENT * g.indent + g.code) for g in group if g.code)
        column = max(group[0].written, width + COMMENT_GAP)  # every comment in the group was written there
        for g in group:
            out.append((INDENT * g.indent + g.code if g.code else "").ljust(column) + g.comment)
        group.clear()

    for line in lines:
        if line is not None and line.comment is not None and (line.code or (line.hanging and group)):
            if group and line.written != group[0].written:
                close_group()  # aligned is what the author aligned: a comment written elsewhere starts a group
            group.append(line)
            continue
        close_group()
        if line is None:
            out.append("")
        elif line.code:
            out.append(INDENT * line.indent + line.code)
        else:
            out.append(INDENT * line.indent + line.comment)
    close_group()
    return "\n".join(out) + "\n" if out else ""


def _meaning(tokens: list[_Token]) -> tuple[list[tuple[str, str]], list[str]]:
    code = [(t.kind, t.text) for t in tokens if t.kind != "_SEP"]
    comments = [c.rstrip() for t in tokens if t.kind == "_SEP" for c in re.findall(r"#[^\n]*", t.text)]
    return code, comments


def format_text(text: str, path: str = "<string>") -> str:
    """`text` in the canonical layout. Raises CnnSyntaxError (with `path`) if it does not parse."""
    parse_program(text, Source(text, path))
    tokens = lex(text)
    formatted = _Writer(text, tokens).run()
    if _meaning(lex(formatted)) != _meaning(tokens):  # a bug in the rules above, never the user's
        raise AssertionError(f"cnndsl fmt would change the tokens of {path}")
    return formatted


# ---------------------------------------------------------------- the command


@click.command(name="fmt")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--check", is_flag=True, help="Change nothing; list the files that would change, exit 1 if any.")
@_user_errors
def fmt(files: tuple[str, ...], check: bool) -> None:
    """Lay out .cnn files the one canonical way; '-' reads stdin and writes stdout."""
    from pathlib import Path

    from .api import read_argument
    from .outputs import write_atomic

    changed = failed = 0
    for path in files:
        try:
            text = read_argument(path)  # a byte-order mark is dropped, and not written back
            formatted = format_text(text, "<stdin>" if path == "-" else path)
        except CnnDslError as err:  # this file is reported and left alone; the others are still formatted
            failed += 1
            for each in err.errors:
                click.echo(each.render(), err=True)
            continue
        if path == "-" and not check:
            click.echo(formatted, nl=False)
        elif formatted != text:
            changed += 1
            if check:
                click.echo(f"would reformat {path}")
            else:
                write_atomic(Path(path), formatted.encode("utf-8"))
                click.echo(f"reformatted {path}", err=True)
    if failed and len(files) > 1:
        click.echo(f"{failed} of {len(files)} files not formatted: "
                   f"{'its' if failed == 1 else 'their'} errors are above", err=True)
    if failed or (check and changed):
        sys.exit(EXIT_USER_ERROR)
