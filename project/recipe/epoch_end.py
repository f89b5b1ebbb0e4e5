"""The end of an epoch, step by step: score the epoch's training, validate when due, update the best scores, step the
scheduler, decide early stopping, record the row, save, say it. Saving and the summary keys a checkpoint carries
are here too."""
import functools
import logging
from dataclasses import dataclass, field

from project import distributed, phases
from project.checkpoints import files as checkpoint
from project.rundirs import lineage
from project.recipe.divergence import check_finite
from project.recipe.limits import batches_per_epoch, limits
from project.recipe.messages import report_epoch
from project.recipe.run import Run
from project.recipe.validation import validate
from project.state import state_dicts

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


@dataclass
class EpochEnd:
    """What one epoch's end found, handed from step to step (never saved: `run.progress` keeps what lasts)."""

    epoch: int                     # the epoch just trained, counted from 0
    lr: float                      # the learning rate it trained with (before the scheduler steps)
    trained: int                   # its batches, up to the last optimizer step
    train: dict                    # the job's train loss and metrics
    val: dict = field(default_factory=dict)        # the validation scores; empty: not validated this epoch
    per_class: dict = field(default_factory=dict)
    validated: int | None = None   # validation batches scored
    perf: dict = field(default_factory=dict)       # its images/s, data wait, step time, peak memory (perf_...)
    improved: bool = False         # a new best of the final metric: best_model.pth
    phase_improved: bool = False   # a new best of this phase's metric (early stopping)
    phase_done: bool = False
    finished: bool = False         # the last phase is done: training is over


def end_epoch(run: Run, epoch: int) -> bool:
    """Validate, update best scores and early stopping, record, save. True when training is finished."""
    end = score_training(run, epoch)
    if validation_due(run, epoch):
        validate_epoch(run, end)
    end.improved, end.phase_improved = record_scores(run, end.val, epoch)
    if end.improved:
        run.progress.best_per_class = end.per_class
    step_scheduler(run, end.val)
    decide_stop(run, end)
    record_row(run, end)  # the row goes first: a kill before the save re-does this epoch and drops the row
    save(run, checkpoint_files(run, end))
    report_epoch(run, end)
    return end.finished


def score_training(run: Run, epoch: int) -> EpochEnd:
    """The job's train loss and metrics, not one rank's; the epoch is counted as done."""
    progress, meter = run.progress, run.train_meter
    meter.loss_sum = distributed.mean(meter.loss_sum)
    meter.meter.load_state_dict(distributed.sum_counts(meter.meter.state_dict()))
    end = EpochEnd(epoch=epoch, lr=run.optimizer.param_groups[0]["lr"], trained=progress.batch_in_epoch,
                   train=meter.compute(batches_per_epoch(run, "train")), perf=run.perf.last())
    progress.epoch, progress.batch_in_epoch, progress.train_metrics = epoch + 1, 0, end.train
    return end


def validation_due(run: Run, epoch: int) -> bool:
    """Every trainer.eval_interval epochs of a phase, and at its end; patience counts validations."""
    return (epoch + 1 - run.progress.phase_start) % run.cfg.trainer.eval_interval == 0 or epoch + 1 == run.phase["end"]


def validate_epoch(run: Run, end: EpochEnd) -> None:
    """Score the weights validation reads (the EMA copy when trainer.ema.validate) on the validation split."""
    model = run.net if not distributed.current().enabled else run.model  # several ranks: rank 0, unwrapped
    end.val, end.per_class, end.validated = validate(run, run.ema.module if run.validates_ema else model)
    run.progress.val_metrics = end.val


def step_scheduler(run: Run, val: dict) -> None:
    """The plateau scheduler reads the metric (as "higher is better"); the closed-form ones ignore it."""
    score = val.get(run.objective.monitor)
    run.scheduler.step(None if not val else score if run.objective.higher_is_better else -score)


def decide_stop(run: Run, end: EpochEnd) -> None:
    """Early stopping (patience in validations without improvement), the phase's end, the run's end."""
    progress, phase = run.progress, run.phase
    patience = phase["early_stopping"].patience
    progress.phase_stopped = patience is not None and progress.bad_epochs >= patience
    end.phase_done = progress.phase_stopped or end.epoch + 1 == phase["end"]
    end.finished = phase["last"] and end.phase_done
    if end.phase_done and not end.finished:
        progress.phase_ends.append(end.epoch + 1)


def record_row(run: Run, end: EpochEnd) -> None:
    """The epoch's row in the tracker (metrics.csv, W&B) and, when validated, its per-class scores."""
    train, val, phase = end.train, end.val, run.phase
    scores = [k for k in train if k not in ("grad_norm", "skipped_steps")]
    scores += [k for k in val if k not in scores]  # validation-only scores (image_f_score)
    run.tracker.log_epoch({
        "epoch": end.epoch + 1, "phase": phase["name"], "lr": end.lr, "train_loss": train["loss"],
        **{f"train_{k}": v for k, v in train.items() if k != "loss"},
        **{f"val_{k}": val.get(k, "") for k in scores},  # same names; "" = not validated
        **end.perf})  # last: the columns before keep their places
    if val and end.per_class:
        run.tracker.log_per_class({"epoch": end.epoch + 1, "phase": phase["name"], **end.per_class})


def checkpoint_files(run: Run, end: EpochEnd) -> list[str]:
    """The files this epoch's state goes to: last.pth always; a periodic one, a phase's last epoch, the bests and
    the final model when due."""
    epoch, several = end.epoch + 1, len(run.schedule) > 1
    files = ["last.pth"]
    if epoch % run.cfg.trainer.save_interval == 0 or end.phase_done and several:
        files.append(f"checkpoint_epoch_{epoch}.pth")  # a phase's last epoch is always kept
    if end.improved:
        files.append("best_model.pth")
    if end.phase_improved and several:
        files.append(f"{run.phase['key']}_checkpoint.pth")
    if end.finished:
        files.append("final_model.pth")
    return files


def record_scores(run: Run, val: dict, epoch: int) -> tuple[bool, bool]:
    """Update the phase's best (early stopping) and the run's best (best_model.pth); (improved, phase_improved)."""
    if not val:
        return False, False
    progress, objective, phase = run.progress, run.objective, run.phase
    score = val[objective.monitor]
    phase_best = progress.phase_best.get(phase["key"])
    phase_improved = better(score, phase_best and phase_best["score"], objective.higher_is_better,
                            phase["early_stopping"].min_delta)
    if phase_improved:
        progress.phase_best[phase["key"]] = {"score": score, "epoch": epoch + 1}
        progress.bad_epochs = 0
    else:
        progress.bad_epochs += 1
    # best_model.pth follows the final phase's metric, over every phase that reports it
    improved = objective.monitor == run.final.monitor and better(score, progress.best_score,
                                                                 run.final.higher_is_better)
    if improved:
        progress.best_score, progress.best_epoch = score, epoch + 1
    return improved, phase_improved


def better(score, best, higher_is_better: bool, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return score > best + min_delta if higher_is_better else score < best - min_delta


def save(run: Run, files: list[str]) -> None:
    """Snapshot the state now (later steps cannot change the copy) and write it in the background."""
    check_finite(run)  # never a checkpoint after a non-finite step
    run.writer.wait()
    progress = run.progress
    ckpt = {"format": checkpoint.FORMAT, **state_dicts(run.state)}  # every rank: the RNG entry gathers them all
    ckpt.update(summary_keys(run, ckpt["early_stopping"]))
    if progress.batch_in_epoch and distributed.current().enabled:
        # a stop mid-epoch: the file gets the job's running loss and counts (copies), so any number of ranks resumes
        # them; at an epoch's end end_epoch() has already reduced the live meter
        meter = ckpt["train_meter"]
        ckpt["train_meter"] = {**meter, "loss_sum": distributed.mean(meter["loss_sum"].to(run.device)).cpu(),
                               "meter": distributed.sum_counts(meter["meter"])}
    if not distributed.current().main:
        return
    lineage.saved(run, ckpt, files)  # lineage.json; the tracker logs the checkpoints written before
    prune = functools.partial(checkpoint.prune_periodic, run.ckpt_dir, run.cfg.trainer.keep_last,
                              protect=set(progress.phase_ends))
    run.writer.snapshot_and_submit(ckpt, [run.ckpt_dir / name for name in files], then=prune)
    run.last_saved = (run.ckpt_dir / files[0], progress.epoch)


def summary_keys(run: Run, early_stopping: dict) -> dict:
    """What users, the seeds' snippets and the tools read, derived from the state when saving (never read back)."""
    t, progress, phase, objective, final = run.cfg.trainer, run.progress, run.phase, run.objective, run.final
    phase_best = progress.phase_best.get(phase["key"], {})
    dropped = phases.dropped_before(run.schedule, phase["index"])
    nan = float("nan")  # "no value yet", still printable with :.4f
    return {
        "phase": phase["name"], "phase_key": phase["key"], "is_pretrain": objective.is_pretrain,
        "dropped_modules": dropped, "decoder_removed": "decoder" in dropped, "monitor": final.monitor,
        "early_stopping": {**early_stopping, "patience": phase["early_stopping"].patience,
                           "best": phase_best.get("score")},
        "validated_weights": "ema" if run.validates_ema else "model",
        "precision": str(t.precision), "compiled": bool(t.compile), "world_size": distributed.current().world,
        "config": run.config, "overrides": run.overrides, "choices": run.choices, "run_dir": str(run.run_dir),
        "classes": list(run.data.get("classes") or []), "data_split": run.data.get("split"),
        "normalisation": run.data.get("normalisation"),  # the inputs' mean/std: evaluate, predict, export use it
        "model_args": run.data["model_args"],  # what the model was built with: load_model needs no data
        "provenance": run.provenance,  # the code (git commit, dirty) and versions of this start (environment.json)
        "limited": limits(run.cfg),  # a trial (limit_*_batches, overfit_batches): latest skips it, compare labels it
        objective.keys["best"]: phase_best.get("score", nan),
        objective.keys["current"]: progress.val_metrics.get(objective.monitor, nan),
        final.keys["best"]: nan if progress.best_score is None else progress.best_score,
        final.keys["current"]: progress.val_metrics.get(final.monitor, nan),
    }
