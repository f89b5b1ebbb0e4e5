"""The end of an epoch: validate, update the best scores and early stopping, record the row, save."""
import functools
import logging

from project import distributed, phases
from project.checkpoints import files as checkpoint
from project.commands import lineage
from project.recipe.divergence import check_finite
from project.recipe.limits import batch_limit, batches_per_epoch, limits
from project.recipe.messages import format_metrics
from project.recipe.run import Run
from project.recipe.validation import validation_pass
from project.state import state_dicts

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


def end_epoch(run: Run, epoch: int) -> bool:
    """Validate, update best scores and early stopping, record, save. True when training is finished."""
    t, phase, progress, meter = run.cfg.trainer, run.phase, run.progress, run.train_meter
    meter.loss_sum = distributed.mean(meter.loss_sum)  # the job's train loss and metrics, not one rank's
    meter.meter.load_state_dict(distributed.sum_counts(meter.meter.state_dict()))
    train_metrics = meter.compute(batches_per_epoch(run, "train"))
    lr = run.optimizer.param_groups[0]["lr"]
    trained = progress.batch_in_epoch  # the epoch's batches, up to the last optimizer step
    progress.epoch, progress.batch_in_epoch, progress.train_metrics = epoch + 1, 0, train_metrics
    # validate every trainer.eval_interval epochs of a phase, and at its end; patience counts validations
    val, validated = {}, None
    if (epoch + 1 - progress.phase_start) % t.eval_interval == 0 or epoch + 1 == phase["end"]:
        # several ranks: rank 0 validates the whole set (the job's numbers, as one process would) with the
        # unwrapped model, the others take its result so that every rank decides the same
        model = run.net if not distributed.current().enabled else run.model
        if run.validates_ema:
            model = run.ema.module
        if distributed.current().main:
            val = validation_pass(model, run.objective, run.loaders["val"], run.device, run.data, run.autocast_dtype,
                           limit=batch_limit(run, "val"))
        val = distributed.broadcast(val)
        per_class = val.pop("per_class", {})
        validated = val.pop("batches", None)
        progress.val_metrics = val
    improved, phase_improved = record_scores(run, val, epoch)
    if improved:
        progress.best_per_class = per_class
    # the plateau scheduler reads the metric (as "higher is better"); the closed-form ones ignore it
    score = val.get(run.objective.monitor)
    run.scheduler.step(None if not val else score if run.objective.higher_is_better else -score)
    patience = phase["early_stopping"].patience
    progress.phase_stopped = patience is not None and progress.bad_epochs >= patience
    phase_done = progress.phase_stopped or epoch + 1 == phase["end"]
    finished = phase["last"] and phase_done

    # the row goes first: a kill before the save re-does this epoch and restore_history drops the row
    scores = [k for k in train_metrics if k not in ("grad_norm", "skipped_steps")]
    scores += [k for k in val if k not in scores]  # validation-only scores (image_f_score)
    run.tracker.log_epoch({
        "epoch": epoch + 1, "phase": phase["name"], "lr": lr, "train_loss": train_metrics["loss"],
        **{f"train_{k}": v for k, v in train_metrics.items() if k != "loss"},
        **{f"val_{k}": val.get(k, "") for k in scores}})  # same names; "" = not validated
    if val and per_class:
        run.tracker.log_per_class({"epoch": epoch + 1, "phase": phase["name"], **per_class})
    if phase_done and not finished:
        progress.phase_ends.append(epoch + 1)
    files = ["last.pth"]
    if (epoch + 1) % t.save_interval == 0 or phase_done and len(run.schedule) > 1:
        files.append(f"checkpoint_epoch_{epoch + 1}.pth")  # a phase's last epoch is always kept
    if improved:
        files.append("best_model.pth")
    if phase_improved and len(run.schedule) > 1:
        files.append(f"{phase['key']}_checkpoint.pth")
    if finished:
        files.append("final_model.pth")
    save(run, files)

    log.info("epoch %d/%d  %s  lr %.2e  train loss %.4f %s | %s%s", epoch + 1, t.max_epochs, phase["name"], lr,
             train_metrics["loss"], format_metrics(train_metrics),
             f"val loss {val['loss']:.4f} {format_metrics(val)}" if val else "no validation this epoch",
             "  *best*" if improved else "  *phase best*" if phase_improved and len(run.schedule) > 1 else "")
    if limits(run.cfg):  # a trial: what it really ran
        log.info("  (limited run: %d training batches this epoch%s)", trained,
                 f", {validated} validation batches" if validated is not None else "")
    if progress.phase_stopped:
        best = progress.phase_best[phase["key"]]
        log.info("Early stopping in phase %r: no improvement of val %s for %d epochs (best %.4f at epoch %d).",
                 phase["name"], run.objective.monitor, patience, best["score"], best["epoch"])
    return finished


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
    run.writer.submit(checkpoint.snapshot(ckpt), [run.ckpt_dir / name for name in files], then=prune)
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
        "model_args": run.data["model_args"],  # what the model was built with: load_model needs no data
        "provenance": run.provenance,  # the code (git commit, dirty) and versions of this start (environment.json)
        "limited": limits(run.cfg),  # a trial (limit_*_batches, overfit_batches): latest skips it, compare labels it
        objective.keys["best"]: phase_best.get("score", nan),
        objective.keys["current"]: progress.val_metrics.get(objective.monitor, nan),
        final.keys["best"]: nan if progress.best_score is None else progress.best_score,
        final.keys["current"]: progress.val_metrics.get(final.monitor, nan),
    }
