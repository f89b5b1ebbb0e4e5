"""The training recipe, written out: set up from the config, train and validate each epoch, save, repeat.

Every component comes from the config through hydra.utils.instantiate; runtime arguments (the model's
parameters for the optimizer, the optimizer for the scheduler, the run dir for the logger) are passed here.
"""
import json
import logging
import math
import os
import signal
import socket
import time
from datetime import datetime
from pathlib import Path

import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from project import checkpoint, phases, resume, rng
from project.data.loader import epoch_batches
from project.loggers import append_rows, read_rows
from project.errors import UserError
from project.validate import check_config

log = logging.getLogger(__name__)


class StopRequest:
    """Stop signals only set a flag; the loop acts at the next step boundary, never inside the handler.

    After saving, a signal that had a Python handler before us (submitit's: USR2 = checkpoint and requeue,
    SIGTERM = ignore and wait for USR2) is handed to it, so the launcher decides what happens next; any other
    signal (a user's SIGTERM or Ctrl-C) ends the run cleanly.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.signum = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.signum = signum

    @property
    def name(self):
        return signal.Signals(self.signum).name

    def hand_over(self) -> bool:
        """Pass the caught signal to the previous handler; True if training should go on (it returned)."""
        previous = self._previous.get(self.signum)
        signum, self.signum = self.signum, None
        if not callable(previous) or previous is signal.default_int_handler:
            return False
        previous(signum, None)  # submitit's USR2 handler requeues the job and exits here
        return True

    def close(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def restore_history(src: Path, dst: Path, upto_epoch: int) -> None:
    """metrics.csv of a continuation = the rows it continues (epochs <= the checkpoint's), nothing later."""
    rows = [r for r in read_rows(src) if int(r["epoch"]) <= upto_epoch]
    tmp = dst.with_name(".metrics.csv.tmp")
    tmp.unlink(missing_ok=True)
    append_rows(tmp, rows)
    if tmp.exists():
        os.replace(tmp, dst)


def record_environment(run_dir: Path, device) -> None:
    """Append where and as what this start of the run happened (GPU assignment, SLURM ids, requeues)."""
    path = run_dir / "environment.json"
    starts = json.loads(path.read_text()) if path.exists() else []
    keys = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
    starts.append({"hostname": socket.gethostname(), "pid": os.getpid(), "device": str(device),
                   **{k: os.environ.get(k) for k in keys}, "time": datetime.now().isoformat(timespec="milliseconds")})
    path.write_text(json.dumps(starts, indent=1))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but no CUDA GPU is visible to this process "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Use trainer.device=auto "
                        "(GPU when there is one) or trainer.device=cpu.")
    return torch.device(name)


@torch.no_grad()
def evaluate(model, objective, dataset, batch_size, device, data, num_workers=0) -> dict:
    model.eval()
    meter = objective.meter(data, device)
    generator = torch.Generator().manual_seed(0)  # val masks (SimMIM) are the same every epoch
    total, batches = torch.zeros((), device=device), 0
    for batch in epoch_batches(dataset, batch_size, seed=0, epoch=0, shuffle=False, num_workers=num_workers):
        batch = tuple(b.to(device, non_blocking=True) for b in batch)
        loss, outputs = objective(model, batch, generator=generator)
        total += loss
        batches += 1
        meter.update(outputs, batch)
    return {"loss": (total / max(batches, 1)).item(), **meter.compute()}


def better(score, best, higher_is_better: bool, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return score > best + min_delta if higher_is_better else score < best - min_delta


def run_meta(cfg, config: dict, phase_names: list[str], parent: dict | None, job: dict) -> dict:
    """What a tracker needs to name, group and link this run."""
    overrides = [o for o in job.get("overrides", []) if not o.startswith(("hydra.", "resume.checkpoint="))]
    saved = parent["state"] if parent else {}
    return {
        "config": config, "run_name": ",".join(overrides) or cfg.name, "group": job.get("sweep_dir") or cfg.name,
        "job_type": cfg.resume.mode, "tags": [*phase_names, cfg.resume.mode],
        # resume=full continues the tracker run stored in the checkpoint; reset_optimizer links to it
        "resume_state": saved.get("logger") if parent and parent["mode"] == "full" else None,
        "parent": {"checkpoint": str(parent["path"]), "logger": saved.get("logger"), "best_score": saved["best_score"],
                   "best_epoch": saved["best_epoch"]} if parent and parent["mode"] == "reset_optimizer" else None,
    }


def train(cfg: DictConfig, run_dir: Path, search_dirs: list[Path], job: dict | None = None) -> dict:
    """Train as the config says and return a summary.

    `search_dirs` are where resume.checkpoint=latest looks for runs; `job` describes the Hydra job for the
    tracker ({"overrides": [...], "sweep_dir": str or None}). Bad input raises UserError before any file is
    written.
    """
    check_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    typed = [o for o in (job or {}).get("overrides", []) if not o.startswith("hydra.")]
    overrides = typed

    def recompose(saved_overrides: list[str]):
        """resume=full: the config the checkpoint's run had, plus what was typed now (run.py only)."""
        nonlocal overrides
        overrides = resume.merge_overrides(saved_overrides, typed)
        try:
            composed = compose(config_name="config", overrides=overrides)
        except Exception as e:  # e.g. a saved override that no longer fits the config groups
            raise UserError(f"Could not rebuild the configuration of the run being continued from its overrides "
                            f"{overrides}: {e}. Pass the values you want explicitly, or use "
                            "resume=reset_optimizer.") from None
        check_config(composed)
        return composed, OmegaConf.to_container(composed, resolve=True)

    parent = resume.load_parent(cfg, config, run_dir, search_dirs, recompose if job else None)
    if parent and "cfg" in parent:
        cfg, config = parent["cfg"], parent["config"]
    schedule = phases.plan(cfg)
    if parent and parent.get("finished"):
        saved = parent["state"]
        return {"status": "already finished", "epoch": saved["epoch"], "monitor": saved["monitor"],
                "best_score": saved["best_score"], "best_epoch": saved["best_epoch"], "run_dir": str(run_dir)}
    t = cfg.trainer
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = pick_device(t.device)
    final = phases.build_objective(cfg, schedule[-1])  # its metric decides best_model.pth

    # ---- setup: data and model from the config; phase components are built in enter_phase() ----
    rng.seed_everything(cfg.seed)
    data = instantiate(cfg.data)
    num_workers = data.get("num_workers", 0)
    model = instantiate(cfg.model, **data["model_args"]).to(device)
    full_counts = phases.module_counts(model)

    progress = {"epoch": 0, "global_step": 0, "batch_in_epoch": 0, "epoch_loss_sum": 0.0, "epoch_meter": None,
                "phase_index": 0, "phase_start": 0, "phase_ends": [], "phase_best": {}, "bad_epochs": 0,
                "phase_stopped": False,
                "best_score": None, "best_epoch": 0, "val": {}, "train": {}}
    lineage, parent_best, saved = [], None, None
    if parent is not None:
        saved = parent["state"]
        # a run continuing itself keeps its lineage; a new run descends from the checkpoint
        lineage = saved["lineage"] + ([] if parent["is_own"] else [parent["lineage_entry"]])
        if parent["mode"] == "full":
            saved_schedule = phases.plan(OmegaConf.create(saved["config"]))
            phases.check_compatible(saved_schedule, schedule, saved["phase_index"], saved["epoch"])
            phases.drop_modules(model, phases.dropped_before(schedule, saved["phase_index"]))
            resume.load_weights(model, saved["model_state_dict"], parent["path"])
            progress.update({k: saved[k] for k in progress if k in saved})
            progress.update(val=saved["val_metrics"], train=saved["train_metrics"],
                            bad_epochs=saved["early_stopping"]["bad_epochs"],
                            phase_stopped=saved["early_stopping"]["stopped"])
            parent_best = saved.get("parent_best")
            restore_history(Path(saved["run_dir"]) / "metrics.csv", run_dir / "metrics.csv", saved["epoch"])
        else:
            resume.load_matching_weights(model, saved, parent["path"], cfg.resume.ignore_keys)
            parent_best = {"score": saved["best_score"], "epoch": saved["best_epoch"], "path": str(parent["path"])}
        if lineage:
            log.info("Lineage: %s", " -> ".join(f"{e['path']}@{e['epoch']} ({e['mode']})" for e in lineage))

    def enter_phase(index: int, start: int, previous=None):
        """Drop the phase's modules, build its objective, optimizer (state carried by name) and scheduler."""
        phase = schedule[index]
        dropped = phases.drop_modules(model, phase["drop_modules"])
        objective = phases.build_objective(cfg, phase)
        optimizer, names = phases.build_optimizer(cfg, phase, model)
        carried = phases.carry_state(*(previous or (None, None)), optimizer, names)
        scheduler = phases.build_scheduler(cfg, phase, optimizer, length=phase["end"] - start)
        if index > 0:
            log.info("Phase %d/%d %r from epoch %d: dropped %s, new optimizer (state of %d/%d parameters kept), "
                     "lr %.2e, monitor %s", index + 1, len(schedule), phase["name"], start + 1, dropped or "nothing",
                     carried, len(names), optimizer.param_groups[0]["lr"], objective.monitor)
        return phase, objective, optimizer, names, scheduler

    phase, objective, optimizer, names, scheduler = enter_phase(progress["phase_index"], progress["phase_start"])
    if parent is not None and parent["mode"] == "full":
        resume.restore_optimizer(optimizer, names, saved, parent["changes"])
        scheduler.load_state_dict(saved["scheduler_state_dict"])
        rng.restore(saved["rng"])  # last: nothing after this may draw random numbers before training

    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".*.tmp"):  # writes cut short by a kill; the real files are intact
        stale.unlink()
    record_environment(run_dir, device)
    dropouts = sorted({round(m.p, 6) for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)})
    log.info("Run dir %s | %s with %.2fM parameters, dropout p=%s, on %s | %d train / %d val samples | "
             "epochs %d -> %d%s", run_dir, cfg.model._target_.rsplit(".", 1)[-1], sum(full_counts.values()) / 1e6,
             ",".join(map(str, dropouts)) or "none", device, len(data["train"]), len(data["val"]),
             progress["epoch"], t.max_epochs,
             f" (epoch {progress['epoch'] + 1} from batch {progress['batch_in_epoch']})" if progress["batch_in_epoch"] else "")
    log.info("%s", phases.plan_text(schedule, progress["phase_index"], progress["phase_start"]))
    log.info("Model components:\n%s", phases.components_table(model, full_counts, phases.dropped_before(
        schedule, progress["phase_index"])))

    def save(files: list[str]) -> None:
        best = progress["best_score"]
        phase_best = progress["phase_best"].get(phase["key"], {})
        dropped = phases.dropped_before(schedule, phase["index"])
        state = {
            "format": checkpoint.FORMAT, "epoch": progress["epoch"], "global_step": progress["global_step"],
            "phase": phase["name"], "phase_key": phase["key"], "phase_index": phase["index"],
            "phase_start": progress["phase_start"], "phase_ends": progress["phase_ends"],
            "phase_best": progress["phase_best"],
            "is_pretrain": objective.is_pretrain, "dropped_modules": dropped, "decoder_removed": "decoder" in dropped,
            # mid-epoch position and the epoch's running train statistics (a stop between steps)
            "batch_in_epoch": progress["batch_in_epoch"], "epoch_loss_sum": progress["epoch_loss_sum"],
            "epoch_meter": progress["epoch_meter"],
            "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "optimizer_param_names": names, "scheduler_state_dict": scheduler.state_dict(),
            "monitor": final.monitor, "best_score": best, "best_epoch": progress["best_epoch"],
            "val_metrics": progress["val"], "train_metrics": progress["train"],
            "config": config, "rng": rng.capture(), "lineage": lineage, "parent_best": parent_best,
            "early_stopping": {"patience": phase["early_stopping"].patience, "bad_epochs": progress["bad_epochs"],
                               "best": phase_best.get("score"), "stopped": progress["phase_stopped"]},
            "run_dir": str(run_dir), "logger": logger.state(), "overrides": overrides,
        }
        nan = float("nan")  # "no value yet", still printable with :.4f
        state.update({objective.keys["best"]: phase_best.get("score", nan),
                      objective.keys["current"]: progress["val"].get(objective.monitor, nan),
                      final.keys["best"]: nan if best is None else best,
                      final.keys["current"]: progress["val"].get(final.monitor, nan)})
        payload = checkpoint.to_bytes(state)
        for name in files:
            checkpoint.write_atomic(ckpt_dir / name, payload)

    # ---- train ----
    logger = instantiate(cfg.logger)(run_dir, run_meta(cfg, config, [p["name"] for p in schedule], parent, job or {}))
    stop = StopRequest()
    interrupted, status = None, "failed"  # stays "failed" if an exception leaves the loop
    try:
        for epoch in range(progress["epoch"], t.max_epochs):
            if epoch >= phase["end"] or progress["phase_stopped"] and not phase["last"]:
                progress.update(phase_index=phase["index"] + 1, phase_start=epoch, bad_epochs=0, phase_stopped=False)
                phase, objective, optimizer, names, scheduler = enter_phase(
                    phase["index"] + 1, epoch, previous=(optimizer, names))
            model.train()
            meter = objective.meter(data, device)
            if progress["epoch_meter"] is not None:
                meter.load(progress["epoch_meter"])
            start = progress["batch_in_epoch"]
            batches = epoch_batches(data["train"], t.batch_size, seed=cfg.seed, epoch=epoch, start=start,
                                    num_workers=num_workers, pin_memory=device.type == "cuda")
            n_batches = math.ceil(len(data["train"]) / t.batch_size)
            loss_sum = torch.tensor(progress["epoch_loss_sum"], device=device, dtype=torch.float64)
            bar = tqdm(batches, total=n_batches, initial=start, desc=f"epoch {epoch + 1}/{t.max_epochs}",
                       leave=False, disable=None, dynamic_ncols=True)
            tic, seen = time.perf_counter(), 0
            for i, batch in enumerate(bar, start=start):
                batch = tuple(b.to(device, non_blocking=True) for b in batch)
                loss, outputs = objective(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                progress["global_step"] += 1
                seen += len(batch[0])
                if progress["global_step"] % t.log_every_n_steps == 0 or i == n_batches - 1:
                    # train metrics are sampled on these steps only: scoring every batch costs ~3% of a step
                    meter.update(outputs, batch)
                    bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen / (time.perf_counter() - tic):.0f}")
                if stop.signum:
                    progress.update(batch_in_epoch=i + 1, epoch_loss_sum=loss_sum.item(), epoch_meter=meter.state())
                    save(["last.pth"])
                    log.info("Caught %s: saved %s at epoch %d, batch %d/%d.", stop.name, ckpt_dir / "last.pth",
                             epoch + 1, i + 1, n_batches)
                    interrupted = stop.name
                    if stop.hand_over():
                        interrupted = None  # the launcher let us go on (submitit ignores SIGTERM)
                        continue
                    log.info("Stopped. Continue with: python run.py resume=full resume.checkpoint=%s", run_dir)
                    break
            bar.close()
            if interrupted:
                break

            train_metrics = {"loss": loss_sum.item() / n_batches, **meter.compute()}
            lr = optimizer.param_groups[0]["lr"]
            progress.update(epoch=epoch + 1, batch_in_epoch=0, epoch_loss_sum=0.0, epoch_meter=None, train=train_metrics)
            # validate every trainer.eval_interval epochs of a phase, and at its end; patience counts evaluations
            evaluate_now = (epoch + 1 - progress["phase_start"]) % t.eval_interval == 0 or epoch + 1 == phase["end"]
            val, phase_improved, improved = {}, False, False
            if evaluate_now:
                val = evaluate(model, objective, data["val"], t.batch_size, device, data, num_workers)
                progress["val"] = val
                score = val[objective.monitor]
                phase_best = progress["phase_best"].get(phase["key"])
                phase_improved = better(score, phase_best and phase_best["score"], objective.higher_is_better,
                                        phase["early_stopping"].min_delta)
                if phase_improved:
                    progress["phase_best"][phase["key"]] = {"score": score, "epoch": epoch + 1}
                    progress["bad_epochs"] = 0
                else:
                    progress["bad_epochs"] += 1
                # best_model.pth follows the final phase's metric, over every phase that reports it
                improved = objective.monitor == final.monitor and better(score, progress["best_score"],
                                                                         final.higher_is_better)
                if improved:
                    progress.update(best_score=score, best_epoch=epoch + 1)
            # the plateau scheduler reads the metric (as "higher is better"); the closed-form ones ignore it
            scheduler.step(None if not val else score if objective.higher_is_better else -score)
            patience = phase["early_stopping"].patience
            progress["phase_stopped"] = patience is not None and progress["bad_epochs"] >= patience
            phase_done = progress["phase_stopped"] or epoch + 1 == phase["end"]
            finished = phase["last"] and phase_done

            # the row goes first: a kill before the save re-does this epoch and restore_history drops the row
            logger.log_epoch({"epoch": epoch + 1, "phase": phase["name"], "lr": lr, "train_loss": train_metrics["loss"],
                              **{f"train_{k}": v for k, v in train_metrics.items() if k != "loss"},
                              **{f"val_{k}": val.get(k, "") for k in train_metrics}})  # same names; "" = not validated
            files = ["last.pth"]
            if (epoch + 1) % t.save_interval == 0 or phase_done and len(schedule) > 1:
                files.append(f"checkpoint_epoch_{epoch + 1}.pth")  # a phase's last epoch is always kept
            if improved:
                files.append("best_model.pth")
            if phase_improved and len(schedule) > 1:
                files.append(f"{phase['key']}_checkpoint.pth")
            if finished:
                files.append("final_model.pth")
            save(files)
            if phase_done and not finished:
                progress["phase_ends"].append(epoch + 1)
            checkpoint.prune_periodic(ckpt_dir, t.keep_last, protect=set(progress["phase_ends"]))

            log.info("epoch %d/%d  %s  lr %.2e  train loss %.4f %s | %s%s", epoch + 1, t.max_epochs,
                     phase["name"], lr, train_metrics["loss"], format_metrics(train_metrics),
                     f"val loss {val['loss']:.4f} {format_metrics(val)}" if val else "no validation this epoch", "  *best*" if improved else "  *phase best*" if phase_improved and len(schedule) > 1 else "")
            if progress["phase_stopped"]:
                log.info("Early stopping in phase %r: no improvement of val %s for %d epochs (best %.4f at epoch %d).",
                         phase["name"], objective.monitor, patience, progress["phase_best"][phase["key"]]["score"],
                         progress["phase_best"][phase["key"]]["epoch"])
            if finished:
                break

        stopped_early = progress["phase_stopped"] and phase["last"]
        summary = {"status": f"interrupted by {interrupted}" if interrupted else ("early stopped" if stopped_early else "done"),
                   "epoch": progress["epoch"], "monitor": final.monitor, "best_score": progress["best_score"],
                   "best_epoch": progress["best_epoch"], "phase_best": progress["phase_best"], "run_dir": str(run_dir)}
        if parent_best and progress["best_score"] is not None:
            summary.update(parent_best=parent_best["score"], improvement=progress["best_score"] - parent_best["score"])
        logger.log_summary(summary)
        status = "interrupted" if interrupted else "done"
    finally:
        stop.close()
        logger.finish(status)  # also on exceptions and signals: a sweep never hangs on an open tracker run

    if not interrupted and progress["best_score"] is not None:
        log.info("Best val %s %.4f at epoch %d; checkpoints in %s", final.monitor, progress["best_score"],
                 progress["best_epoch"], ckpt_dir)
        if "improvement" in summary:
            delta = summary["improvement"]
            log.info("New best %s %.4f (epoch %d) %s the parent's best %.4f (epoch %d of %s) by %+.4f.",
                     final.monitor, progress["best_score"], progress["best_epoch"],
                     "beats" if delta > 0 else "does not beat", parent_best["score"], parent_best["epoch"],
                     parent_best["path"], delta)
    return summary


def format_metrics(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "loss")
