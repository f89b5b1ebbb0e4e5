"""Which folders are run dirs, and the run dirs under a folder (a sweep dir, outputs/, a tree copied from a cluster).

One marker: `.hydra/config.yaml`. run.py writes it (lock.write_records) as soon as its process holds the run dir,
before training starts, so a run dir has it from its first second: a run still in its first epoch, a sweep job
killed before its first checkpoint, a run that failed. The files the commands read come later (metrics.csv with
the first epoch, checkpoints/ and lineage.json with the first save), so each command keeps, of the run dirs found,
those that hold what it reads.
"""
from pathlib import Path

MARKER = Path(".hydra") / "config.yaml"


def is_run_dir(path) -> bool:
    return (Path(path) / MARKER).is_file()


def job_order(path: Path):
    """Sweep jobs 0, 1, ..., 10 in numeric order, other names alphabetically."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(path).parts]


def find_runs(folder) -> list[Path]:
    """The run dirs at or below `folder` (itself included), in job order; none inside W&B's own folders."""
    folder = Path(folder)
    found = {m.parents[1] for m in folder.rglob(str(MARKER)) if "wandb" not in m.relative_to(folder).parts}
    return sorted(found, key=job_order)
