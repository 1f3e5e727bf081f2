"""The language server: LSP requests answered from `features.Analysis`, one per document version.

Each change re-analyses the whole document (parse, expand, analyze: the work `cnndsl analyze` does,
in this warm process) and publishes its diagnostics; hover, inlay hints and definitions read the
latest analysis. LSP positions are 0-based; cnndsl's spans 1-based. Columns are counted in
characters (exact for the ASCII a program is written in; LSP's UTF-16 units differ only past it).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from ..errors import Diagnostic, Span
from ..fmt import format_text
from .features import Analysis, completions

_KINDS = {"keyword": lsp.CompletionItemKind.Keyword, "block": lsp.CompletionItemKind.Function,
          "parameter": lsp.CompletionItemKind.Variable}


def _range(span: Span | None, lines: list[str]) -> lsp.Range:
    if span is None or span.line < 1:
        return lsp.Range(start=lsp.Position(line=0, character=0), end=lsp.Position(line=0, character=0))
    start = lsp.Position(line=span.line - 1, character=max(span.column - 1, 0))
    if span.end_line:
        return lsp.Range(start=start, end=lsp.Position(line=span.end_line - 1, character=max(span.end_column - 1, 0)))
    text = lines[span.line - 1] if span.line <= len(lines) else ""
    end = start.character + 1
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return lsp.Range(start=start, end=lsp.Position(line=start.line, character=end))


def _diagnostic(d: Diagnostic, uri: str, lines: list[str]) -> lsp.Diagnostic:
    message = "\n".join([d.message, *d.notes, *([f"fix: {d.hint}"] if d.hint else [])])
    related = [lsp.DiagnosticRelatedInformation(location=lsp.Location(uri=uri, range=_range(call, lines)),
                                                message="in this block call") for call in d.calls]
    severity = lsp.DiagnosticSeverity.Error if d.severity == "error" else lsp.DiagnosticSeverity.Warning
    return lsp.Diagnostic(range=_range(d.span, lines), message=message, severity=severity, source="cnndsl",
                          related_information=related or None)


def _version() -> str:
    try:
        return version("cnndsl")
    except PackageNotFoundError:  # pragma: no cover - a source checkout
        return "0"


def build() -> LanguageServer:
    server = LanguageServer("cnndsl", _version())
    analyses: dict[str, Analysis] = {}

    def analysis(uri: str) -> Analysis:
        document = server.workspace.get_text_document(uri)
        current = analyses.get(uri)
        if current is None or current.text != document.source:
            current = analyses[uri] = Analysis(document.source, document.path or uri)
        return current

    def located(params: lsp.TextDocumentPositionParams) -> tuple[Analysis, int, int]:
        """The document's analysis, and the position as cnndsl counts (1-based)."""
        return analysis(params.text_document.uri), params.position.line + 1, params.position.character + 1

    def publish(uri: str) -> None:
        result = analysis(uri)
        lines = result.lines
        server.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
            uri=uri, diagnostics=[_diagnostic(d, uri, lines) for d in result.diagnostics]))

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: lsp.DidOpenTextDocumentParams) -> None:
        publish(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: lsp.DidChangeTextDocumentParams) -> None:
        publish(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: lsp.DidCloseTextDocumentParams) -> None:
        analyses.pop(params.text_document.uri, None)
        server.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))

    @server.feature(lsp.TEXT_DOCUMENT_HOVER)
    def hover(params: lsp.HoverParams) -> lsp.Hover | None:
        result, line, column = located(params)
        if (found := result.hover(line, column)) is None:
            return None
        text, span = found
        return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text),
                         range=_range(span, result.lines))

    @server.feature(lsp.TEXT_DOCUMENT_INLAY_HINT)
    def inlay_hints(params: lsp.InlayHintParams) -> list[lsp.InlayHint]:
        result = analysis(params.text_document.uri)
        first, last = params.range.start.line + 1, params.range.end.line + 1
        return [lsp.InlayHint(position=lsp.Position(line=line - 1, character=column - 1), label=label,
                              kind=lsp.InlayHintKind.Type)
                for line, column, label in result.inlay_hints() if first <= line <= last]

    @server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[" ", "("]))
    def complete(params: lsp.CompletionParams) -> lsp.CompletionList:
        result, line, column = located(params)
        items = [lsp.CompletionItem(label, kind=_KINDS[kind], detail=detail)
                 for label, kind, detail in completions(result.text, line, column, result.blocks)]
        return lsp.CompletionList(is_incomplete=False, items=items)

    @server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
    def definition(params: lsp.DefinitionParams) -> lsp.Location | None:
        result, line, column = located(params)
        if (block := result.definition(line, column)) is None:
            return None
        return lsp.Location(uri=params.text_document.uri, range=_range(block.span, result.lines))

    @server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
    def formatting(params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
        from ..errors import CnnDslError

        text = server.workspace.get_text_document(params.text_document.uri).source
        try:
            formatted = format_text(text)
        except CnnDslError:
            return None  # the diagnostics already show why
        if formatted == text:
            return []
        lines = text.split("\n")
        end = lsp.Position(line=len(lines) - 1, character=len(lines[-1]))
        return [lsp.TextEdit(range=lsp.Range(start=lsp.Position(line=0, character=0), end=end), new_text=formatted)]

    return server
