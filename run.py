"""Train, or continue a run: python run.py [resume=full|reset_optimizer] [key=value ...]  (see README.md)."""
import logging
import os
import sys
import textwrap
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from project.rundirs import lock as rundir
from project.errors import DiskError, Interrupted, RunDirUnavailable, TrainingDiverged, UserError, WorkerDied

log = logging.getLogger("run")

# 2: bad input, nothing written; 3: the loss became NaN/inf; 4: the disk is full or unwritable; 5: a DataLoader
# worker died (out of memory, kill -9); 130/143: stopped by SIGINT/SIGTERM after saving (see main)
EXIT_CODES = {UserError: 2, TrainingDiverged: 3, DiskError: 4, WorkerDied: 5}


def user_error(e: BaseException | None) -> UserError | TrainingDiverged | None:
    """The error meant for the user behind an exception (hydra.utils.instantiate wraps what a component raises)."""
    while e is not None and not isinstance(e, tuple(EXIT_CODES)):
        e = e.__cause__ or e.__context__
    if e is not None and "\nOriginal Traceback" in str(e):  # raised in a DataLoader worker: torch re-raises it in
        e = type(e)(str(e).rstrip().splitlines()[-1].split(": ", 1)[-1])  # this process with the worker's traceback
    return e


def quiet_logging() -> None:
    """Ranks other than 0: no training.log (rank 0's), warnings and errors only on the console."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
        else:
            handler.setLevel(logging.WARNING)


def report_rank_error(run_dir: Path, rank: int, error: BaseException) -> None:
    import traceback

    with open(run_dir / f"rank_{rank}.log", "a") as f:
        f.write("".join(traceback.format_exception(error)))
    print(f"rank {rank} failed: {type(error).__name__}: {error} (see {run_dir / f'rank_{rank}.log'})", file=sys.stderr)


def exit_code(error: BaseException) -> int:
    return next(code for kind, code in EXIT_CODES.items() if isinstance(error, kind))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    logging.raiseExceptions = False  # a full disk under training.log must not print tracebacks; saves report it
    hc = HydraConfig.get()
    cwd, run_dir, multirun = Path(os.getcwd()), Path(hc.runtime.output_dir), hc.mode.name == "MULTIRUN"
    made_now = run_dir.is_dir() and not any(run_dir.iterdir())  # Hydra has just made it (it writes nothing else)
    job = {"overrides": list(hc.overrides.task),
           "choices": {g: c for g, c in hc.runtime.choices.items() if c is not None and not g.startswith("hydra")},
           "sweep_dir": str(Path(hc.sweep.dir).resolve()) if multirun else None}
    from project import distributed  # torch is imported here, after Hydra has parsed the command line

    dist = distributed.init(cfg.trainer.dist_timeout_s)  # one process unless torchrun or SLURM tasks say otherwise
    if dist.enabled:  # one run dir per job: rank 0's; the others remove the one Hydra made for them
        own, run_dir = run_dir, Path(distributed.broadcast(str(run_dir)))
        if not dist.main:
            quiet_logging()
            if own != run_dir:
                rundir.remove_if_unused(own, not made_now)
    try:
        if dist.main:
            rundir.acquire(run_dir)  # one process per run dir, before anything is written into it
            rundir.write_records(run_dir, cfg, hc, job["overrides"], Path(__file__))  # what launched it
        from project.recipe.train import train

        summary = train(cfg, run_dir, [cwd / "outputs", cwd / "multirun"], job)
    except Exception as e:
        error = user_error(e)
        if not dist.main:  # the ranks other than 0 write only when they have an error to report
            report_rank_error(run_dir, dist.rank, e)
        if error is None:
            raise
        refused = not multirun and type(error) is UserError and rundir.remove_if_unused(run_dir, not made_now)
        if not (refused or isinstance(error, RunDirUnavailable)):
            log.error("Error: %s", error)  # training.log keeps it too (never another process's log)
        if multirun:
            raise error from None  # the launcher records this job as failed and goes on with the others
        print("\n" + textwrap.fill(f"Error: {error}", width=110, break_long_words=False, break_on_hyphens=False),
              file=sys.stderr)
        sys.exit(exit_code(error))
    distributed.close()
    if summary["status"].startswith("interrupted"):
        signum = summary["signal"]  # stopped by a signal after saving last.pth: not a finished run
        if multirun:
            raise Interrupted(f"stopped by {signum.name} after saving last.pth; continue it with the rerun command")
        sys.exit(128 + signum)  # 130 for SIGINT, 143 for SIGTERM, as shells expect
    return summary["best_score"]  # what a Hydra sweeper would optimise


if __name__ == "__main__":
    main()
