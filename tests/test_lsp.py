"""`cnndsl lsp` over stdio, driven by pygls's own LanguageClient as an editor would drive it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

import cnndsl
from cnndsl.fmt import format_text

ROOT = Path(__file__).resolve().parent.parent
RESNET18 = (ROOT / "examples" / "resnet18.cnn").read_text(encoding="utf-8")
URI = "file:///tmp/resnet18.cnn"


def position_of(text: str, needle: str, occurrence: int = 0) -> lsp.Position:
    offset = -1
    for _ in range(occurrence + 1):
        offset = text.index(needle, offset + 1)
    line = text.count("\n", 0, offset)
    return lsp.Position(line, offset - (text.rfind("\n", 0, offset) + 1))


def change(client: LanguageClient, version: int, text: str) -> None:
    client.text_document_did_change(lsp.DidChangeTextDocumentParams(
        lsp.VersionedTextDocumentIdentifier(version=version, uri=URI),
        [lsp.TextDocumentContentChangeWholeDocument(text=text)]))


async def session(steps) -> dict:
    client = LanguageClient("cnndsl-test", "1")
    published: list[lsp.PublishDiagnosticsParams] = []
    arrived = asyncio.Event()

    @client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def on_diagnostics(params: lsp.PublishDiagnosticsParams) -> None:
        published.append(params)
        arrived.set()

    async def diagnostics() -> list[lsp.Diagnostic]:
        await asyncio.wait_for(arrived.wait(), 30)
        arrived.clear()
        return published[-1].diagnostics

    await client.start_io(sys.executable, "-m", "cnndsl.cli", "lsp")
    try:
        init = await asyncio.wait_for(client.initialize_async(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(), process_id=None)), 60)
        client.initialized(lsp.InitializedParams())
        return await steps(client, diagnostics, init)
    finally:
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()


def test_a_session_over_stdio():
    async def steps(client: LanguageClient, diagnostics, init) -> dict:
        out = {"capabilities": init.capabilities}
        doc = lsp.TextDocumentIdentifier(URI)
        client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            lsp.TextDocumentItem(uri=URI, language_id="cnndsl", version=1, text=RESNET18)))
        out["opened"] = await diagnostics()
        conv = position_of(RESNET18, "conv 3x3/s pad1")
        out["hover"] = await client.text_document_hover_async(
            lsp.HoverParams(doc, lsp.Position(conv.line, conv.character + 2)))
        out["hints"] = await client.text_document_inlay_hint_async(lsp.InlayHintParams(
            doc, lsp.Range(lsp.Position(0, 0), lsp.Position(30, 0))))
        call = position_of(RESNET18, "basic(128, s=2)")
        out["definition"] = await client.text_document_definition_async(lsp.DefinitionParams(doc, call))
        option = position_of(RESNET18, "pad3")
        out["options"] = await client.text_document_completion_async(lsp.CompletionParams(doc, option))
        start = position_of(RESNET18, "pool avg global")
        out["statements"] = await client.text_document_completion_async(lsp.CompletionParams(doc, start))
        # An edit with two mistakes: each is published with its range.
        broken = RESNET18.replace("basic(256)", "basic(256, t=3)").replace("fc 1000", "fc 1000 x q")
        change(client, 2, broken)
        out["broken"] = await diagnostics()
        messy = "input 3x8x8\nconv 3x3  pad 1 ->8 ;relu\n"
        change(client, 3, messy)
        out["messy"] = await diagnostics()
        out["format"] = await client.text_document_formatting_async(lsp.DocumentFormattingParams(
            doc, lsp.FormattingOptions(tab_size=2, insert_spaces=True)))
        return out

    out = asyncio.run(steps_with_timeout(steps))
    capabilities = out["capabilities"]
    assert capabilities.hover_provider and capabilities.definition_provider and capabilities.inlay_hint_provider
    assert capabilities.document_formatting_provider and capabilities.completion_provider
    assert list(out["opened"]) == []  # resnet18 is clean

    # hover on a statement in a block: one row per call site, with the figures of the analysis
    report = cnndsl.parse(RESNET18).analyze()
    convs = [row for row in report.layers if row.line == 4 and row.op == "conv"]
    assert len(convs) == 8
    hover = out["hover"].contents.value
    assert hover.count("| line ") == 8
    for row in convs:
        assert f"| `{row.node.text()}` | {'x'.join(map(str, row.output))} | {row.params:,} | {row.macs:,} |" in hover
    assert "`conv 3x3/2 pad1 -> 128 nobias` | 128x28x28 | 73,728 |" in hover  # 64*128*9: basic(128, s=2)

    # inlay hints: the output shape at the end of each line; in the block, one per distinct shape
    hints = {h.position.line + 1: h.label for h in out["hints"]}
    assert hints[14] == " → 64x112x112"
    assert hints[16] == " → 64x56x56"
    assert hints[21] == " → 1000"
    assert hints[4] == " → 64x56x56 | 128x28x28 | 256x14x14 | 512x7x7"

    assert out["definition"].range.start == lsp.Position(1, 0)  # `block basic(c, s=1) {` on line 2

    options = {item.label for item in out["options"].items}
    assert {"pad", "dil", "groups", "depthwise", "nobias"} <= options
    assert "conv" not in options and "basic" not in options
    statements = {item.label: item for item in out["statements"].items}
    assert {"conv", "pool", "residual", "relu", "expect", "block", "basic"} <= set(statements)
    assert statements["basic"].detail == "block basic(c, s)"

    # both mistakes, each at its place: the unknown parameter (line 18), the unknown name (line 21)
    broken = out["broken"]
    assert [(d.range.start.line + 1, d.severity, d.source) for d in broken] == [
        (18, lsp.DiagnosticSeverity.Error, "cnndsl"), (21, lsp.DiagnosticSeverity.Error, "cnndsl")]
    assert "'t'" in broken[0].message and "fix: " in broken[0].message and "'q'" in broken[1].message
    assert broken[1].range.start.character == 10 and broken[1].range.end.character == 11
    assert list(out["messy"]) == []

    (edit,) = out["format"]
    tidy = "input 3x8x8\nconv 3x3 pad1 -> 8; relu\n"
    assert edit.new_text == format_text("input 3x8x8\nconv 3x3  pad 1 ->8 ;relu\n") == tidy


async def steps_with_timeout(steps):
    return await asyncio.wait_for(session(steps), 120)


def test_completion_after_keywords_the_expander_checks():
    from cnndsl.lsp.features import completions

    assert [label for label, _, _ in completions("input 3x8x8\nexpect pa", 2, 10, {})] == ["params"]
    assert {label for label, _, _ in completions("train {\n  optimizer ", 2, 13, {})} == {"sgd", "adam", "adamw"}
    assert {label for label, _, _ in completions("input 3x8x8\npool ", 2, 6, {})} == {"max", "avg"}


def test_without_pygls_the_command_names_the_extra():
    blocked = ("import sys; sys.modules['pygls'] = None; sys.argv = ['cnndsl', 'lsp']; "
               "from cnndsl.cli import run; run()")
    proc = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "error: the language server needs pygls" in proc.stderr and "cnndsl[lsp]" in proc.stderr
    assert "Traceback" not in proc.stderr


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted((ROOT / "examples").glob("*.cnn"))), st.floats(0, 1), st.integers(0, 30),
       st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=4))
def test_half_typed_programs_never_break_a_request(path, cut, dropped, positions):
    """What an editor sends while a program is being typed: any prefix, or a slice cut out of it."""
    from cnndsl.lsp.features import Analysis, completions

    text = path.read_text(encoding="utf-8")
    at = int(cut * len(text))
    text = text[:at] + (text[at + dropped:] if dropped else "")
    analysis = Analysis(text, str(path))
    assert analysis.net is not None or analysis.diagnostics  # either figures or a reason
    lines = text.split("\n")
    for row, column in positions:
        line = 1 + int(row * (len(lines) - 1))
        col = 1 + int(column * len(lines[line - 1]))
        analysis.hover(line, col)
        analysis.definition(line, col)
        completions(text, line, col, analysis.blocks)
    analysis.inlay_hints()


def test_hover_prints_figures_as_the_table_does():
    """RF and jump through summary.pair_text (`7`, not `7x7`) and `-` where there is no spatial field."""
    from cnndsl.lsp.features import Analysis
    from cnndsl.summary import table_rows

    text = "network n\ninput 1x16x16\nconv 7x7/2 -> 4\nconv 3x3 -> 4\n"
    net = cnndsl.parse(text)
    rows = {row.name: row for row in table_rows(net.report)}
    hover, _ = Analysis(text, "/tmp/n.cnn").hover(4, 2)
    last = rows[net.report.layers[-1].name]
    assert (last.rf, last.jump) == ("11", "2")  # 7 + 2*(3-1); jump 2
    assert f"| {last.rf} | {last.jump} |" in hover and "11x11" not in hover
    vector = "network v\ninput 20\nfc 10\n"
    hover, _ = Analysis(vector, "/tmp/v.cnn").hover(3, 2)
    assert hover.rstrip().endswith("| - | - |") and "—" not in hover
