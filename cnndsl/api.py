"""The Python API: `parse`, `load`, `compile` and the `Net` they return."""

from __future__ import annotations

import os
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

from . import ir
from .analysis import Report, Shapes, TensorSpec, analyze, tensor_specs
from .errors import CnnDslError, Diagnostic, Source, Span
from .expand import expand
from .parser import parse_program
from .syntax import Program

if TYPE_CHECKING:
    from pathlib import Path  # imported where a Path is made: `cnndsl analyze` does without pathlib

TARGETS = ("torch", "numpy", "onnx")


class Net:
    """A parsed, expanded network: the IR plus the figures and backends that read it."""

    def __init__(self, network: ir.Network, declared_input: tuple[int, ...] | None = None,
                 program: Program | None = None, *, reparse: bool = False):
        self.ir = network
        self._declared_input = declared_input
        # To expand again at another input size: the program, or (`reparse`) its source parsed
        # again then. Holding the syntax tree of a 90,000-statement program would cost 50 MB.
        self._program = program
        self._reparse = reparse

    def __repr__(self) -> str:
        return f"<cnndsl.Net {self.ir.name} input={'x'.join(map(str, self.ir.input_shape))}>"

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def source(self) -> Source:
        return self.ir.source

    @cached_property
    def report(self) -> Report:
        return analyze(self.ir, check_expects=not self.input_overridden)

    @property
    def input_overridden(self) -> bool:
        """True when the net was loaded at another input than its `input` line declares."""
        return self._declared_input is not None and self._declared_input != self.ir.input_shape

    def analyze(self, input_shape: tuple[int, ...] | None = None) -> Report:
        """Per-layer and total figures; raises CnnDslError on a shape error or a failed `expect`.

        `expect` lines describe the network at its declared input, so they are checked only there.
        At another input the program is expanded again: a block may depend on its input's channels."""
        if input_shape is None or tuple(input_shape) == self.ir.input_shape:
            return self.report
        program = self._program
        if program is None and self._reparse:
            program = parse_program(self.source.text, self.source)
        if program is None:
            return analyze(self.ir, input_shape, check_expects=False)
        network = expand(program, self.source, tuple(input_shape))
        return analyze(network, check_expects=False)

    def check(self) -> list[Diagnostic]:
        """Run every check; return the warnings (errors raise CnnDslError), a note on the `expect`
        lines not checked at an overriding input among them."""
        warnings = list(self.report.warnings)
        if self.input_overridden and self.ir.expects:
            expects = self.ir.expects
            declared = "x".join(map(str, self._declared_input or ()))
            warnings.append(Diagnostic(
                "warning", f"{len(expects)} expect line(s) not checked: they describe the network at its "
                f"declared input {declared}, not at {'x'.join(map(str, self.ir.input_shape))}", expects[0].span,
                "check without --input to test them", tuple(
                    f"skipped: {self.source.statement(e.span)} (line {e.span.line})" for e in expects)))
        return sorted(warnings, key=Diagnostic.sort_key)

    @property
    def shapes(self) -> Shapes:
        return self.report.shapes

    def tensor_specs(self) -> list[TensorSpec]:
        """Names, shapes, roles and initialisation of every tensor, the same in every backend."""
        return list(self._tensor_specs)

    @cached_property
    def _tensor_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(tensor_specs(self.ir, self.shapes))

    def init_weights(self, seed: int = 0) -> dict[str, Any]:
        """Fresh numpy weights (PyTorch's default initialisation), keyed by tensor name."""
        from .weights import init_weights

        return init_weights(self, seed)

    def to_torch(self, weights: str | os.PathLike | dict | None = None):
        """An `nn.Module` (needs torch)."""
        from .backends import torch_codegen

        return torch_codegen.build(self, weights)

    def to_numpy(self, weights: str | os.PathLike | dict | None = None):
        """A NumPy model with forward and backward."""
        from .backends import numpy_codegen

        return numpy_codegen.build(self, weights)

    def to_onnx(self, weights: str | os.PathLike | dict | None = None, seed: int = 0):
        """An `onnx.ModelProto` built straight from the IR (no torch)."""
        from .backends import onnx_builder

        return onnx_builder.build(self, weights, seed=seed)


def parse(text: str, path: str = "<string>", input_shape: tuple[int, ...] | None = None) -> Net:
    """Parse and check cnndsl source text. Raises CnnDslError on any mistake in it, shapes and
    `expect` lines included, so a Net that exists is one every backend can build."""
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write at the start
    source = Source(text, path)
    # The program goes straight from the parser to the expander, which lets each statement's syntax
    # go once it is expanded: the IR holds everything the figures need.
    network = expand(parse_program(text, source), source, input_shape)
    net = Net(network, network.declared_input, reparse=True)
    net.report  # noqa: B018 - run every check now, not at first use
    return net


def diagnose(text: str, path: str = "<stdin>", input_shape: tuple[int, ...] | None = None) -> list[Diagnostic]:
    """Every diagnostic about `text`, errors and warnings, in source order; never raises for a
    mistake in the text. The errors are every independent one `parse` finds (up to
    `errors.MAX_ERRORS`); warnings come with a program that has no errors."""
    try:
        net = parse(text, path, input_shape)
        found = net.check()
    except CnnDslError as err:
        found = [e.diagnostic() for e in err.errors]
    return sorted((d._replace(path=path) for d in found), key=Diagnostic.sort_key)


def read_source(path: str | os.PathLike) -> str:
    """The text of a .cnn file (UTF-8, with or without a byte-order mark); a file that cannot be
    read, or is not UTF-8, is a CnnDslError at the first byte that is not."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise CnnDslError(f"cannot read {shown}: {err.strerror or err}",
                          hint="check the path and that the file is readable",
                          source=Source("", shown)) from None
    return decode_source(data, shown)


def read_argument(file: str) -> str:
    """The text of a command's FILE argument: standard input for '-', else the file, both decoded
    as `read_source` decodes files."""
    return decode_source(sys.stdin.buffer.read(), "<stdin>") if file == "-" else read_source(file)


def decode_source(data: bytes, path: str) -> str:
    """`data` (a file's or standard input's bytes) as text, decoded as `read_source` decodes files:
    UTF-8, a leading byte-order mark dropped; not UTF-8 is a CnnDslError at the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(data, err, path) from None


def _not_utf8(data: bytes, err: UnicodeDecodeError, path: str) -> CnnDslError:
    before = data[: err.start]
    line = before.count(b"\n") + 1
    line_start = before.rfind(b"\n") + 1
    column = len(data[line_start : err.start].decode("utf-8", "replace")) + 1
    text = data.decode("utf-8", "replace")
    try:
        data.decode("cp1252")
        guess = "cp1252"  # Windows' Western European encoding; latin-1 is its subset
    except UnicodeDecodeError:
        guess = "latin-1"
    if path == "<stdin>":
        what, hint = "standard input", f"send UTF-8; if it is {guess}, convert it first: iconv -f {guess} -t utf-8"
    else:
        what = "the file"
        hint = f"save the file as UTF-8; if it is {guess}: iconv -f {guess} -t utf-8 {path} > fixed.cnn"
    return CnnDslError(
        f"{what} is not UTF-8: byte 0x{data[err.start]:02x} cannot start a UTF-8 character",
        Span(line, column, line, column + 1),
        hint=hint,
        source=Source(text, path))


def load(path: str | os.PathLike, input_shape: tuple[int, ...] | None = None) -> Net:
    """Read and parse a .cnn file."""
    return parse(read_source(path), os.fspath(path), input_shape)


def generate(net: Net, target: str, weights=None, seed: int = 0) -> bytes:
    """The compiled artefact for `target` as bytes: Python source, or a serialized ONNX model.

    `weights` (a .safetensors path) is checked against the network; the Python sources make it
    their `build()`'s default, ONNX bakes the tensors in. `seed` chooses the fresh initial weights
    where there are no `weights`: ONNX bakes them, the NumPy source makes it `build()`'s default
    seed. The torch source starts from PyTorch's own initialisation (torch's global generator), so
    a seed other than 0 is refused there rather than ignored."""
    if target == "torch":
        if seed != 0:
            raise CnnDslError(
                "--seed does not apply to the torch target: its build() draws PyTorch's default initialisation "
                "from torch's global generator",
                hint="call torch.manual_seed(N) before build(), use net.to_torch() for cnndsl's seeded weights, "
                     "or compile with --weights")
        from .backends import torch_codegen

        return torch_codegen.generate(net, weights).encode()
    if target == "numpy":
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise CnnDslError("the numpy source can name a weights file, not hold tensors",
                              hint="save the tensors with safetensors.numpy.save_file and pass that path")
        from .backends import numpy_codegen

        return numpy_codegen.generate(net, weights, seed).encode()
    if target == "onnx":
        from .backends import onnx_builder

        return onnx_builder.serialize(net, weights, seed=seed)
    raise CnnDslError(f"unknown target '{target}'", hint=f"use one of: {', '.join(TARGETS)}")


def compile(net: Net | str | os.PathLike, target: str = "torch", out: str | os.PathLike | None = None,
            weights: str | os.PathLike | None = None, force: bool = False, seed: int = 0) -> Path:
    """Compile `net` (a Net or a .cnn path) for `target` and write it atomically to `out`."""
    from pathlib import Path

    from .outputs import default_output, write_output

    if not isinstance(net, Net):
        net = load(net)
    path = Path(out) if out is not None else default_output(net, target)
    if target == "onnx":
        from .backends import onnx_builder

        # Not through generate(): a model over protobuf's 2 GB limit must go to external data.
        onnx_builder.write(net, path, weights, seed=seed, force=force)
    else:
        write_output(path, generate(net, target, weights, seed), net, force=force)
    return path
