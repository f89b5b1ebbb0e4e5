"""From "a run, a sweep, a file" to the checkpoint file a command reads: one table of defaults, one lookup.

A file is taken as it is. A run directory (outputs/<date>/<time>, a sweep's job, or its checkpoints/ folder
itself) means one of its files, by command (DEFAULTS):

    command                              file of a run directory
    resume=full                          last.pth: the newest state, to go on as if never stopped
                                         (resume.checkpoint=latest: the newest run's, live and limited runs skipped)
    resume=reset_optimizer               best_model.pth: the validated best weights
    load_model, project-evaluate,        best_model.pth; --checkpoint last | final (load_model's checkpoint=)
      project-predict, project-export      picks last.pth or final_model.pth instead
    project-evaluate on a sweep dir      each job's file as above (jobs without it, failed ones, left out)
    project-inspect                      last.pth: everything a continuation would take
    project-analyze, project-compare     final_model.pth when the run ended, else last.pth (none: no error,
                                         the run's metrics.csv is enough)
"""
import logging
from pathlib import Path

from project.errors import UserError
from project.rundirs import lock as rundir

log = logging.getLogger(__name__)

FILES = {"best": "best_model.pth", "last": "last.pth", "final": "final_model.pth"}
DEFAULTS = {"resume=full": ("last",), "resume=reset_optimizer": ("best",),
            "load_model": ("best",), "evaluate": ("best",), "predict": ("best",), "export": ("best",),
            "inspect": ("last",), "analyze": ("final", "last"), "compare": ("final", "last")}
FILE_FOR_MODE = {mode: FILES[DEFAULTS[f"resume={mode}"][0]] for mode in ("full", "reset_optimizer")}


def in_run(folder: Path, which=("best",)) -> Path | None:
    """The first of the files `which` names (FILES) that the run dir `folder` holds in checkpoints/ (or that a
    checkpoints/ folder holds itself); None when there is none."""
    for name in which:
        for candidate in (Path(folder) / "checkpoints" / FILES[name], Path(folder) / FILES[name]):
            if candidate.is_file():
                return candidate
    return None


def check_name(checkpoint: str) -> None:
    if checkpoint not in FILES:
        raise UserError(f"--checkpoint {checkpoint} is unknown: use best, last or final (or pass a .pth file).")


def checkpoint_file(target, command: str, checkpoint: str | None = None) -> Path:
    """The file `command` (a key of DEFAULTS, not resume: see for_resume) reads for `target`: a file as it is, a
    run dir's file by `checkpoint` (best, last, final) or by the command's default."""
    path = Path(target).expanduser()
    if path.is_file():
        return path
    if command == "inspect":
        if not path.is_dir():
            return path  # files.read says that it does not exist
        found = in_run(path, DEFAULTS[command])
        if found is None:
            raise UserError(f"{str(Path(target))!r} is a directory without checkpoints/last.pth. Pass a .pth file or a "
                            "run directory (outputs/<date>/<time>).")
        return found
    checkpoint = checkpoint or DEFAULTS[command][0]
    check_name(checkpoint)
    found = in_run(path, (checkpoint,))
    if found is None:
        raise UserError(f"{str(path)!r} is neither a checkpoint file nor a run dir with checkpoints/"
                        f"{FILES[checkpoint]}. Pass a run directory (outputs/<date>/<time>) or a .pth file.")
    return found


def in_sweep(folder: Path, checkpoint: str = "best") -> set[Path]:
    """The run dirs under a sweep dir (rundirs/discovery.py's one marker) that hold `checkpoint`'s file."""
    from project.rundirs.discovery import find_runs

    check_name(checkpoint)
    return {r for r in find_runs(folder) if (r / "checkpoints" / FILES[checkpoint]).is_file()}


def final(run_dir: Path) -> Path | None:
    """project-analyze's and project-compare's file: the run's last state."""
    return in_run(run_dir, DEFAULTS["analyze"])


def for_resume(spec: str, mode: str, search_dirs: list[Path], exclude: Path) -> Path:
    """Resolve resume.checkpoint (latest | a .pth file | a run directory) to the file resume=`mode` reads."""
    name = FILE_FOR_MODE[mode]
    if spec == "latest":
        return latest(mode, search_dirs, exclude)
    path = Path(spec).expanduser()
    source = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if mode == "full" and source.is_dir() and source.resolve() != exclude.resolve() and rundir.is_locked(source):
        raise UserError(f"resume=full of {source}, but {still_training(source)} Continuing it now would train it "
                        "twice at once. Wait for it to end or stop it (its last.pth is then saved), then run this "
                        "again; or start from its best weights with resume=reset_optimizer.")
    if path.is_dir():
        found = in_run(path, DEFAULTS[f"resume={mode}"])
        if found is None:
            raise UserError(f"resume.checkpoint={spec!r} is a directory without checkpoints/{name}, which "
                            f"resume={mode} starts from. Pass the run directory that holds it, or a .pth file.")
        return found
    if not path.exists():
        raise UserError(f"resume.checkpoint={spec!r} does not exist. Pass a .pth file, a run directory "
                        "(outputs/<date>/<time>), or latest.")
    return path


def latest(mode: str, search_dirs: list[Path], exclude: Path) -> Path:
    """resume.checkpoint=latest: the newest run's file under `search_dirs` (not `exclude`, this run's own dir);
    limited runs (trials) are skipped, and for resume=full runs still training."""
    name = FILE_FOR_MODE[mode]
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


def limited_run(path: Path) -> dict | None:
    """A checkpoint's `limited` mark ({"limit_train_batches": 3, ...}: a run that trained or validated on part of
    the data, or overfit a few batches), read with its tensors memory-mapped (not loaded); None for a full run, a
    file written before the mark existed, or one that does not load (the resume reports that when it loads it)."""
    from project.checkpoints import files  # imports torch: only when a checkpoint is really read

    try:
        state = files.read(path, mmap=True)
    except UserError:
        return None
    return state.get("limited") if isinstance(state, dict) else None


def still_training(run_dir: Path) -> str:
    return f"it is still training ({rundir.holder_summary(rundir.holder(run_dir))})."
