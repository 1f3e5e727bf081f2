"""`cnndsl train`: the click command. Importing this module imports neither torch nor the loop."""

from __future__ import annotations

import functools
import os

import click


def _user_errors(command):
    """The CLI's error handling (a rendered message and exit 1 for mistakes), imported when run:
    `cnndsl.cli` imports this module when the command is asked for, so it must not import the CLI."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from ..cli import _user_errors as handle

        return handle(command)(*args, **kwargs)

    return wrapper


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(["torch", "numpy"]),
              help="Train the generated PyTorch module or the generated NumPy model (default: torch, or the "
                   "resumed run's).")
@click.option("--data", help="digits (default: scikit-learn's 8x8 digits), an image folder DIR/<class>/*.png, "
                             "or FILE.npz with x_train, y_train[, x_test, y_test]; for a network with a CxHxW "
                             "output: shapes (the default, generated from the seed), DIR with images/ and masks/ "
                             "(PNG label maps matched by name) or FILE.npz with x, y (label maps).")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the train section's epochs.")
@click.option("--batch", type=click.IntRange(min=1), help="Override the (global) batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override the learning rate.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), help="Override the optimizer.")
@click.option("--momentum", type=click.FloatRange(min=0), help="Override SGD's momentum.")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Override the weight decay.")
@click.option("--schedule", help="Override the schedule: constant, cosine, 'step N [GAMMA]', 'onecycle [PCT]'.")
@click.option("--seed", type=click.IntRange(min=0), help="Override the seed (initial weights, order, augmentation).")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<file stem>).")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this folder.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@_user_errors
def train(file: str, backend: str | None, data: str | None, epochs: int | None, batch: int | None, lr: float | None,
          optimizer: str | None, momentum: float | None, weight_decay: float | None, schedule: str | None,
          seed: int | None, out: str | None, resume: str | None, progress: bool | None) -> None:
    """Train FILE on a data set; write weights, optimizer state and metrics to a run folder."""
    from ..api import load
    from .loop import TrainOptions
    from .loop import train as run

    net = load(file)
    for warning in net.check():
        click.echo(warning.render(net.source), err=True)
    options = TrainOptions(backend=backend, data=data, epochs=epochs, batch=batch, lr=lr, seed=seed,
                           optimizer=optimizer, schedule=schedule, weight_decay=weight_decay, momentum=momentum,
                           out=out, resume=resume, progress=progress)
    result = run(net, options)
    if int(os.environ.get("RANK", "0")) == 0:
        accuracy = "no test split" if result.test_accuracy is None else f"{100 * result.test_accuracy:.2f}%"
        if result.test_miou is not None:
            accuracy += f", mean IoU {result.test_miou:.4f}"
        click.echo(f"{net.name}: test accuracy {accuracy} after {result.epochs} epochs; "
                   f"weights in {result.run_dir / 'model.safetensors'}")
