"""Checkpoints that survive a SIGKILL at any moment.

Layout of a run folder:

    RUN_DIR/state.json                       the commit point: epoch, config, RNG states, and the
                                             folder holding this epoch's tensors
    RUN_DIR/checkpoints/epoch-NNNN/          model.safetensors, optimizer.safetensors, state.json
    RUN_DIR/model.safetensors                the same files as in the current epoch folder
    RUN_DIR/optimizer.safetensors            (hard links; copies where links are impossible)
    RUN_DIR/metrics.jsonl                    one JSON line per finished epoch

Saving epoch N: every file of `checkpoints/epoch-N/` is written and fsynced, then
`RUN_DIR/state.json` is replaced atomically (the switch), then the top-level tensor files are
replaced atomically and older epoch folders removed. A kill before the switch leaves the previous
checkpoint in force; after it, the new one. Each safetensors file carries its epoch in its
metadata, and loading checks that the three agree.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnDslError
from ..outputs import write_atomic

FORMAT = 1
STATE = "state.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
METRICS = "metrics.jsonl"
FOLDER = "checkpoints"


def _safetensors_bytes(arrays: dict[str, np.ndarray], epoch: int, kind: str) -> bytes:
    from safetensors.numpy import save

    # np.array, not np.ascontiguousarray: the latter turns 0-d tensors (preprocess.scale, step) into 1-d
    data = {name: np.array(value, order="C") for name, value in arrays.items()}
    return save(data, metadata={"epoch": str(epoch), "cnndsl": kind})


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _publish(source: Path, target: Path) -> None:
    """Make `target` the same file as `source`, atomically (hard link, else a copy)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def epoch_folder(epoch: int) -> str:
    return f"{FOLDER}/epoch-{epoch:04d}"


def save_checkpoint(run_dir: Path, epoch: int, model: dict[str, np.ndarray], optimizer: dict[str, np.ndarray],
                    state: dict[str, Any]) -> None:
    """Write the checkpoint of finished epoch `epoch` (1-based count of finished epochs)."""
    run_dir = Path(run_dir)
    rel = epoch_folder(epoch)
    folder = run_dir / rel
    if folder.exists():  # left over by a run killed before its switch
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    state = dict(state, format=FORMAT, epoch=epoch, checkpoint=rel)
    write_atomic(folder / MODEL, _safetensors_bytes(model, epoch, "model"))
    write_atomic(folder / OPTIMIZER, _safetensors_bytes(optimizer, epoch, "optimizer"))
    write_atomic(folder / STATE, json.dumps(state, indent=1).encode())
    _fsync_dir(folder)
    _fsync_dir(folder.parent)
    write_atomic(run_dir / STATE, json.dumps(state, indent=1).encode())  # the switch
    _fsync_dir(run_dir)
    publish(run_dir, rel)
    for old in (run_dir / FOLDER).iterdir():
        if old.name != folder.name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def publish(run_dir: Path, rel: str) -> None:
    """Point the top-level model/optimizer files at the checkpoint folder `rel`."""
    for name in (MODEL, OPTIMIZER):
        _publish(run_dir / rel / name, run_dir / name)
    _fsync_dir(run_dir)


def _read_tensors(path: Path, epoch: int) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="numpy") as handle:
            tag = (handle.metadata() or {}).get("epoch")
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # noqa: BLE001 - any unreadable file is a broken checkpoint
        raise CnnDslError(f"cannot read {path}: {err}", hint="the checkpoint is damaged; start a new run") from None
    if tag != str(epoch):
        raise CnnDslError(f"{path} belongs to epoch {tag}, the checkpoint to epoch {epoch}",
                          hint="the checkpoint is inconsistent; start a new run")
    return arrays


def read_state(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CnnDslError(f"cannot read {path}: {err}", hint="the run folder is damaged") from None
    if state.get("format") != FORMAT:
        raise CnnDslError(f"{path} is not a cnndsl checkpoint (format {state.get('format')})",
                          hint=f"this state.json was not written by this cnndsl (format {FORMAT}): train into "
                               "another --out, or --resume a folder `cnndsl train` wrote")
    return state


def load_checkpoint(run_dir: Path, repair: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray],
                                                                 dict[str, np.ndarray]]:
    """(state, model tensors, optimizer tensors) of the last committed epoch; with `repair`, the
    top-level files are re-pointed at it (a kill may have left them one epoch behind)."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    if state is None:
        raise CnnDslError(f"{run_dir} holds no checkpoint (no {STATE})",
                          hint="a run writes its first checkpoint after its first epoch; start a new run")
    epoch, folder = int(state["epoch"]), run_dir / state["checkpoint"]
    model = _read_tensors(folder / MODEL, epoch)
    optimizer = _read_tensors(folder / OPTIMIZER, epoch)
    if repair:
        publish(run_dir, state["checkpoint"])
    return state, model, optimizer


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def trim_metrics(run_dir: Path, epochs: int) -> None:
    """Keep the metrics of the first `epochs` epochs (a killed run may have logged one more)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if isinstance(record, dict) and int(record.get("epoch", 0)) <= epochs:
            keep.append(line)
    write_atomic(path, "".join(f"{line}\n" for line in keep).encode())


def rng_state() -> dict[str, Any]:
    """The global numpy and (if loaded) torch RNG states, JSON-ready (key arrays as base64).

    The loop reseeds everything it draws from per (seed, epoch), so these are kept for code that
    draws from the global generators, not for the resume guarantee."""
    import base64
    import sys

    name, keys, pos, has_gauss, cached = np.random.get_state()
    encoded = base64.b64encode(np.asarray(keys, dtype="<u4").tobytes()).decode()
    out: dict[str, Any] = {"numpy": [name, encoded, int(pos), int(has_gauss), float(cached)]}
    if "torch" in sys.modules:
        import torch

        out["torch"] = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    import base64
    import sys

    if "numpy" in state:
        name, encoded, pos, has_gauss, cached = state["numpy"]
        keys = np.frombuffer(base64.b64decode(encoded), dtype="<u4").astype(np.uint32)
        np.random.set_state((name, keys, pos, has_gauss, cached))
    if "torch" in state and "torch" in sys.modules:
        import torch

        raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
        torch.set_rng_state(torch.from_numpy(raw))
