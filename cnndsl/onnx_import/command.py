"""The `cnndsl import` command (registered lazily in `cnndsl.cli`)."""

from __future__ import annotations

import click

from ..cli import _shape, _user_errors


@click.command(name="import")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False),
              help="The program to write (default: MODEL's name with .cnn, next to it).")
@click.option("--weights-out", type=click.Path(dir_okay=False),
              help="The weights to write (default: the program's name with .safetensors).")
@click.option("--input", "input_shape", help="The input size, CxHxW, for a model whose size is dynamic.")
@click.option("--name", help="The network's name (default: the graph's, else the file's).")
@click.option("--force", is_flag=True, help="Replace outputs even if cnndsl did not write them.")
@_user_errors
def import_(model: str, out: str | None, weights_out: str | None, input_shape: str | None, name: str | None,
            force: bool) -> None:
    """Import an ONNX MODEL as a cnndsl program and its weights (safetensors)."""
    from pathlib import Path

    from ..errors import CnnDslError
    from ..outputs import check_output, same_file, write_atomic
    from ..weights import save_weights
    from . import import_onnx

    program = Path(out) if out else Path(model).with_suffix(".cnn")
    weights = Path(weights_out) if weights_out else program.with_suffix(".safetensors")
    if same_file(program, weights):
        raise CnnDslError(f"the program and the weights would both be written to {program}",
                          hint="give the weights another name with --weights-out")
    for path in (program, weights):
        check_output(path, None, force, reads=[model])  # never over the model, even with --force
    result = import_onnx(model, _shape(input_shape), name=name)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    write_atomic(program, result.text.encode("utf-8"))
    save_weights(result.weights, weights, metadata={"producer": "cnndsl import", "source": Path(model).name})
    lines = result.text.count("\n")
    click.echo(f"wrote {program} ({lines} lines) and {weights} ({len(result.weights)} tensors)")
