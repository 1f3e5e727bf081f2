"""Writing outputs: atomically, and never over something the user wrote."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import CnnDslError

GENERATED_MARK = b"cnndsl"  # every generated file carries it near its start
SUFFIX = {"torch": ".py", "numpy": ".py", "onnx": ".onnx"}


def default_output(net, target: str) -> Path:
    source = Path(net.source.path)
    stem = source.stem if net.source.path != "<string>" else net.name
    suffix = SUFFIX[target]
    name = f"{stem}_{target}{suffix}" if target != "onnx" else f"{stem}{suffix}"
    return source.with_name(name) if net.source.path != "<string>" else Path(name)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never half of it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary open() would have.
        os.chmod(tmp, _existing_mode(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _existing_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def check_output(path: Path, net=None, force: bool = False) -> None:
    """Refuse, with a clear error, to write where `cnndsl compile` must not: over the network's own
    source (even with `force`), over a file cnndsl did not write (unless `force`), or into a folder
    that does not exist."""
    path = Path(path)
    source = net.source.path if net is not None else "<string>"
    if source != "<string>" and path.exists() and path.resolve() == Path(source).resolve():
        raise CnnDslError(f"refusing to write the compiled model over its source {path}",
                          hint="choose another output with -o")
    if path.exists() and not force:
        with open(path, "rb") as handle:
            head = handle.read(4096)
        if GENERATED_MARK not in head:
            raise CnnDslError(f"{path} exists and was not written by cnndsl; not overwriting it",
                              hint="choose another output with -o, or pass --force to replace it")
    if not path.parent.exists():
        raise CnnDslError(f"the folder {path.parent} does not exist", hint="create it or choose another -o")


def write_output(path: Path, data: bytes, net, force: bool = False) -> None:
    check_output(path, net, force)
    write_atomic(Path(path), data)
