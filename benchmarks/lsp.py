"""The language server's re-analysis after an edit to ResNet-152's file, vs running `cnndsl analyze`.

What a user does without the server: save, run `cnndsl analyze benchmarks/resnet152.cnn` in a
terminal and read the figures. With it, each edit re-analyses the document in the warm server and
publishes diagnostics; shapes, figures and hints come from that analysis. Measured in one run:

- in process: `Analysis(text)` (parse, expand, analyze, diagnostics) for an edited text, and the
  inlay hints an editor then asks for;
- over stdio: a `cnndsl lsp` subprocess driven by pygls's LanguageClient, from sending
  `didChange` to receiving `publishDiagnostics` (JSON-RPC both ways included);
- `cnndsl analyze --json` as a fresh process (the console script of this environment, with its
  bytecode cached as a pip install has it).

The edits write the stem's channels as `64` or `32*2` and add a comment: every analysis is of new
text, with the same figures (the file's `expect` line holds).

    python benchmarks/lsp.py [--runs 31]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NET = HERE / "resnet152.cnn"


def edits(text: str, runs: int) -> list[str]:
    stem = "conv 7x7/2 pad3 -> 64 nobias"
    assert stem in text
    return [text.replace(stem, f"conv 7x7/2 pad3 -> {('64', '32*2')[i % 2]} nobias") + f"# edit {i}\n"
            for i in range(runs)]


def in_process(text: str, runs: int) -> tuple[list[float], list[float], list[float]]:
    """Wall times of the analysis and of the hints, and CPU times of the analysis."""
    from cnndsl.lsp.features import Analysis

    Analysis(text, str(NET)).inlay_hints()  # warm: imports, parser tables
    analysis, hints, cpu = [], [], []
    for edited in edits(text, runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = Analysis(edited, str(NET))
        middle, middle_cpu = time.perf_counter(), time.process_time()
        result.inlay_hints()
        end = time.perf_counter()
        assert result.net is not None and not result.diagnostics
        analysis.append(middle - start)
        cpu.append(middle_cpu - start_cpu)
        hints.append(end - middle)
    return analysis, hints, cpu


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; clock ticks of 1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def over_stdio(text: str, runs: int) -> tuple[list[float], float]:
    """Wall times from didChange to publishDiagnostics, and the server's mean CPU time per edit."""
    from lsprotocol import types as lsp
    from pygls.lsp.client import LanguageClient

    client = LanguageClient("benchmark", "1")
    arrived = asyncio.Event()

    @client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def published(params: lsp.PublishDiagnosticsParams) -> None:
        arrived.set()

    await client.start_io(sys.executable, "-m", "cnndsl.cli", "lsp")
    uri = NET.as_uri()
    await client.initialize_async(lsp.InitializeParams(capabilities=lsp.ClientCapabilities(), process_id=None))
    client.initialized(lsp.InitializedParams())
    client.text_document_did_open(lsp.DidOpenTextDocumentParams(
        lsp.TextDocumentItem(uri=uri, language_id="cnndsl", version=1, text=text)))
    await asyncio.wait_for(arrived.wait(), 60)
    times = []
    pid = client._server.pid
    cpu_before = _cpu_seconds(pid)
    for version, edited in enumerate(edits(text, runs), 2):
        arrived.clear()
        start = time.perf_counter()
        client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(version=version, uri=uri),
            [lsp.TextDocumentContentChangeWholeDocument(text=edited)]))
        await asyncio.wait_for(arrived.wait(), 60)
        times.append(time.perf_counter() - start)
    cpu = (_cpu_seconds(pid) - cpu_before) / runs
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return times, cpu


def command_line(runs: int) -> tuple[list[float], float]:
    """Wall times of `cnndsl analyze`, and its mean CPU time (the children's rusage)."""
    import resource

    script = shutil.which("cnndsl", path=str(Path(sys.executable).parent)) or shutil.which("cnndsl")
    # --json, as benchmarks/analyze.py times it: the table adds rich's rendering of 500 rows
    command = [script or sys.executable, *([] if script else ["-m", "cnndsl.cli"]), "analyze", str(NET), "--json"]
    # As installed by pip, with compiled bytecode: this machine sets PYTHONDONTWRITEBYTECODE, and
    # without a cached .pyc every start compiles the generated parser module again (~0.8 s).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(command, check=True, capture_output=True, env=env)
    times = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / runs
    return times, cpu


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms, fastest {min(values) * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=31)
    args = parser.parse_args()
    text = NET.read_text(encoding="utf-8")
    analysis, hints, cpu = in_process(text, args.runs)
    stdio, stdio_cpu = asyncio.run(over_stdio(text, args.runs))
    cli, cli_cpu = command_line(max(args.runs // 3, 5))
    both = [a + h for a, h in zip(analysis, hints, strict=True)]
    print(f"ResNet-152 ({NET.name}), {args.runs} edits; wall clock, and CPU time (less inflated by a busy machine)")
    print(f"  re-analysis in the server (diagnostics)        {ms(analysis)}; CPU {ms(cpu)}")
    print(f"  + inlay hints for the whole file                {ms(both)}")
    print(f"  didChange -> publishDiagnostics over stdio      {ms(stdio)}; server CPU {stdio_cpu * 1000:.1f} ms/edit")
    print(f"  cnndsl analyze --json, a fresh process          {ms(cli)}; CPU {cli_cpu * 1000:.1f} ms/run")
    for label, values in (("re-analysis", analysis), ("stdio round trip", stdio)):
        print(f"  {label}: {statistics.median(cli) / statistics.median(values):5.1f}x faster than "
              f"cnndsl analyze (medians), {min(cli) / min(values):5.1f}x (fastest)")
    print(f"  CPU: re-analysis {cli_cpu / statistics.median(cpu):.1f}x less than cnndsl analyze (medians)")
    for label, values in (("wall median", statistics.median(analysis)), ("wall fastest", min(analysis)),
                          ("CPU median", statistics.median(cpu))):
        verdict = "met" if values < 0.020 else "missed"
        print(f"  target < 20 ms re-analysis, {label}: {verdict} ({values * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
