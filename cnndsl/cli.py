"""The `cnndsl` command: check, analyze, compile (and train, with the training extra).

User mistakes print as `file:line:col: error: ...` on stderr with exit status 1; this module
imports no backend (and so no torch) unless the command needs it.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys

import click

from .errors import MAX_ERRORS, CnnDslError

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 2


def _shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(p) for p in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a shape; write CxHxW, e.g. 3x64x64") from None
    if len(dims) not in (1, 3) or min(dims) < 1:
        raise click.BadParameter(f"'{value}' is not a shape; write CxHxW, e.g. 3x64x64")
    return dims


EXTRAS = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnx", "sklearn": "train", "PIL": "train"}
"""Optional packages by top-level module, and the extra of cnndsl that installs each."""


def missing_extra(err: ImportError) -> CnnDslError | None:
    """The user error for an optional package that is not installed (None: not one of ours)."""
    module = (getattr(err, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    return CnnDslError(f"this needs the optional package '{module}', which is not installed",
                       hint=f"pip install 'cnndsl[{extra}]'")


def _user_errors(command):
    """Turn CnnDslError into a rendered message and exit 1; anything else is our bug, said plainly."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            try:
                return command(*args, **kwargs)
            except ImportError as err:
                raise missing_extra(err) or err from None
        except CnnDslError as err:
            for each in err.errors:
                click.echo(each.render(), err=True)
            if len(err.errors) > 1:
                limit = " (the limit: fix these and check again)" if len(err.errors) >= MAX_ERRORS else ""
                click.echo(f"{len(err.errors)} errors{limit}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except (click.exceptions.Exit, click.ClickException):
            raise  # click's own usage errors already print "Usage: ... Error: ..." and exit 2
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError as err:  # the network's size, which analysis allows up to 2**40 values a tensor
            click.echo(f"error: out of memory: {err}\n  fix: use fewer channels or a smaller --input", err=True)
            sys.exit(EXIT_USER_ERROR)
        except Exception as err:  # noqa: BLE001 - the last line of defence against a traceback
            if os.environ.get("CNNDSL_DEBUG"):
                raise
            click.echo(f"cnndsl: internal error: {type(err).__name__}: {err}\n"
                       "  this is a bug in cnndsl, not in your network; rerun with CNNDSL_DEBUG=1 for details",
                       err=True)
            sys.exit(EXIT_INTERNAL_ERROR)

    return wrapper


def _print_warnings(net) -> int:
    """Print the network's warnings; return how many there were."""
    warnings = net.check()
    for warning in warnings:
        click.echo(warning.render(net.source), err=True)
    return len(warnings)


class _Commands(click.Group):
    """The command group, with `train` imported only when it is asked for (click's lazy-loading
    pattern): its options and module cost every other command's start-up."""

    lazy = {"train": ("cnndsl.training.command", "train"), "draw": ("cnndsl.draw", "draw"),
            "report": ("cnndsl.report_html", "report"), "import": ("cnndsl.onnx_import.command", "import_"),
            "fmt": ("cnndsl.fmt", "fmt"), "lsp": ("cnndsl.lsp", "lsp")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            module, attribute = self.lazy[name]
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnndsl")
@click.pass_context
def main(ctx: click.Context) -> None:
    """A language and compiler for convolutional networks."""
    if ctx.invoked_subcommand in ("check", "analyze", "compile") and gc.isenabled():
        # These run for milliseconds and leave next to no cyclic garbage, yet the collector's passes
        # over the objects they make were 5% of an analyze. (train runs for minutes: it keeps it.)
        gc.disable()
        ctx.call_on_close(_collector_back)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--input", "input_shape", help="Override the input shape, e.g. 3x64x64.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: print every diagnostic as one JSON list on stdout (file, range, severity, message, "
                   "fix, call sites).")
@_user_errors
def check(file: str, input_shape: str | None, output_format: str) -> None:
    """Check FILE ('-': standard input): syntax, shapes, alignment and `expect` lines. Every
    independent error is reported; exit status 1 on errors."""
    from .api import diagnose, parse, read_argument

    path = "<stdin>" if file == "-" else file
    if output_format == "json":
        try:
            text = read_argument(file)
            diagnostics = diagnose(text, path, _shape(input_shape))
        except CnnDslError as err:  # an unreadable or non-UTF-8 file, a bad --input: still JSON
            diagnostics = [each.diagnostic()._replace(path=path) for each in err.errors]
        click.echo(json.dumps([d.to_json() for d in diagnostics], indent=2 if sys.stdout.isatty() else None))
        if any(d.severity == "error" for d in diagnostics):
            sys.exit(EXIT_USER_ERROR)
        return
    net = parse(read_argument(file), path, _shape(input_shape))
    report = net.analyze()
    warnings = _print_warnings(net)
    click.echo(f"{path}: ok: {net.name}, {report.params:,} parameters, output "
               f"{'x'.join(map(str, report.output))}" + (f", {warnings} warning(s)" if warnings else ""))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--input", "input_shape", help="Analyze at another input shape, e.g. 3x64x64.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--explain", is_flag=True, help="Show the arithmetic behind each figure.")
@click.option("--depth", type=click.IntRange(min=0), help="Collapse layers nested deeper than N into their "
              "block calls (0: one row per top-level statement).")
@click.option("--width", type=click.IntRange(min=0), help="Fit the table to N columns (0: no limit). "
              "Default: $COLUMNS, else the terminal's width, else 80.")
@click.option("--erf", is_flag=True, help="Add each spatial layer's effective receptive field (NumPy gradients).")
@click.option("--weights", type=click.Path(dir_okay=False), help="With --erf: a .safetensors file of trained "
              "weights (default: the seeded initialisation).")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --erf: random inputs to average the gradient over.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --erf: seed of the inputs and weights.")
@_user_errors
def analyze(file: str, input_shape: str | None, as_json: bool, explain: bool, depth: int | None,
            width: int | None, erf: bool, weights: str | None, samples: int, seed: int) -> None:
    """Per-layer shapes, parameters, MACs and receptive fields of FILE, and totals."""
    from .api import load

    if not erf:
        given = [name for name, value, default in (("--weights", weights, None), ("--samples", samples, 8),
                                                   ("--seed", seed, 0)) if value != default]
        if given:
            raise CnnDslError(f"{', '.join(given)} only apply to the effective receptive field",
                              hint="add --erf, or leave out " + ", ".join(given))
    net = load(file, _shape(input_shape))
    report = net.analyze()
    fields = None
    if erf:
        from .analysis.erf import effective_fields
        from .summary import table_rows

        wanted = [row.name for row in report.layers] if as_json else \
            [row.name for row in table_rows(report, depth)]
        fields = effective_fields(net, samples=samples, seed=seed, weights=weights, report=report, layers=wanted)
    if as_json:
        # Indented for a person at a terminal; compact (and C-encoded, so fast) for a pipe.
        click.echo(json.dumps(report.to_json(erf=fields), indent=2 if sys.stdout.isatty() else None))
        return
    _print_warnings(net)
    from .summary import print_report

    print_report(report, explain=explain, width=width, depth=depth, erf=fields)


@main.command(name="compile")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--target", "-t", type=click.Choice(["torch", "numpy", "onnx"]), required=True,
              help="What to generate.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Output file (default: next to FILE).")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="A .safetensors file: onnx bakes it in; the torch and numpy sources load it by default.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the fresh initial weights: baked into onnx, build()'s default in numpy; not torch.")
@click.option("--force", is_flag=True, help="Replace OUT even if cnndsl did not write it.")
@click.option("--input", "input_shape", help="Compile for another input shape, e.g. 3x64x64.")
@_user_errors
def compile_(file: str, target: str, out: str | None, weights: str | None, seed: int, force: bool,
             input_shape: str | None) -> None:
    """Generate a PyTorch or NumPy module (Python source) or an ONNX model from FILE."""
    from .api import compile as compile_net
    from .api import load

    net = load(file, _shape(input_shape))
    _print_warnings(net)
    path = compile_net(net, target=target, out=out, weights=weights, force=force, seed=seed)
    click.echo(f"wrote {path}")


_PROCESS_ENDS_WITH_COMMAND = False  # set by `run`: no caller goes on after the command


def _collector_back() -> None:
    """Turn the collector on again after a command that ran without it. In a process that ends with
    the command, first freeze what it made: the collector's next pass would otherwise walk every
    object made while it was off, all still in its youngest generation (0.5 s after checking a
    90,000-statement program), to find nothing."""
    if _PROCESS_ENDS_WITH_COMMAND:
        gc.freeze()
    gc.enable()


def run() -> None:
    """The `cnndsl` console script: `main`, in a process that ends with it."""
    global _PROCESS_ENDS_WITH_COMMAND
    _PROCESS_ENDS_WITH_COMMAND = True
    try:
        main()
    finally:
        # At exit the interpreter makes one last full collection over every object still alive (the
        # modules, the IR, the report): 6% of an analyze, to find nothing. Frozen objects are skipped.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    run()
