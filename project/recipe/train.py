"""The training recipe, written out: set up, then for each epoch: enter the phase if it changed, train the epoch,
validate, record, save.

Everything a resume restores is one entry of `run.state` (project/state.py); what to continue from, and what
to restore, is decided before anything is built (project/resume.py). The steps live in this package: run.py
(the run object), setup.py, loop.py, epoch_end.py, restore.py, validation.py, messages.py.
"""
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from project import distributed, resume, runtime
from project.commands import lineage
from project.data.loader import is_worker_death
from project.errors import DiskError, WorkerDied
from project.recipe.loop import train_loop
from project.recipe.messages import announce, overfit_verdict, report, what_is_intact, worker_died_message
from project.recipe.restore import score_start
from project.recipe.run import Run
from project.recipe.setup import close_loaders, setup
from project.runtime import StopRequest
from project.validate import check_config

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


def train(cfg: DictConfig, run_dir: Path, search_dirs: list[Path], job: dict | None = None) -> dict:
    """Train as the config says and return a summary.

    `search_dirs` are where resume.checkpoint=latest looks for runs; `job` describes the Hydra job
    ({"overrides": [...], "sweep_dir": str or None}); with it, resume=full recomposes the continued run's config.
    Bad input raises UserError before any file is written.
    """
    check_config(cfg)
    typed = [o for o in (job or {}).get("overrides", []) if not o.startswith("hydra.")]
    plan = resume.decide(cfg, run_dir, search_dirs, typed if job else None)
    if plan is not None and plan.finished:
        saved = plan.checkpoint
        return {"status": "already finished", "epoch": saved["epoch"], "monitor": saved["monitor"],
                "best_score": saved["best_score"], "best_epoch": saved["best_epoch"], "run_dir": str(run_dir)}
    choices = (job or {}).get("choices", {})
    if plan is not None:
        cfg, config, overrides = plan.cfg, plan.config, plan.overrides
        choices = plan.choices if plan.choices is not None else choices
    else:
        config, overrides = OmegaConf.to_container(cfg, resolve=True), typed

    run = setup(cfg, config, overrides, plan, run_dir, job or {})
    run.choices = choices
    announce(run)
    run.family = lineage.begin(run, plan, job or {})  # rank 0: lineage.json, rewritten at every save
    tracker = run.tracker
    tracker.start()
    run.stop = StopRequest()
    status = "failed"  # stays "failed" if an exception leaves the loop
    try:
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
                tracker.finish(status)  # also on exceptions and signals: a sweep never hangs on an open tracker run
    except DiskError as e:
        raise DiskError(f"{e} {what_is_intact(run)}") from None
    except RuntimeError as e:  # torch's SIGCHLD handler raises it anywhere in this thread when a worker dies
        if not is_worker_death(e):
            explained = runtime.nondeterministic_error(e, run.device)  # trainer.deterministic=true met such an op
            if explained is not None:
                raise explained from None
            raise
        close_loaders(run)
        run.writer.wait()
        raise WorkerDied(worker_died_message(run, e)) from None
    report(run, summary)
    overfit_verdict(run, summary)
    if test_line:
        log.info("%s", test_line)
    return summary


def test_after_fit(run: Run, summary: dict) -> str | None:
    """trainer.test_after_fit: rank 0 scores best_model.pth once on a labelled test/ (project/commands/evaluate.py):
    results.json, test/<metric> in the tracker's summary, the final log line. The test split never picks."""
    if not distributed.current().main:
        return None
    from project.commands.evaluate import after_fit

    return after_fit(run, summary)
