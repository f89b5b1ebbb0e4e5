"""What the recipe says: the run's announcement, the final report and overfit verdict, and the one-paragraph
messages for a diverged run, a dead DataLoader worker and a full disk."""
import logging
import math
import signal

import torch

from project import distributed, noise, phases, throughput
from project.checkpoints import files as checkpoint
from project.checkpoints import foreign
from project.data import splits
from project.errors import UserError
from project.loggers import read_rows
from project.recipe.limits import batches_per_epoch, limits
from project.recipe.run import Run
from project.runtime import record_environment
from project.data.normalisation import named

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


def announce(run: Run) -> None:
    """Prepare the run dir and say what this run is."""
    t, progress, model = run.cfg.trainer, run.progress, run.model
    if distributed.current().main:  # rank 0 writes the run dir
        run.ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in run.ckpt_dir.glob(".*.tmp"):  # writes cut short by a kill; the real files are intact
            stale.unlink()
        run.provenance = record_environment(run.run_dir, run.device, distributed.current().world, t)
        if "split_names" in run.data:  # split/{train,val}.txt: which files train and which validate
            splits.record(run.run_dir, **run.data["split_names"])
    if "split" in run.data:  # folder data: what it declares, so a wrong preset or split shows at once
        names = run.data["classes"]
        pairs = ", ".join(f"{names[a]}/{names[b]}" for a, b in run.data.get("flip_pairs") or []) or "none"
        log.info("Data: %d classes (%s) | flip pairs: %s | validation from %s", len(names),
                 ", ".join(names[:8]) + (", ..." if len(names) > 8 else ""), pairs, run.data["split"]["how"])
    dropouts = sorted({round(m.p, 6) for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)})
    extras = [f"precision {t.precision}"] + [f"{name} {value}" for name, value in (
        ("accumulate", t.accumulate_grad_batches if t.accumulate_grad_batches > 1 else None),
        ("clip", t.gradient_clip_val), ("EMA", t.ema.decay),
        ("compiled", t.compile_backend if t.compile else None)) if value is not None]
    log.info("Run dir %s | %s with %.2fM parameters, dropout p=%s, on %s (%s) | %d train / %d val samples | "
             "epochs %d -> %d%s", run.run_dir, run.cfg.model._target_.rsplit(".", 1)[-1],
             sum(run.full_counts.values()) / 1e6, ",".join(map(str, dropouts)) or "none", run.device,
             ", ".join(extras), len(run.data["train"]), len(run.data["val"]), progress.epoch, t.max_epochs,
             f" (epoch {progress.epoch + 1} from batch {progress.batch_in_epoch})" if progress.batch_in_epoch else "")
    log.info("%s", phases.plan_text(run.schedule, progress.phase_index, progress.phase_start))
    log.info("Model components:\n%s", phases.components_table(model, run.full_counts, phases.dropped_before(
        run.schedule, progress.phase_index)))


def announce_limits(run: Run) -> None:
    """Say what a limited or overfit run trains and validates, and that its checkpoints are marked as a trial."""
    t, limited = run.cfg.trainer, limits(run.cfg)
    if limited is None:
        return
    settings = ", ".join(f"trainer.{k}={v}" for k, v in limited.items())
    train, val = batches_per_epoch(run, "train"), batches_per_epoch(run, "val")
    if t.get("overfit_batches"):
        what = (f"Overfitting {train} batches ({min(train * t.batch_size, len(run.data['train']))} samples): the "
                f"first {train} of epoch 1's order, every epoch, validated on the same {val} batches without "
                "augmentation")
    else:
        what = (f"Limited run: each epoch trains {train} of {math.ceil(len(run.data['train']) / t.batch_size)} "
                f"batches, each validation scores {val} of {math.ceil(len(run.data['val']) / t.batch_size)}")
    log.info("%s (%s). A trial, not a training run: its checkpoints are marked `limited`, "
             "resume.checkpoint=latest skips it and project-compare labels it.", what, settings)


def report_epoch(run: Run, end) -> None:
    """The epoch's line (train and val scores, a new best marked), what a trial really ran, early stopping.
    `end`: the epoch's epoch_end.EpochEnd."""
    t, phase, progress, train, val = run.cfg.trainer, run.phase, run.progress, end.train, end.val
    log.info("epoch %d/%d  %s  lr %.2e  train loss %.4f %s | %s%s%s", end.epoch + 1, t.max_epochs, phase["name"],
             end.lr, train["loss"], format_metrics(train),
             f"val loss {val['loss']:.4f} {format_metrics(val)}" if val else "no validation this epoch",
             "  *best*" if end.improved else "  *phase best*" if end.phase_improved and len(run.schedule) > 1 else "",
             f" | {throughput.epoch_text(end.perf)}" if end.perf else "")
    if run.perf.input_bound(end.perf):
        log.warning("%s", input_bound_advice(run, end.perf))
    if limits(run.cfg):  # a trial: what it really ran
        log.info("  (limited run: %d training batches this epoch%s)", end.trained,
                 f", {end.validated} validation batches" if end.validated is not None else "")
    if progress.phase_stopped:
        best = progress.phase_best[phase["key"]]
        log.info("Early stopping in phase %r: no improvement of val %s for %d epochs (best %.4f at epoch %d).",
                 phase["name"], run.objective.monitor, phase["early_stopping"].patience, best["score"], best["epoch"])


def input_bound_advice(run: Run, perf: dict) -> str:
    """Said once per run: the epoch waited for its batches more than it trained, and what to try."""
    d = run.cfg.data
    tips = [f"more loader processes (data.num_workers={d.get('num_workers', 0)}, up to one per free core)"]
    if "decoder" in d:
        tips.append(f"a faster decoder (data.decoder={d.decoder}; torchvision decodes JPEGs with libjpeg-turbo)")
    if "image_size" in d:
        tips.append(f"smaller images (data.image_size={d.image_size})")
    return (f"Input-bound: this epoch spent {perf['perf_data_wait']:.0%} of its time waiting for the next batch "
            f"({perf['perf_images_per_s']:.0f} img/s), so a faster model or device would not train faster. "
            f"Try {', '.join(tips[:-1]) + ' or ' + tips[-1] if len(tips) > 1 else tips[0]}.")


def say_foreign_restored(plan, weights: dict, stripped: list, lr: float) -> None:
    """What resume=full took from another script's file, and what starts fresh: a table in the log."""
    saved = plan.checkpoint
    best = "none in the file" if saved["best_score"] is None else f"{saved['best_name']} {saved['best_score']:.4f}"
    rows = [("restored", "weights", f"{saved['weights_key'] or 'the bare state dict'}, {len(weights)} tensors"
             + (f", prefix {' '.join(stripped)} stripped" if stripped else "")),
            ("restored", "optimizer state", f"{len(saved['optimizer_state_dict']['state'])} parameters, "
             f"positional; hyperparameters from the current config"),
            ("restored", "epoch", f"{foreign.epoch_words(saved['epoch'], saved.get('history_epochs'))}: taken as the "
             f"epochs done, training goes on with epoch {saved['epoch'] + 1}"),
            ("shown", "stored best", f"{best}: computed by another script, not comparable; the starting "
             "weights are scored here instead"),
            ("derived", "learning rate", f"{lr:.3g}: the schedule at epoch "
             f"{saved['epoch']} under the current config"),
            ("fresh", "RNG", "the file has none: seeded from seed"),
            ("fresh", "data position", "the epoch starts at its first batch"),
            ("fresh", "early stopping", "counter at 0"),
            ("fresh", "scaler, EMA", "if turned on")]
    table = "\n".join(f"  {a:8s}  {b:15s}  {c}" for a, b, c in rows)
    log.info("Continuing %s, written by another script: NOT a bit-exact continuation.\n%s", plan.path, table)


def report(run: Run, summary: dict) -> None:
    """The final lines: the best score next to the run's late level (noise.py), and for a continuation, the new
    best against its starting weights scored here (never against a number computed elsewhere)."""
    progress, parent, start = run.progress, run.progress.parent_best, run.progress.start_score
    if "perf/mean_images_per_s" in summary:
        log.info("Throughput: %.0f img/s on average, %.0f%% of each epoch waiting for data (metrics.csv: perf_*).",
                 summary["perf/mean_images_per_s"], 100 * summary["perf/mean_data_wait"])
    if summary["status"].startswith("interrupted") or progress.best_score is None:
        return
    monitor = run.final.monitor
    scores = [r.get(f"val_{monitor}") for r in read_rows(run.run_dir / "metrics.csv") if r.get("phase") != "start"]
    late = noise.level(scores)
    log.info("Best val %s %.4f at epoch %d%s; checkpoints in %s", monitor, progress.best_score, progress.best_epoch,
             f" ({late})" if late else "", run.ckpt_dir)
    if start is not None:
        delta = progress.best_score - start["score"]
        verdict = noise.verdict(delta, noise.spread(scores))
        if progress.best_epoch == start["epoch"]:
            log.info("No epoch beat the starting weights (val %s %.4f, scored here%s): best_model.pth keeps them.",
                     monitor, start["score"], named(run.data))
        else:
            log.info("New best %s %.4f (epoch %d) beats the starting weights' %.4f (scored here, same data and "
                     "metric%s) by %+.4f %s.", monitor, progress.best_score, progress.best_epoch, start["score"],
                     named(run.data), delta, verdict)
    if parent and parent.get("foreign"):
        log.info("The parent file's stored best %.4f was computed by another script (another metric or other "
                 "data): not compared.", parent["score"])
    elif parent and start is None and "improvement" in summary:
        delta = summary["improvement"]
        log.info("New best %s %.4f (epoch %d) %s the parent's best %.4f (epoch %d of %s) by %+.4f.",
                 monitor, progress.best_score, progress.best_epoch,
                 "beats" if delta > 0 else "does not beat", parent["score"], parent["epoch"], parent["path"], delta)


def overfit_verdict(run: Run, summary: dict) -> None:
    """trainer.overfit_batches: did the train loss (metrics.csv) fall below 10% of its first epoch's value? A recipe
    that cannot fit a few batches is broken, whatever a long run would show."""
    n = run.cfg.trainer.get("overfit_batches")
    if not n or summary["status"].startswith("interrupted") or not distributed.current().main:
        return
    rows = [r for r in read_rows(run.run_dir / "metrics.csv") if r.get("phase") != "start" and r.get("train_loss")]
    if len(rows) < 2:
        log.warning("Overfit check: %d epoch(s) trained, too few to tell whether the recipe can fit %d batches; "
                    "train longer (debug=overfit trains 50 epochs).", len(rows), n)
        return
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    ratio = last / first if first > 0 else math.inf
    val = run.progress.val_metrics
    where = (f"train loss {first:.4f} (epoch {rows[0]['epoch']}) -> {last:.4f} (epoch {rows[-1]['epoch']}), "
             f"{ratio:.1%} of its first value; val on the same {n} batches without augmentation: "
             + " ".join(f"{k} {v:.4f}" for k, v in val.items()))
    summary["overfit"] = {"batches": n, "first_train_loss": first, "last_train_loss": last, "ratio": ratio,
                          "fits": ratio < 0.1}
    if ratio < 0.1:
        log.info("Overfit check passed: the train loss fell below 10%% of its first value (%s). The recipe can fit "
                 "%d batches.", where, n)
    else:
        log.warning("Overfit check FAILED: the train loss did not fall below 10%% of its first value (%s). The "
                    "recipe cannot fit %d batches, so it is broken: look at the learning rate (optimizer.lr), the "
                    "loss and the targets it gets, the model's output (classes, activation) and the data (inputs "
                    "and labels aligned?) before a long run.", where, n)


def diverged_message(run: Run, step: int, what: str) -> str:
    progress, lr = run.progress, run.cfg.optimizer.lr
    epoch = progress.epoch + (1 if progress.batch_in_epoch else 0)
    if run.last_saved is None:
        where, command = "No checkpoint has been written yet", f"python run.py optimizer.lr={lr / 10:g}"
    else:
        path, saved_epoch = run.last_saved
        where = f"The last good checkpoint is {path} (epoch {saved_epoch}); nothing was saved after the bad step"
        command = f"python run.py resume=full resume.checkpoint={path} optimizer.lr={lr / 10:g}"
    return (f"Training diverged: {what} at epoch {epoch}, optimizer step {step} (trainer.on_nonfinite="
            f"{run.cfg.trainer.on_nonfinite}). {where}. Continue with a smaller learning rate: {command} (gradient "
            "clipping, trainer.gradient_clip_val=1.0, also helps; trainer.on_nonfinite=skip drops such steps).")


def worker_died_message(run: Run, error: BaseException) -> str:
    """One paragraph for a DataLoader worker that died (out of memory, kill -9): where the run was, which
    checkpoint is intact, and how to continue."""
    progress = run.progress
    died = [(pid, code) for loader in run.loaders.values() for pid, code in loader.died]
    what = "; ".join(f"pid {pid}, {signal_name(-code) if code < 0 else f'exit code {code}'}" for pid, code in died)
    what = what or " ".join(str(error).split()).split(" Details are lost")[0].rstrip(". ")  # torch's words
    where = (f"epoch {progress.epoch + 1}, after batch {progress.batch_in_epoch}" if progress.batch_in_epoch else
             f"epoch {progress.epoch + 1}")
    last = run.ckpt_dir / "last.pth"
    try:
        saved = checkpoint.load(last) if last.is_file() else None
    except UserError:
        saved = None
    if saved is None:
        intact = "No checkpoint of this run was written yet"
    else:
        at = (f"epoch {saved['epoch'] + 1}, batch {saved['batch_in_epoch']}" if saved.get("batch_in_epoch") else
              f"the end of epoch {saved['epoch']}")
        intact = f"The last intact checkpoint is {last} ({at}, optimizer step {saved['global_step']})"
    return (f"A DataLoader worker died ({what}) during {where}: killed by the kernel's out-of-memory killer or "
            f"by someone's kill -9, not by a stop signal (those the workers ignore). {intact}. Continue with: python "
            f"run.py resume=full resume.checkpoint={run.run_dir} (if memory ran out: fewer data.num_workers="
            f"{run.num_workers} or a smaller trainer.batch_size={run.cfg.trainer.batch_size}).")


def what_is_intact(run: Run) -> str:
    """For a disk error: which checkpoints survived, and how to continue once there is space."""
    last = run.ckpt_dir / "last.pth"
    try:
        epoch = checkpoint.load(last)["epoch"] if last.is_file() else None
    except UserError:
        epoch = None
    intact = (f"The checkpoints written before are intact: {last} holds epoch {epoch}." if epoch is not None else
              "No checkpoint of this run was written yet.")
    return (f"{intact} Nothing partial was left behind. Free space (or fix the mount), then continue with: python "
            f"run.py resume=full resume.checkpoint={run.run_dir}")


def signal_name(signum: int) -> str:
    try:
        return f"killed by {signal.Signals(signum).name}"
    except ValueError:
        return f"killed by signal {signum}"


def format_metrics(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "loss")
