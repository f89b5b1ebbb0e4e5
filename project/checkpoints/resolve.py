"""From a run, a sweep or a file to the checkpoint file a command reads."""
import logging
from pathlib import Path

from project.errors import UserError
from project.rundirs import lock as rundir

log = logging.getLogger(__name__)

FILES = {"best": "best_model.pth", "last": "last.pth", "final": "final_model.pth"}
FILE_FOR_MODE = {"full": "last.pth", "reset_optimizer": "best_model.pth"}


def checkpoint_path(target, checkpoint: str = "best") -> Path:
    """A run dir's checkpoints/<checkpoint> file, or the file itself."""
    target = Path(target).expanduser()
    if target.is_file():
        return target
    if checkpoint not in FILES:
        raise UserError(f"--checkpoint {checkpoint} is unknown: use best, last or final (or pass a .pth file).")
    for candidate in (target / "checkpoints" / FILES[checkpoint], target / FILES[checkpoint]):
        if candidate.is_file():
            return candidate
    raise UserError(f"{str(target)!r} is neither a checkpoint file nor a run dir with checkpoints/{FILES[checkpoint]}. "
                    "Pass a run directory (outputs/<date>/<time>) or a .pth file.")


def inspect_file(path) -> Path:
    """A .pth as given; a run directory means its checkpoints/last.pth."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.pth", path / "last.pth"):
            if candidate.is_file():
                return candidate
        raise UserError(f"{str(path)!r} is a directory without checkpoints/last.pth. Pass a .pth file or a run "
                        "directory (outputs/<date>/<time>).")
    return path


def find_checkpoint(spec: str, mode: str, search_dirs: list[Path], exclude: Path) -> Path:
    """Resolve resume.checkpoint (latest | a .pth file | a run directory) to one file."""
    name = FILE_FOR_MODE[mode]
    if spec == "latest":
        candidates = sorted((p for d in search_dirs if d.is_dir() for p in d.rglob(f"checkpoints/{name}")
                             if exclude not in p.parents), key=lambda p: p.stat().st_mtime, reverse=True)
        live, trials = [], []  # newest first; resume=full never continues a run that is still training
        for path in candidates:
            marked = limited_run(path)
            if marked:  # a debug run or another trial (trainer.limit_*_batches, overfit_batches): never picked
                trials.append(path.parents[1])
                log.info("resume.checkpoint=latest skips %s: a limited run (%s), a trial rather than a training "
                         "run. To continue it anyway, name it: resume.checkpoint=%s", trials[-1],
                         ", ".join(f"trainer.{k}={v}" for k, v in marked.items()), trials[-1])
                continue
            if mode != "full" or not rundir.is_locked(path.parents[1]):
                return path
            live.append(path.parents[1])
            log.warning("resume.checkpoint=latest skips %s: %s", live[-1], still_training(live[-1]))
        where = " or ".join(str(d) for d in search_dirs)
        busy = f" ({len(live)} run(s) with one are still training, e.g. {live[0]})" if live else ""
        busy += f" ({len(trials)} limited run(s) skipped, e.g. {trials[0]})" if trials else ""
        raise UserError(
            f"resume.checkpoint=latest found no run with checkpoints/{name} under {where}{busy}. Train one "
            "first (python run.py), or name the checkpoint: resume.checkpoint=/path/to/run_dir or /path/to/file.pth.")
    path = Path(spec).expanduser()
    source = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if mode == "full" and source.is_dir() and source.resolve() != exclude.resolve() and rundir.is_locked(source):
        raise UserError(f"resume=full of {source}, but {still_training(source)} Continuing it now would train it "
                        "twice at once. Wait for it to end or stop it (its last.pth is then saved), then run this "
                        "again; or start from its best weights with resume=reset_optimizer.")
    if path.is_dir():
        for candidate in (path / "checkpoints" / name, path / name):
            if candidate.is_file():
                return candidate
        raise UserError(f"resume.checkpoint={spec!r} is a directory without checkpoints/{name}, which "
                        f"resume={mode} starts from. Pass the run directory that holds it, or a .pth file.")
    if not path.exists():
        raise UserError(f"resume.checkpoint={spec!r} does not exist. Pass a .pth file, a run directory "
                        "(outputs/<date>/<time>), or latest.")
    return path


def limited_run(path: Path) -> dict | None:
    """A checkpoint's `limited` mark ({"limit_train_batches": 3, ...}: a run that trained or validated on part of
    the data, or overfit a few batches), read with its tensors memory-mapped (not loaded); None for a full run, a
    file written before the mark existed, or one that does not load (the resume reports that when it loads it)."""
    import torch

    from project.checkpoints import files

    try:
        with torch.serialization.safe_globals(files.numpy_scalar_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return state.get("limited") if isinstance(state, dict) else None


def still_training(run_dir: Path) -> str:
    return f"it is still training ({rundir.describe(rundir.holder(run_dir))})."
