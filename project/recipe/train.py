"""The training recipe's lifecycle, read top to bottom in train():

    plan      what to continue from and what to restore, decided before anything is built (project/resume.py)
    setup     build every component from the config, restore the plan's entries (setup.py, restore.py)
    loop      per epoch: enter the phase if it changed, train the epoch (loop.py), then validate, record and
              save (epoch_end.py, validation.py)
    save      close the loaders, the last checkpoint on disk, the tracker finished, whatever ended the loop
    report    the final lines, the overfit verdict, the test score (messages.py)

Everything a resume restores is one entry of `run.state` (project/state.py), read through the run object's
typed properties (run.py).
"""
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from project import distributed, resume, runtime
from project.evaluation import start_inputs
from project.rundirs import lineage
from project.data.loader import is_worker_death
from project.errors import DiskError, UnreadableFile, WorkerDied
from project.recipe import bad_files
from project.recipe.loop import train_loop
from project.recipe.messages import announce, overfit_verdict, report, what_is_intact, worker_died_message
from project.recipe.restore import score_start
from project.recipe.run import Run
from project.recipe.setup import close_loaders, setup
from project.recipe.validation import validation_pass
from project.runtime import StopRequest
from project.config_checks import check_added_keys, check_config

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


def train(cfg: DictConfig, run_dir: Path, search_dirs: list[Path], job: dict | None = None) -> dict:
    """Train as the config says and return a summary: plan, set up, loop (saving as it goes), close, report.

    `search_dirs` are where resume.checkpoint=latest looks for runs; `job` describes the Hydra job
    ({"overrides": [...], "sweep_dir": str or None}); with it, resume=full recomposes the continued run's config.
    Bad input raises UserError before any file is written.
    """
    check_config(cfg)
    job = job or {}
    plan = plan_run(cfg, run_dir, search_dirs, job)
    if plan is not None and plan.finished:
        return already_finished(plan, run_dir)
    run = set_up(cfg, plan, run_dir, job)
    summary, test_line = fit(run, plan)
    report(run, summary)
    overfit_verdict(run, summary)
    if test_line:
        log.info("%s", test_line)
    return summary


def typed_overrides(job: dict) -> list[str]:
    """The overrides the user typed (Hydra's own aside)."""
    return [o for o in job.get("overrides", []) if not o.startswith("hydra.")]


def plan_run(cfg: DictConfig, run_dir: Path, search_dirs: list[Path], job: dict):
    """What to continue from and what to restore, decided before anything is built (project/resume.py); None: a
    fresh run. A key typed with + that nothing takes is refused first (config_checks.check_added_keys)."""
    check_added_keys(cfg, typed_overrides(job))
    return resume.decide(cfg, run_dir, search_dirs, typed_overrides(job) if job else None)


def already_finished(plan, run_dir: Path) -> dict:
    saved = plan.checkpoint
    return {"status": "already finished", "epoch": saved["epoch"], "monitor": saved["monitor"],
            "best_score": saved["best_score"], "best_epoch": saved["best_epoch"], "run_dir": str(run_dir)}


def set_up(cfg: DictConfig, plan, run_dir: Path, job: dict) -> Run:
    """Build the run in the config the plan gives (resume=full recomposes it), say what it is, begin its lineage."""
    choices = job.get("choices", {})
    if plan is not None:
        cfg, config, overrides = plan.cfg, plan.config, plan.overrides
        choices = plan.choices if plan.choices is not None else choices
    else:
        config, overrides = OmegaConf.to_container(cfg, resolve=True), typed_overrides(job)
    run = setup(cfg, config, overrides, plan, run_dir, job)
    start_inputs.check_start(run, plan, typed_overrides(job), validation_pass)  # a foreign file's inputs
    run.choices = choices
    announce(run)
    run.family = lineage.begin(run, plan, job)  # rank 0: lineage.json, rewritten at every save
    return run


def fit(run: Run, plan) -> tuple[dict, str | None]:
    """The loop, then the files closed: (summary, the test line). A full disk or a dead DataLoader worker ends it
    with one paragraph saying what is intact and how to continue."""
    run.tracker.start()
    run.stop = StopRequest()
    try:
        return loop_and_close(run, plan)
    except DiskError as e:
        raise DiskError(f"{e} {what_is_intact(run)}") from None
    except UnreadableFile as e:  # training's batches saved the run before it (bad_files.saving_before)
        raise bad_files.explained(run, e) from None
    except (RuntimeError, ConnectionError, EOFError) as e:  # torch's SIGCHLD handler raises a RuntimeError
        if not is_worker_death(e, run.loaders.values()):  # anywhere in this thread when a worker dies
            explained = runtime.nondeterministic_error(e, run.device) if isinstance(e, RuntimeError) else None
            if explained is not None:
                raise explained from None
            raise
        close_loaders(run)
        run.writer.wait()
        raise WorkerDied(worker_died_message(run, e)) from None


def loop_and_close(run: Run, plan) -> tuple[dict, str | None]:
    """Score the starting weights of a continuation, train, test; then, whatever happened, close the loaders, wait
    for the last checkpoint and finish the tracker."""
    status = "failed"  # stays "failed" if an exception leaves the loop
    try:
        if plan is not None and (plan.mode == "reset_optimizer" or plan.foreign):
            score_start(run)
        summary = train_loop(run)
        status = "interrupted" if summary["status"].startswith("interrupted") else "done"
        test_line = test_after_fit(run, summary) if status == "done" else None  # before the tracker closes
    finally:
        run.stop.close()
        try:
            close_loaders(run)  # the DataLoader workers end with the run
            run.writer.wait()  # the last checkpoint is on disk before the run ends
        finally:
            run.tracker.finish(status)  # also on exceptions and signals: a sweep never hangs on an open tracker run
    return summary, test_line


def test_after_fit(run: Run, summary: dict) -> str | None:
    """trainer.test_after_fit: rank 0 scores best_model.pth once on a labelled test/ (project/commands/evaluate.py):
    results.json, test/<metric> in the tracker's summary, the final log line. The test split never picks."""
    if not distributed.current().main:
        return None
    from project.evaluation.scoring import after_fit

    return after_fit(run, summary)
