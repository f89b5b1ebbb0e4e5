"""Restore: load what the resume plan says into the built state, score a continuation's starting weights, and
take over another script's file as far as it goes."""
import logging
from pathlib import Path

from project import distributed, resume
from project.checkpoints import foreign
from project.data import splits
from project.errors import UserError
from project.recipe.epoch_end import save
from project.recipe.messages import format_metrics, say_foreign_restored
from project.recipe.run import Run
from project.recipe.validation import validate
from project.runtime import restore_history
from project.state import load_state_dicts
from project.data.normalisation import named

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


def restore(run: Run, plan) -> None:
    """Load what the plan says into the built state (state.RESTORES), in the registry's order."""
    if plan is None:
        return
    progress, saved = run.progress, plan.checkpoint
    if plan.mode == "reset_optimizer":  # weights only: a new run that descends from the checkpoint
        resume.load_matching_weights(run.model, saved, plan.path, run.cfg.resume.ignore_keys,
                                     run.cfg.resume.get("weights_key"))
        progress.lineage = saved["lineage"] + [plan.lineage_entry]
        if saved["best_score"] is not None:
            progress.parent_best = {"score": saved["best_score"], "epoch": saved["best_epoch"], "path": str(plan.path),
                                    "foreign": plan.foreign, "monitor": saved.get("monitor")}
    elif plan.foreign:
        restore_foreign(run, plan)
    else:
        resume.check_weights_fit(run.model, saved["model_state_dict"], plan.path)
        fresh = load_state_dicts(run.state, saved, plan.restores)
        if fresh:
            log.info("Not in the checkpoint, so starting fresh: %s", ", ".join(fresh))
        if saved.get("monitor") and saved["monitor"] != run.final.monitor:  # loss.metric changed: not comparable
            log.info("The checkpoint's best %s %.4f is another metric than %s: the best score starts afresh.",
                     saved["monitor"], progress.best_score or float("nan"), run.final.monitor)
            progress.best_score, progress.best_epoch, progress.best_per_class = None, 0, {}
            progress.phase_best.pop(run.phase["key"], None)
        if not plan.is_own:  # a run continuing itself keeps its lineage; a new run descends from the checkpoint
            progress.lineage = progress.lineage + [plan.lineage_entry]
        if distributed.current().main:
            for name in ("metrics.csv", "per_class.csv"):  # the rows it continues, nothing later
                restore_history(Path(saved["run_dir"]) / name, run.run_dir / name, saved["epoch"])
        run.last_saved = (plan.path, saved["epoch"])
    other_split = splits.differs(saved.get("data_split"), run.data.get("split"))
    if other_split:
        log.warning("Note: %s.", other_split)
    if progress.lineage:
        log.info("Lineage: %s", " -> ".join(lineage_step(e) for e in progress.lineage))


def score_start(run: Run) -> None:
    """A continuation from other weights scores them first, here: same data, same metric, a metrics.csv row with
    phase "start". They are the first candidate for best_model.pth, so a run never ends with worse weights than
    it started from; a best score stored in the file (another metric, other data, another script) gates nothing."""
    progress, objective = run.progress, run.objective
    if objective.monitor != run.final.monitor:  # a pretraining phase first: its score is not the final metric
        log.info("Starting weights not scored: the first phase (%s) reports %s, not %s.", run.phase["name"],
                 objective.monitor, run.final.monitor)
        return
    val, per_class, _ = validate(run, run.validated_model)
    score = val[objective.monitor]
    progress.start_score = {"score": score, "epoch": progress.epoch, "metric": objective.monitor}
    progress.best_score, progress.best_epoch, progress.best_per_class = score, progress.epoch, per_class
    progress.val_metrics = val
    tracker = run.tracker
    tracker.log_epoch({"epoch": progress.epoch, "phase": "start", **{f"val_{k}": v for k, v in val.items()}})
    if per_class:
        tracker.log_per_class({"epoch": progress.epoch, "phase": "start", **per_class})
    save(run, ["best_model.pth"])
    log.info("Starting weights, scored here: val %s %.4f (%s)%s | the first candidate for best_model.pth",
             objective.monitor, score, format_metrics(val), named(run.data))


def restore_foreign(run: Run, plan) -> None:
    """resume=full from a file another script wrote: weights, optimizer state, epoch and best score, as far as it
    has them; everything else starts fresh, and the table says so. Not a bit-exact continuation."""
    saved, progress, optimizer = plan.checkpoint, run.progress, run.optimizer
    weights, stripped = foreign.strip_prefixes(saved["model_state_dict"], run.model.state_dict())
    resume.check_weights_fit(run.model, weights, plan.path)
    why = foreign.fits_optimizer(saved["optimizer_state_dict"], optimizer)
    if why:
        raise UserError(f"The optimizer state in {plan.path} does not fit the optimizer built now: {why}. Start from "
                        "its weights with a fresh optimizer instead: resume=reset_optimizer.")
    run.model.load_state_dict(weights)
    optimizer.load_state_dict(saved["optimizer_state_dict"])
    progress.epoch, progress.global_step = saved["epoch"], saved["global_step"]
    if saved["best_score"] is not None:  # shown, never a gate: another script's metric on other data
        progress.parent_best = {"score": saved["best_score"], "epoch": saved["best_epoch"], "path": str(plan.path),
                                "foreign": True}
    # the LR follows from the restored epoch and the current config, as for our own files
    run.scheduler.load_state_dict({"last_epoch": saved["epoch"] - progress.phase_start})
    progress.lineage = [plan.lineage_entry]
    say_foreign_restored(plan, weights, stripped, optimizer.param_groups[0]["lr"])


def lineage_step(entry: dict) -> str:
    """`path@epoch (mode)`; another script's file adds that its epoch is its own count (epoch_note)."""
    note = f"; {entry['epoch_note']}" if entry.get("epoch_note") else ""
    return f"{entry['path']}@{entry['epoch']} ({entry['mode']}{note})"
