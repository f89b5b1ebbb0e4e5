"""Checkpoint files: atomic writes off the training thread, safe loads, and the keys every file of ours carries.

A checkpoint is a plain dict of tensors and Python values, so `torch.load(path)` (weights_only=True, torch's
default) opens it; nothing in it can run code on load. What goes in it is project/state.py's business.
"""
import hashlib
import os
import pickle
import re
import shutil
import threading
import warnings
from pathlib import Path

import torch

from project import atomic
from project.checkpoints import direct_io
from project.rundirs import lock as rundir
from project.errors import UserError

FORMAT = "project-checkpoint-v2"
FORMAT_V1 = "project-checkpoint-v1"  # main before the one training state (issue 9): still loads
REQUIRED_KEYS = ("format", "epoch", "global_step", "phase", "model_state_dict", "optimizer_state_dict",
                 "scheduler_state_dict", "best_epoch", "config", "rng", "early_stopping", "lineage")


def snapshot(value, into=None):
    """A copy of a state tree on the CPU that later training steps cannot change (tensors copied, containers
    rebuilt, plain values shared: they are immutable). Tensors are saved in the standard (contiguous) layout, so a
    channels-last run's weights and optimizer moments load anywhere as plain tensors.

    `into`: an earlier snapshot of the same tree that nothing reads any more (its write is done). Its tensors are
    refilled where shape and dtype match: for a large model, faulting in freshly allocated pages costs the training
    thread about twice the copy itself (a 335 MB state: 150 ms instead of 55 ms on the 2-core CPU VM)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if isinstance(into, torch.Tensor) and into.shape == value.shape and into.dtype == value.dtype:
            return into.copy_(value)  # `into` is one of ours: on the CPU, contiguous, shared with nothing
        return value.to("cpu", copy=True, memory_format=torch.contiguous_format)
    if isinstance(value, dict):
        into = into if isinstance(into, dict) else {}
        return {k: snapshot(v, into.get(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        into = into if isinstance(into, (list, tuple)) and len(into) == len(value) else (None,) * len(value)
        return type(value)(snapshot(v, old) for v, old in zip(value, into))
    return value


class BackgroundWriter:
    """Serialises and writes checkpoints in a thread, at most one write in flight.

    The training thread hands over a snapshot() and goes on; `wait()` (called before the next snapshot, before
    forking DataLoader workers and before the run exits) joins the write and re-raises its error, if any.
    Each file is written atomically, so a kill during a write leaves the earlier files intact.
    """

    def __init__(self):
        self._thread, self._error = None, None
        self._copy = None  # the last snapshot written: the next one refills its tensors (snapshot's `into`)

    def submit(self, state: dict, paths: list[Path], then=None) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(state, paths, then), name="checkpoint-writer")
        self._thread.start()

    def snapshot_and_submit(self, state: dict, paths: list[Path], then=None) -> None:
        """snapshot() the live `state` now, into the buffers of the previous write (done by then), and write it."""
        self.wait()
        self._copy = snapshot(state, into=self._copy)
        self.submit(self._copy, paths, then)

    def _write(self, state: dict, paths: list[Path], then) -> None:
        yield_to_training()
        try:
            save_atomic(state, paths)
            if then is not None:
                then()
        except BaseException as e:  # handed to the training thread at the next wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def yield_to_training() -> None:
    """Lower this thread's scheduling priority (nice 10; Linux applies it per thread): where the training threads
    fill every core, the kernel gives them the CPU and the write takes the gaps (data waits, barriers), instead of
    slowing each step. A write still in flight when the next save comes is joined by a training thread that then
    sleeps, so the write always finishes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), max(os.getpriority(os.PRIO_PROCESS, 0), 10))
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority
        pass


def upgrade(state: dict) -> dict:
    """A v1 file in the v2 layout: optimizer parameter names inside the param groups (as torch writes them for
    named parameters), the mid-epoch train statistics as the train_meter entry. Scaler and EMA were not in v1."""
    state = dict(state, format=FORMAT)
    names = state.pop("optimizer_param_names", None)
    optimizer = state["optimizer_state_dict"]
    if names is not None:
        groups, offset = [], 0
        for group in optimizer["param_groups"]:
            groups.append({**group, "param_names": names[offset:offset + len(group["params"])]})
            offset += len(group["params"])
        state["optimizer_state_dict"] = {**optimizer, "param_groups": groups}
    meter = state.pop("epoch_meter", None)
    loss_sum = state.pop("epoch_loss_sum", 0.0)
    state["train_meter"] = None if meter is None else {
        "loss_sum": torch.tensor(loss_sum, dtype=torch.float64), "meter": meter}
    state.setdefault("scaler_state_dict", {})
    return state


def save_atomic(state: dict, paths: list[Path]) -> None:
    """Serialise `state` once, into a temp file beside the first path (fsync), then give it every name: hard
    links renamed into place (one copy on disk for last.pth, best_model.pth, ...; a file system without hard
    links gets copies), each folder fsynced last.

    A process killed at any instant leaves each name with either its old complete file or the new one, never a
    partial one; a leftover `.tmp` is ignored by every reader and removed at the next start. Checkpoint files
    are only ever replaced, never rewritten in place, so names sharing one file never see each other's writes.
    """
    paths = [Path(p) for p in paths]
    try:
        _publish(state, paths)
    except Exception as e:
        # a full disk, a quota, a read-only mount, wherever in the save it struck: the OSError itself, or torch's
        # zip writer's RuntimeError ("unexpected pos ...") with the OSError in its chain or the room too small
        # (the temp files are gone already: atomic.replacing removes them)
        error = rundir.disk_error(e, paths[0], serialized_size(state))
        if error is None:
            raise
        raise error from None


def _publish(state: dict, paths: list[Path]) -> None:
    with atomic.replacing(paths[0]) as tmp:
        with direct_io.open_file(tmp) as f:  # past the page cache where it can, fsynced before any name is given
            serialise(state, f)
        for path in paths[1:]:
            with atomic.replacing(path) as link:
                try:
                    os.link(tmp, link)
                except OSError as e:  # no hard links here (some network or FAT file systems): a full copy
                    if e.errno in rundir.DISK_ERRNOS:
                        raise
                    shutil.copyfile(tmp, link)
                    atomic.fsync_path(link)
    for folder in {p.parent for p in paths}:
        atomic.fsync_path(folder)


def serialise(state: dict, f) -> None:
    """torch.save without the zip records' CRC-32: torch.load never checks it (a flipped byte loads silently either
    way), and computing it was two thirds of serialising a 335 MB checkpoint (about 200 of 310 ms on the 2-core CPU
    VM), CPU taken from training at every save. Only a zip tool's own check (`unzip -t`) notices its absence;
    truncated or torn files are what the atomic rename and the load's own checks guard against."""
    crc32 = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)  # a process-wide switch: only for the time of this save
    try:
        torch.save(state, f)
    finally:
        torch.serialization.set_crc32_options(crc32)


class _Counter:
    """A file that keeps only the number of bytes written to it."""

    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def serialized_size(state: dict) -> int | None:
    """The exact size of `state`'s file (torch.save into a counter: CPU time, no memory, no disk); None if it
    cannot be serialised at all."""
    counter = _Counter()
    try:
        torch.save(state, counter)
    except Exception:  # noqa: BLE001 - the save's own error is the one to report
        return None
    return counter.size


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_sentence(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = lines[-2] if "Weights only load failed" in str(error) and len(lines) > 2 else (lines or ["no detail"])[0]
    return text.split(". ")[0].rstrip(".")[:200]


def numpy_scalar_globals() -> list:
    """What a numpy scalar in a checkpoint needs (a `best_f_score` saved as np.float64, common in user scripts):
    the scalar constructor and the dtypes. Only these are allow-listed for weights_only loading."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    kinds = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
    return [core.multiarray.scalar, np.dtype, *(type(np.dtype(k)) for k in kinds)]


def read(path: Path, map_location="cpu", mmap: bool = False):
    """Read any checkpoint file safely (torch.load with weights_only=True; numpy scalars allowed; .safetensors
    through safetensors); every failure is a UserError that names the file and the fix. The one place in project/
    that reads a checkpoint file (open one through opening.open_checkpoint). `mmap`: a .pth's tensors mapped,
    not loaded (to read a small entry of a large file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {str(path)!r} does not exist. Pass resume.checkpoint=<a .pth file or a run "
                        "directory>, or resume.checkpoint=latest for the newest run under outputs/ and multirun/.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device=str(map_location))
        except (SafetensorError, OSError) as e:
            raise UserError(f"{str(path)!r} is not a readable .safetensors file ({_first_sentence(e)}). Use an "
                            "intact file.") from None
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(numpy_scalar_globals()):
            warnings.simplefilter("ignore")  # pickle-protocol chatter on foreign files; the error below says it all
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        blocked = re.search(r"GLOBAL (\S+)", str(e))
        if blocked:  # the file asks to call Python code: weights_only refused before anything ran
            raise UserError(
                f"Refused to load {str(path)!r}: it references the Python callable {blocked.group(1)}, which safe "
                "loading blocks, so nothing in it was executed. Checkpoints hold only tensors and plain values; if "
                "you trust the file, re-save its weights as a plain state dict and continue from that: python -c "
                f"\"import torch; torch.save(torch.load('{path}', weights_only=False)['model_state_dict'], "
                "'weights.pth')\" (name the key that holds the weights).") from None
        raise UserError(
            f"Checkpoint {str(path)!r} is truncated or corrupt, or not a PyTorch checkpoint, and cannot be read "
            f"safely ({_first_sentence(e)}); nothing in it was executed. Use an intact file instead, e.g. an earlier "
            "checkpoint_epoch_N.pth or best_model.pth of the same run (resume.checkpoint=... to resume from it).") from None
    except Exception as e:  # zip reader errors, EOF, bad magic: the bytes are broken
        raise UserError(
            f"Checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({type(e).__name__}: "
            f"{_first_sentence(e)}). Use an intact file instead, e.g. an earlier checkpoint_epoch_N.pth or "
            "best_model.pth of the same run (resume.checkpoint=... to resume from it).") from None


def is_ours(state) -> bool:
    return isinstance(state, dict) and state.get("format") in (FORMAT, FORMAT_V1)


def load(path: Path, map_location="cpu") -> dict:
    """Load and check one of our checkpoints (v1 files upgraded); a foreign file is a UserError here (resume
    reads those through project/foreign.py)."""
    return check(path, read(path, map_location))


def check(path: Path, state) -> dict:
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_V1):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise UserError(
            f"{str(path)!r} is not a checkpoint of this framework (expected a dict with format={FORMAT!r}; found "
            f"{found}). Resume from a .pth written by run.py (checkpoints/last.pth, best_model.pth, ...).")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise UserError(f"Checkpoint {str(path)!r} lacks the keys {missing}; it is incomplete or from an "
                        "incompatible version. Resume from another checkpoint of the run.")
    return upgrade(state) if state["format"] == FORMAT_V1 else state


def prune_periodic(ckpt_dir: Path, keep_last: int | None, protect: set[int] = frozenset()) -> None:
    """Keep the newest `keep_last` checkpoint_epoch_N.pth and those of the epochs in `protect` (the ends of
    phases); last, best, final and phase-best files are never touched."""
    if keep_last is None:
        return
    periodic = sorted(ckpt_dir.glob("checkpoint_epoch_*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    for old in periodic[:-keep_last]:
        if int(old.stem.rsplit("_", 1)[1]) not in protect:
            old.unlink(missing_ok=True)


# What a seamless continuation must reproduce: every tensor and value of these entries (Adam's exp_avg,
# exp_avg_sq and step included; the scheduler; the RNG states; the scaler and the EMA copy when present).
WHOLE_STATE = ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "rng", "scaler_state_dict",
               "ema_state_dict", "ema_updates", "epoch", "global_step", "best_epoch")


def difference(a, b, where: str = "checkpoint") -> str | None:
    """Where two state trees first differ (tensors bit for bit, dtype included; a list or dict of another length
    differs), or None when they are equal."""
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return None if same else f"{where} differs"
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            other = set(b) if isinstance(b, dict) else set()
            return f"{where}: keys {sorted(map(str, set(a) ^ other))}"
        return next((d for k in a if (d := difference(a[k], b[k], f"{where}[{k!r}]"))), None)
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return f"{where}: lengths {len(a)} vs {len(b) if isinstance(b, (list, tuple)) else type(b).__name__}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := difference(x, y, f"{where}[{i}]"))), None)
    return None if a == b else f"{where}: {a!r} != {b!r}"


def state_difference(a: dict, b: dict) -> str | None:
    """Where two checkpoints' training states (WHOLE_STATE; entries absent from both are skipped) first differ,
    or None when a run that was stopped and continued holds exactly what an uninterrupted run holds."""
    for key in WHOLE_STATE:
        if (key in a) != (key in b):
            return f"{key} only in one checkpoint"
        if key in a and (found := difference(a[key], b[key], key)):
            return found
    if not a["optimizer_state_dict"]["state"]:
        return "no optimizer state to compare"
    return None
