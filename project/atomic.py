"""One atomic write: every file the framework writes is made under a temp name beside its target and renamed into
place, so a kill or a full disk at any instant leaves the target either as it was or whole, never partial.

`write_atomic(path, data)` for data in memory; `replacing(path)` for writers that stream (torch.save, a zip file, a
folder): it yields the temp path, publishes it on a clean exit and removes it on an error. `publish` is the one
rename. Errors are the caller's to word (a checkpoint's DiskError, a command's UserError): nothing is caught here
but the temp file is never left holding space.
"""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def temp_beside(path: Path) -> Path:
    """`.<name>.<pid>.tmp` in the target's folder (the same file system, so the rename is atomic); readers ignore
    dot-files ending in .tmp, and a run removes its checkpoints' leftovers at its next start."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def publish(tmp: Path, path: Path) -> None:
    """Give the finished `tmp` (a file or a folder) the name `path`, replacing what had it, in one rename."""
    os.replace(tmp, path)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename is durable once its folder is synced), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def discard(path: Path) -> None:
    """Remove a temp file or folder if it is there; a read-only mount, where nothing could be written, is no error."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def replacing(path: Path, tmp: Path | None = None, fsync: bool = False):
    """Yield a temp path beside `path` (or `tmp`) for the caller to write; on a clean exit it becomes `path` in one
    rename, on any error it is removed and the error goes on. fsync: the data reaches the disk before the rename,
    and the rename before returning (checkpoints, results a benchmark is judged by)."""
    path = Path(path)
    tmp = temp_beside(path) if tmp is None else Path(tmp)
    # a temp name left by a write that failed half-way may be a hard link to a published file (checkpoints share one
    # file between names): never write through it
    discard(tmp)
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
        publish(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    if fsync:
        fsync_path(path.parent)


def write_atomic(path: Path, data: bytes | str, fsync: bool = False) -> None:
    """Write `data` (str as UTF-8) to `path` atomically (see replacing)."""
    with replacing(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
