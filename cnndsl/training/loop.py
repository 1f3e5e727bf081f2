"""The training loop shared by both backends.

Everything random is a pure function of (seed, epoch): the data order (stream 0), the
augmentation of every batch (stream 1) and dropout (stream 2, per rank), so an epoch replayed
after `--resume` is the epoch an uninterrupted run would have trained.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import ir
from ..errors import CnnDslError
from . import checkpoint as ckpt
from .augment import augment_pair, check_augment, geometric
from .data import Dataset, load_data
from .engines import NumpyEngine, TorchEngine, dense_output, derived_seed
from .loss import mean_iou
from .optim import Schedule, check_schedule, lr_at

BACKENDS = ("numpy", "torch")
STD_FLOOR = 1e-6

if TYPE_CHECKING:
    from ..api import Net


@dataclass
class TrainOptions:
    """Command-line settings; None keeps the network file's `train` value."""

    backend: str | None = None  # None: torch, or the resumed run's backend
    data: str | None = None
    epochs: int | None = None
    batch: int | None = None
    lr: float | None = None
    seed: int | None = None
    optimizer: str | None = None
    schedule: str | None = None  # "cosine", "step 5 0.5", ...
    weight_decay: float | None = None
    momentum: float | None = None
    out: str | None = None
    resume: str | None = None
    progress: bool | None = None  # None: when stderr is a terminal
    log: Any = None  # callable(str) for one line per epoch; None: stderr when there is no progress bar


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    test_accuracy: float | None  # None without a test split (pixel accuracy for a segmenter)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    test_miou: float | None = None  # a segmenter's mean IoU on the test split


def _parse_schedule(text: str) -> tuple[str, tuple[float, ...]]:
    name, *args = text.replace(",", " ").split()
    try:
        return name, tuple(float(a) for a in args)
    except ValueError:
        raise CnnDslError(f"schedule arguments are numbers, got '{text}'",
                          hint="e.g. --schedule 'step 5 0.5'") from None


def resolve_config(network: ir.Network, options: TrainOptions) -> ir.TrainConfig:
    """The file's `train` settings with the command-line overrides applied, checked."""
    cfg = network.train
    changes: dict[str, Any] = {}
    for key in ("epochs", "batch", "lr", "seed", "optimizer", "weight_decay", "momentum"):
        value = getattr(options, key)
        if value is not None:
            changes[key] = value
    if options.schedule is not None:
        changes["schedule"], changes["schedule_args"] = _parse_schedule(options.schedule)
    if changes.get("optimizer", "sgd") != "sgd":
        changes["nesterov"] = False  # the file's `nesterov` belongs to its sgd line
    cfg = cfg._replace(**changes)
    if cfg.optimizer not in ("sgd", "adam", "adamw"):
        raise CnnDslError(f"unknown optimizer '{cfg.optimizer}'", hint="one of: sgd, adam, adamw")
    if cfg.epochs < 1 or cfg.batch < 1:
        raise CnnDslError(f"epochs and batch must be at least 1 (got {cfg.epochs}, {cfg.batch})",
                          hint="give --epochs and --batch (or the train section's epochs, batch) whole numbers "
                               "of 1 or more, e.g. --epochs 15 --batch 16 (the defaults)")
    if not cfg.lr > 0:
        raise CnnDslError(f"the learning rate must be positive, got {cfg.lr}",
                          hint="give --lr (or the train section's lr) a number above 0, e.g. 0.002 (the default)")
    if cfg.weight_decay < 0 or cfg.momentum < 0:
        raise CnnDslError("weight decay and momentum cannot be negative",
                          hint="give --weight-decay and --momentum (or weight_decay, momentum in the train "
                               "section) 0 or more; 0 turns them off")
    if cfg.nesterov and (cfg.optimizer != "sgd" or not cfg.momentum):
        raise CnnDslError("nesterov needs sgd with momentum", cfg.span,
                          hint="write `optimizer sgd lr .05 momentum .9 nesterov`, or remove `nesterov`")
    check_schedule(cfg.schedule, cfg.schedule_args, cfg.span)
    return cfg


def config_record(cfg: ir.TrainConfig, options: TrainOptions, world: int) -> dict[str, Any]:
    return {"backend": options.backend, "data": options.data or "digits", "epochs": cfg.epochs, "batch": cfg.batch,
            "lr": cfg.lr, "seed": cfg.seed, "optimizer": cfg.optimizer, "momentum": cfg.momentum,
            "nesterov": cfg.nesterov, "betas": list(cfg.betas), "weight_decay": cfg.weight_decay,
            "schedule": cfg.schedule, "schedule_args": list(cfg.schedule_args),
            "label_smoothing": cfg.label_smoothing, "val_split": cfg.val_split, "world_size": world}


def _check_classes(net: Net, data: Dataset) -> int:
    output = tuple(net.analyze().output)
    if dense_output(net):
        classes = int(output[0])
        if data.y_train.ndim != 3 or tuple(data.y_train.shape[1:]) != output[1:]:
            raise CnnDslError(f"the network outputs {'x'.join(map(str, output))} (scores per pixel) but the data "
                              f"have {'x'.join(map(str, data.y_train.shape[1:])) or 'one'} label(s) per image",
                              hint="give label maps of the output's HxW: --data shapes, FILE.npz with x, y, or DIR "
                                   "with images/ and masks/ (masks are resized to the input's HxW)")
        needed = int(max(data.y_train.max(initial=0), data.y_test.max(initial=0))) + 1
        if data.source == "shapes":
            needed = len(data.classes)
        if classes < needed:
            raise CnnDslError(f"the data have {needed} classes but the network outputs {classes} channels",
                              hint=f"end the network with `conv 1x1 -> {needed}`")
        return classes
    if data.y_train.ndim != 1:
        raise CnnDslError("the data have a label map per image but the network outputs one score per class",
                          hint="a segmenter's output is CxHxW, one score per class and pixel")
    classes = int(np.prod(output)) if output else 0
    if len(output) not in (1, 3) or (len(output) == 3 and output[1:] != (1, 1)):
        raise CnnDslError(f"training needs a network that outputs one score per class, its output is "
                          f"{'x'.join(map(str, output))}", hint="end the network with `fc K` (K classes)")
    needed = int(max(data.y_train.max(initial=0), data.y_test.max(initial=0))) + 1
    if classes < needed:
        raise CnnDslError(f"the data have {needed} classes but the network outputs {classes} scores",
                          hint=f"end the network with `fc {needed}`")
    return classes


def measure_standardize(net: Net, x_train: np.ndarray, weights: dict[str, np.ndarray]) -> None:
    """Fill `preprocess.mean/std` (per channel, after `scale`) from the training split."""
    pre = net.ir.preprocess
    if pre is None or not pre.standardize or pre.mean is not None:
        return
    scale = pre.scale if pre.scale is not None else 1.0
    x = x_train.astype(np.float64) * scale
    axes = (0,) + tuple(range(2, x.ndim))
    if x.ndim == 2:  # a vector input: one "channel"
        axes = (0, 1)
    mean = x.mean(axis=axes)
    std = np.maximum(x.std(axis=axes), STD_FLOOR)
    shape = weights["preprocess.mean"].shape
    weights["preprocess.mean"] = np.broadcast_to(mean, shape).astype(np.float32)
    weights["preprocess.std"] = np.broadcast_to(std, shape).astype(np.float32)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _default_out(net: Net) -> Path:
    stem = Path(net.source.path).stem if net.source.path != "<string>" else net.name
    base = Path("runs") / stem
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = Path(f"{base}-{n}")
    return candidate


def _check_resume_options(saved: dict[str, Any], cfg: ir.TrainConfig, options: TrainOptions) -> ir.TrainConfig:
    """On resume the stored settings hold; flags may only repeat them (or raise --epochs)."""
    given = {"data": options.data, "batch": options.batch, "lr": options.lr, "seed": options.seed,
             "optimizer": options.optimizer, "weight_decay": options.weight_decay, "momentum": options.momentum}
    for key, value in given.items():
        if value is not None and saved.get(key) != value:
            raise CnnDslError(f"--{key.replace('_', '-')} {value} differs from the run's {saved.get(key)}",
                              hint="a resumed run keeps its settings; drop the flag or start a new run")
    return cfg._replace(
        epochs=options.epochs or saved["epochs"], batch=saved["batch"], lr=saved["lr"], seed=saved["seed"],
        optimizer=saved["optimizer"], momentum=saved["momentum"], nesterov=saved["nesterov"],
        betas=tuple(saved["betas"]), weight_decay=saved["weight_decay"], schedule=saved["schedule"],
        schedule_args=tuple(saved["schedule_args"]), label_smoothing=saved["label_smoothing"],
        val_split=saved["val_split"])


class _Progress:
    """A rich progress bar per epoch on a terminal; one plain line per epoch otherwise."""

    def __init__(self, enabled: bool, log):
        self.enabled = enabled
        self.log = log
        self.bar = None

    def start(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[loss]}"), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        self.task = self.bar.add_task("train", total=steps, loss="")  # no loss shown before the first step

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, loss=f"loss {loss:.4f}")

    def end(self, line: str) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            from rich.console import Console

            Console(stderr=True).print(line, highlight=False)
        elif self.log is not None:
            self.log(line)


def _accuracy(engine, x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) == 0:
        return None
    return float((engine.predict(x).argmax(1) == y).mean())


def _scores(engine, x: np.ndarray, y: np.ndarray, classes: int) -> tuple[float | None, float | None]:
    """(accuracy, mean IoU): pixel accuracy and mean IoU for a segmenter, (accuracy, None) otherwise."""
    if not getattr(engine, "dense", False):
        return _accuracy(engine, x, y), None
    if len(x) == 0:
        return None, None
    predicted = engine.predict(x).argmax(1)
    return float((predicted == y).mean()), mean_iou(predicted, y, classes)


def train(net: Net, options: TrainOptions | None = None) -> TrainResult:
    """Train `net` (a cnndsl.Net) as `cnndsl train` does; return the run folder and figures."""
    options = options or TrainOptions()
    if options.backend is None:
        saved_backend = None
        if options.resume:
            state = ckpt.read_state(Path(options.resume))
            saved_backend = state["config"].get("backend") if state else None
        options = dataclasses.replace(options, backend=saved_backend or "torch")
    if options.backend not in BACKENDS:
        raise CnnDslError(f"unknown backend '{options.backend}'", hint="use torch or numpy")
    net.analyze()
    rank, world = _distributed()
    if world > 1 and options.backend != "torch":
        raise CnnDslError("distributed training (torchrun) needs --backend torch",
                          hint="add --backend torch, or run `cnndsl train` without torchrun for --backend numpy")
    cfg = resolve_config(net.ir, options)

    run_dir = Path(options.resume or options.out or _default_out(net))
    saved_state = None
    if options.resume:
        if options.out and Path(options.out).resolve() != run_dir.resolve():
            raise CnnDslError("--out and --resume name different folders", hint="a resumed run stays in its folder")
        saved_state, saved_model, saved_optimizer = ckpt.load_checkpoint(run_dir, repair=rank == 0)
        saved = saved_state["config"]
        if saved.get("backend") != options.backend:
            raise CnnDslError(f"the run in {run_dir} was trained with --backend {saved.get('backend')}",
                              hint=f"resume with --backend {saved.get('backend')}")
        if saved.get("world_size", 1) != world:
            raise CnnDslError(f"the run in {run_dir} used {saved.get('world_size', 1)} processes, this one {world}",
                              hint="resume with the same number of processes")
        if saved_state.get("network") != net.name:
            raise CnnDslError(f"the run in {run_dir} trained network {saved_state.get('network')}, not {net.name}",
                              hint=f"resume with the file of network {saved_state.get('network')}, or train "
                                   f"{net.name} into a new folder: drop --resume (or give another --out)")
        options = dataclasses.replace(options, data=options.data or saved["data"])
        cfg = _check_resume_options(saved, cfg, options)
    elif ckpt.read_state(run_dir) is not None:
        raise CnnDslError(f"{run_dir} already holds a training run", hint=f"continue it with --resume {run_dir}, "
                                                                          "or choose another --out")
    check_augment(net.ir.augment, net.ir.input_shape)
    dense = dense_output(net)
    output = tuple(net.analyze().output)
    if dense:
        aug = net.ir.augment
        if geometric(aug) and output[1:] != tuple(net.ir.input_shape[1:]):
            raise CnnDslError(f"a geometric augment moves the label maps with the images, so it needs a segmenter "
                              f"whose output has its input's HxW; this one maps "
                              f"{'x'.join(map(str, net.ir.input_shape))} to {'x'.join(map(str, output))}", aug.span,
                              hint="pad the convolutions to keep the size, or keep only brightness and contrast")
        if options.data is None:
            options = dataclasses.replace(options, data="shapes")
    data = load_data(options.data, net.ir.input_shape, cfg.val_split, cfg.seed,
                     classes=int(output[0]) if dense else None)
    if len(data.x_train) == 0:
        raise CnnDslError("the training split is empty",
                          hint="give more images (an .npz's x_train must not be empty), or lower the train "
                               "section's val_split (the test part's fraction, 0.2 by default)")
    classes = _check_classes(net, data)

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    from ..weights import check_weights, init_weights

    if saved_state is not None:
        weights = check_weights(net, saved_model, origin=f"the checkpoint in {run_dir}")
    else:
        weights = init_weights(net, cfg.seed)
        measure_standardize(net, data.x_train, weights)

    started_group = False
    if options.backend == "torch":
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
                started_group = True
        engine = TorchEngine(net, weights, cfg, distributed=world > 1)
    else:
        engine = NumpyEngine(net, weights, cfg)
    start = 0
    if saved_state is not None:
        engine.load_optimizer_arrays(saved_optimizer)
        ckpt.set_rng_state(saved_state.get("rng", {}))
        start = int(saved_state["epoch"])
        if rank == 0:
            ckpt.trim_metrics(run_dir, start)

    n = len(data.x_train)
    value_range = float(data.x_train.max() - data.x_train.min()) or 1.0
    steps_per_epoch = math.ceil(n / cfg.batch)
    if n % cfg.batch == 1 and n > 1 and any(isinstance(node, ir.BatchNorm) for node in net.ir.walk()):
        steps_per_epoch -= 1  # batch norm cannot take a batch of one sample: the last one is left out
    schedule = Schedule(cfg.schedule, cfg.lr, cfg.epochs, steps_per_epoch, cfg.schedule_args)
    interactive = sys.stderr.isatty() if options.progress is None else options.progress
    log = options.log if options.log is not None else (lambda line: print(line, file=sys.stderr, flush=True))
    progress = _Progress(interactive and rank == 0, log if rank == 0 else None)
    record = config_record(cfg, options, world)
    metrics: list[dict[str, Any]] = []

    for epoch in range(start, cfg.epochs):
        began = time.perf_counter()
        order = np.random.default_rng(derived_seed(cfg.seed, epoch, 0)).permutation(n)
        aug_rng = np.random.default_rng(derived_seed(cfg.seed, epoch, 1))
        engine.start_epoch(cfg.seed, epoch, rank)
        progress.start(epoch + 1, cfg.epochs, steps_per_epoch)
        loss_sum, correct, seen, lr = 0.0, 0, 0, cfg.lr
        for step in range(steps_per_epoch):
            index = order[step * cfg.batch:(step + 1) * cfg.batch]
            x, y = augment_pair(data.x_train[index], data.y_train[index] if dense else None, net.ir.augment,
                                aug_rng, value_range)
            y = data.y_train[index] if y is None else y
            lr = lr_at(schedule, epoch, step)
            if world > 1:
                if len(index) < world:
                    continue  # a last batch too small to give every process a sample
                part = np.array_split(np.arange(len(index)), world)[rank]
                batch_loss, batch_correct = engine.train_step(x[part], y[part], lr, world / len(index))
                batch_loss /= world
            else:
                batch_loss, batch_correct = engine.train_step(x, y, lr, 1.0 / len(index))
            if not math.isfinite(batch_loss):
                raise CnnDslError(f"the loss became {batch_loss} in epoch {epoch + 1}, step {step + 1}",
                                  hint="lower the learning rate (--lr) or add preprocessing (scale, standardize)")
            loss_sum += batch_loss * len(index)
            correct += batch_correct
            seen += len(index)
            progress.advance(batch_loss)
        if world > 1:  # each rank added its share of every global batch; the sum is the whole
            loss_sum, correct = engine.all_reduce([loss_sum, float(correct)])
        val_acc, miou = _scores(engine, data.x_test, data.y_test, classes)
        seconds = time.perf_counter() - began
        entry = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                 "val_acc": val_acc, "lr": lr, "seconds": round(seconds, 4)}
        if dense:
            entry["miou"] = miou
        metrics.append(entry)
        test = f"{100 * val_acc:.2f}%" if val_acc is not None else "-"
        iou = (f"  miou {miou:.4f}" if miou is not None else "  miou -") if dense else ""
        line = (f"epoch {epoch + 1}/{cfg.epochs}  loss {entry['loss']:.4f}  train {100 * entry['train_acc']:.2f}%  "
                f"test {test}{iou}  lr {lr:.4g}  {seconds:.1f}s")
        if rank == 0:
            ckpt.append_metrics(run_dir, entry)
            state = {"network": net.name, "source": os.fspath(net.source.path), "config": record,
                     "rng": ckpt.rng_state(), "steps": engine.steps, "metrics": entry,
                     "classes": data.classes}
            ckpt.save_checkpoint(run_dir, epoch + 1, engine.weights(), engine.optimizer_arrays(), state)
        progress.end(line)

    if metrics:
        final_acc, final_miou = metrics[-1]["val_acc"], metrics[-1].get("miou")
    else:
        final_acc, final_miou = _scores(engine, data.x_test, data.y_test, classes)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if started_group:
            dist.destroy_process_group()
    return TrainResult(run_dir, cfg.epochs, final_acc, metrics, engine.weights(), final_miou)
