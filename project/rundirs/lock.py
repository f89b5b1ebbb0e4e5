"""One process per run dir: an exclusive OS lock (fcntl.flock) on `<run dir>/.lock` while the run trains.

The lock file names its holder (pid, host, since, SLURM job id) so a refused process can say who has the dir.
flock is released by the OS when its holder dies (a SIGKILL, an OOM kill), so a killed run's dir is taken over
without asking. A requeued SLURM job on another node of a shared file system may find its dead predecessor's
lock still held for a while: with the same SLURM_JOB_ID it waits for it (at most `REQUEUE_WAIT_S`) instead of
refusing. On file systems where flock is not shared between hosts (some NFS setups) the lock protects against
processes on the same host only; see the README.
"""
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from datetime import datetime
from pathlib import Path

from project.errors import RunDirUnavailable

LOCK_NAME = ".lock"
REQUEUE_WAIT_S = 120
_held: dict[Path, int] = {}  # run dir -> file descriptor, kept open (and locked) for the life of the process


def holder(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def is_locked(run_dir: Path) -> bool:
    """True while a live process (this one included) holds the run dir."""
    path = Path(run_dir) / LOCK_NAME
    if Path(run_dir).resolve() in _held:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def holder_summary(info: dict) -> str:
    if not info:
        return "another process"
    slurm = f", SLURM job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since')}{slurm})"


def check_writable(run_dir: Path) -> None:
    """A run dir that cannot be written is a clean error before anything else happens."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunDirUnavailable(f"The run dir {run_dir} cannot be written ({os.strerror(e.errno) if e.errno else e}: "
                        f"{'read-only file system' if e.errno == errno.EROFS else 'no permission or no such place'}"
                        "). Give it a place you can write: hydra.run.dir=/path/you/own (or hydra.sweep.dir=... for a "
                        "sweep), or remount it writable. Nothing was trained or written.") from None


def acquire(run_dir: Path) -> None:
    """Lock the run dir for this process, or raise UserError naming the live holder. Idempotent."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    check_writable(run_dir)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + REQUEUE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            info = holder(run_dir)
            mine = os.environ.get("SLURM_JOB_ID")
            if mine and info.get("slurm_job_id") == mine and time.monotonic() < deadline:
                time.sleep(1)  # our own requeued job: the dead node's lock goes away
                continue
            os.close(fd)
            raise RunDirUnavailable(
                f"The run dir {run_dir} is in use by {holder_summary(info)}: a run is training there, and two "
                "processes writing one run dir would mix their checkpoints and logs. Wait for it to finish or stop it "
                f"(kill {info.get('pid', '<pid>')} saves and exits), then continue it with python run.py resume=full "
                f"resume.checkpoint={run_dir}; or start a separate run without hydra.run.dir. Nothing was written."
            ) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": datetime.now().isoformat(timespec="seconds"),
                             "slurm_job_id": os.environ.get("SLURM_JOB_ID")}).encode())
    _held[run_dir] = fd


# Errors a write can meet that the user fixes outside the program: space, quota, permission, a read-only mount.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS}
# torch's zip writer (inline_container.cc) reports a failed write as a RuntimeError ("unexpected pos ...",
# "PytorchStreamWriter failed writing file ..."); the OSError behind it is chained only when it came from Python
ZIP_WRITER_FAILURE = ("inline_container", "PytorchStreamWriter failed", "unexpected pos")


def disk_errno(error: BaseException) -> int | None:
    """The disk errno (DISK_ERRNOS) behind `error`: an OSError anywhere in its chain (__cause__ and __context__,
    however deep), or an errno named in the text of an error that wraps one without chaining it."""
    todo, seen = [error], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e.errno
        text = str(e)
        for code in sorted(DISK_ERRNOS):
            if os.strerror(code) in text or re.search(rf"\b(errno|error code)[ :=]*{code}\b", text, re.I):
                return code
        todo += [e.__context__, e.__cause__]
    return None


def megabytes(n: int) -> str:
    """0.53 MB, 12 MB: two decimals where a rounded figure could make needed and free look equal."""
    return f"{n / 1e6:.2f} MB" if n < 10e6 else f"{n / 1e6:.0f} MB"


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None


def free_inodes(path: Path) -> int | None:
    try:
        stat = os.statvfs(Path(path).parent)
    except OSError:
        return None
    return stat.f_favail if stat.f_files else None  # f_files 0: the file system does not count inodes


def disk_error(error: BaseException, path: Path, needed: int | None = None):
    """The DiskError for an error while writing `path` (None: not a disk problem, re-raise it as it is).

    A disk errno anywhere in the error's chain makes it one. So does a failure of torch's zip writer that names
    no errno when the file system has less room than the file needs (`needed` bytes): the write ran out of space.
    """
    from project.errors import DiskError

    code, free = disk_errno(error), free_bytes(path)
    if code is None and needed and free is not None and free < needed and \
            any(mark in str(error) for mark in ZIP_WRITER_FAILURE):
        code = errno.ENOSPC
    if code is None:
        return None
    room = f"{megabytes(free)} free" if free is not None else "free space unknown"
    if code == errno.ENOSPC and free_inodes(path) == 0:
        room += " but no file entries (inodes) left"
    size = f"about {megabytes(needed)} needed, " if needed else ""
    return DiskError(f"Could not write {path}: {os.strerror(code)} ({size}{room} on that file system).")


# .hydra/launch.yaml: {run_py: the run.py that launched the run}. A command that launches run.py again
# (project-sweep continue) takes this one: the installed package need not sit beside a run.py (pip install .)
LAUNCH_RECORD = "launch.yaml"


def write_records(run_dir: Path, cfg, hydra_cfg, overrides: list[str], run_py: Path) -> None:
    """.hydra/{config,hydra,overrides}.yaml as Hydra writes them (OmegaConf.save's text), and launch.yaml naming
    `run_py`, once this process holds the dir."""
    from omegaconf import OmegaConf

    from project.atomic import write_atomic

    records = Path(run_dir) / ".hydra"
    records.mkdir(exist_ok=True)
    write_atomic(records / "config.yaml", OmegaConf.to_yaml(cfg))
    write_atomic(records / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    write_atomic(records / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    launch = OmegaConf.create({"run_py": str(Path(run_py).resolve())})
    write_atomic(records / LAUNCH_RECORD, OmegaConf.to_yaml(launch))


def launched_by(run_dir: Path) -> Path | None:
    """The run.py that launched the run in `run_dir`, as its .hydra/launch.yaml records it; None without a
    readable record (a run dir made before the record existed, or a job killed before writing it)."""
    import yaml

    try:
        recorded = (yaml.safe_load((Path(run_dir) / ".hydra" / LAUNCH_RECORD).read_text()) or {}).get("run_py")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return Path(recorded) if isinstance(recorded, str) and recorded else None


def release(run_dir: Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def remove_if_unused(run_dir: Path, existed: bool) -> bool:
    """A run refused before training leaves nothing behind: remove the dir if this process made it and nothing but
    its lock and Hydra's records are in it. True if removed."""
    run_dir = Path(run_dir)
    if existed or not run_dir.is_dir():
        return False
    left = {p.name for p in run_dir.iterdir()}
    if not left <= {LOCK_NAME, ".hydra", "training.log"}:
        return False
    release(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_dir.parent.name):  # the default outputs/<date>/, if now empty
        try:
            run_dir.parent.rmdir()
        except OSError:
            pass
    return True
