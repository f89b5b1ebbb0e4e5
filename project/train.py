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
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from project import checkpoint, resume, rng
from project.data.loader import epoch_batches
from project.loggers import append_rows, read_rows
from project.metrics import ConfusionMatrix
from project.validate import check_config

log = logging.getLogger(__name__)
PHASE = "train"  # a single-phase schedule


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
                   **{k: os.environ.get(k) for k in keys}, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    path.write_text(json.dumps(starts, indent=1))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(model, dataset, loss_fn, batch_size, device, num_classes, num_workers=0) -> dict:
    model.eval()
    confusion = ConfusionMatrix(num_classes, device)
    total, batches = torch.zeros((), device=device), 0
    for inputs, targets in epoch_batches(dataset, batch_size, seed=0, epoch=0, shuffle=False, num_workers=num_workers):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(inputs)
        total += loss_fn(logits, targets)
        batches += 1
        confusion.update(logits, targets)
    return {"loss": (total / max(batches, 1)).item(), **confusion.compute()}


def run_meta(cfg, config: dict, parent: dict | None, job: dict) -> dict:
    """What a tracker needs to name, group and link this run."""
    overrides = [o for o in job.get("overrides", []) if not o.startswith(("hydra.", "resume.checkpoint="))]
    saved = parent["state"] if parent else {}
    return {
        "config": config, "run_name": ",".join(overrides) or cfg.name, "group": job.get("sweep_dir") or cfg.name,
        "job_type": cfg.resume.mode, "tags": [PHASE, cfg.resume.mode],
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
    parent = resume.load_parent(cfg, config, run_dir, search_dirs)
    if parent and parent.get("finished"):
        saved = parent["state"]
        return {"status": "already finished", "epoch": saved["epoch"], "monitor": saved["monitor"],
                "best_score": saved["best_score"], "best_epoch": saved["best_epoch"], "run_dir": str(run_dir)}
    t = cfg.trainer
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = pick_device(t.device)
    monitor = t.monitor

    # ---- setup: data, model, loss, optimizer, scheduler, all from the config ----
    rng.seed_everything(cfg.seed)
    data = instantiate(cfg.data)
    num_classes, num_workers = len(data["classes"]), data.get("num_workers", 0)
    model = instantiate(cfg.model, **data["model_args"]).to(device)
    loss_fn = instantiate(cfg.loss)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer)

    progress = {"epoch": 0, "global_step": 0, "batch_in_epoch": 0, "epoch_loss_sum": 0.0, "epoch_confusion": None,
                "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0, "val": {}, "train": {}}
    lineage, parent_best = [], None
    if parent is not None:
        saved = parent["state"]
        resume.load_weights(model, saved["model_state_dict"], parent["path"])
        # a run continuing itself keeps its lineage; a new run descends from the checkpoint
        lineage = saved["lineage"] + ([] if parent["is_own"] else [parent["lineage_entry"]])
        if parent["mode"] == "full":
            resume.restore_optimizer(optimizer, saved["optimizer_state_dict"], parent["changes"])
            scheduler.load_state_dict(saved["scheduler_state_dict"])
            progress.update({k: saved[k] for k in ("epoch", "global_step", "batch_in_epoch", "best_epoch")})
            progress.update(best_score=saved["best_score"], val=saved["val_metrics"],
                            bad_epochs=saved["early_stopping"]["bad_epochs"],
                            epoch_loss_sum=saved["epoch_loss_sum"], epoch_confusion=saved["epoch_confusion"])
            parent_best = saved.get("parent_best")
            rng.restore(saved["rng"])
            restore_history(Path(saved["run_dir"]) / "metrics.csv", run_dir / "metrics.csv", saved["epoch"])
        else:
            parent_best = {"score": saved["best_score"], "epoch": saved["best_epoch"], "path": str(parent["path"])}
        if lineage:
            log.info("Lineage: %s", " -> ".join(f"{e['path']}@{e['epoch']} ({e['mode']})" for e in lineage))

    logger = instantiate(cfg.logger)(run_dir, run_meta(cfg, config, parent, job or {}))
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".*.tmp"):  # writes cut short by a kill; the real files are intact
        stale.unlink()
    record_environment(run_dir, device)
    n_params = sum(p.numel() for p in model.parameters())
    dropouts = sorted({round(m.p, 6) for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)})
    log.info("Run dir %s | %s with %.2fM parameters, dropout p=%s, on %s | %d train / %d val samples | "
             "epochs %d -> %d%s", run_dir, cfg.model._target_.rsplit(".", 1)[-1], n_params / 1e6,
             ",".join(map(str, dropouts)) or "none", device, len(data["train"]),
             len(data["val"]), progress["epoch"], t.max_epochs,
             f" (epoch {progress['epoch'] + 1} from batch {progress['batch_in_epoch']})" if progress["batch_in_epoch"] else "")

    def save(files: list[str]) -> None:
        es = {"patience": t.early_stopping.patience, "bad_epochs": progress["bad_epochs"],
              "best": progress["best_score"], "stopped": stopped}
        state = {
            "format": checkpoint.FORMAT, "phase": PHASE,
            "epoch": progress["epoch"], "global_step": progress["global_step"],
            # mid-epoch position and the epoch's running train statistics (a stop between steps)
            "batch_in_epoch": progress["batch_in_epoch"], "epoch_loss_sum": progress["epoch_loss_sum"],
            "epoch_confusion": progress["epoch_confusion"],
            "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(),
            "monitor": monitor, "best_score": progress["best_score"], "best_epoch": progress["best_epoch"],
            f"best_{monitor}": progress["best_score"], f"val_{monitor}": progress["val"].get(monitor),
            "val_metrics": progress["val"], "train_metrics": progress["train"],
            "config": config, "rng": rng.capture(), "early_stopping": es, "lineage": lineage,
            "parent_best": parent_best, "run_dir": str(run_dir), "logger": logger.state(),
        }
        payload = checkpoint.to_bytes(state)
        for name in files:
            checkpoint.write_atomic(ckpt_dir / name, payload)

    # ---- train ----
    stop = StopRequest()
    stopped, interrupted = False, None
    try:
        for epoch in range(progress["epoch"], t.max_epochs):
            model.train()
            confusion = ConfusionMatrix(num_classes, device)
            if progress["epoch_confusion"] is not None:
                confusion.matrix += progress["epoch_confusion"].to(device)
            start = progress["batch_in_epoch"]
            batches = epoch_batches(data["train"], t.batch_size, seed=cfg.seed, epoch=epoch, start=start,
                                    num_workers=num_workers, pin_memory=device.type == "cuda")
            n_batches = math.ceil(len(data["train"]) / t.batch_size)
            loss_sum = torch.tensor(progress["epoch_loss_sum"], device=device, dtype=torch.float64)
            bar = tqdm(batches, total=n_batches, initial=start, desc=f"epoch {epoch + 1}/{t.max_epochs}",
                       leave=False, disable=None, dynamic_ncols=True)
            tic, seen = time.perf_counter(), 0
            for i, (inputs, targets) in enumerate(bar, start=start):
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                logits = model(inputs)
                loss = loss_fn(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                confusion.update(logits.detach(), targets)
                progress["global_step"] += 1
                seen += len(inputs)
                if progress["global_step"] % t.log_every_n_steps == 0:  # the only host sync in the step
                    bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen / (time.perf_counter() - tic):.0f}")
                if stop.signum:
                    progress.update(batch_in_epoch=i + 1, epoch_loss_sum=loss_sum.item(),
                                    epoch_confusion=confusion.matrix.cpu())
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

            train_metrics = {"loss": loss_sum.item() / n_batches, **confusion.compute()}
            val = evaluate(model, data["val"], loss_fn, t.batch_size, device, num_classes, num_workers)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step(val[monitor])
            improved = val[monitor] > progress["best_score"] + t.early_stopping.min_delta
            progress.update(epoch=epoch + 1, batch_in_epoch=0, epoch_loss_sum=0.0, epoch_confusion=None, val=val, train=train_metrics)
            if improved:
                progress.update(best_score=val[monitor], best_epoch=epoch + 1, bad_epochs=0)
            else:
                progress["bad_epochs"] += 1
            patience = t.early_stopping.patience
            stopped = patience is not None and progress["bad_epochs"] >= patience
            finished = stopped or epoch + 1 == t.max_epochs

            # the row goes first: a kill before the save re-does this epoch and restore_history drops the row
            logger.log_epoch({"epoch": epoch + 1, "phase": PHASE, "lr": lr, "train_loss": train_metrics["loss"],
                              **{f"train_{k}": v for k, v in train_metrics.items() if k != "loss"},
                              **{f"val_{k}": v for k, v in val.items()}})
            files = ["last.pth"]
            if (epoch + 1) % t.save_interval == 0:
                files.append(f"checkpoint_epoch_{epoch + 1}.pth")
            if improved:
                files.append("best_model.pth")
            if finished:
                files.append("final_model.pth")
            save(files)
            checkpoint.prune_periodic(ckpt_dir, t.keep_last)

            log.info("epoch %d/%d  lr %.2e  train loss %.4f %s %.4f | val loss %.4f %s %.4f pixel_acc %.4f%s",
                     epoch + 1, t.max_epochs, lr, train_metrics["loss"], monitor, train_metrics[monitor],
                     val["loss"], monitor, val[monitor], val["pixel_acc"], "  *best*" if improved else "")
            if stopped:
                log.info("Early stopping: no improvement of val %s for %d epochs (best %.4f at epoch %d).",
                         monitor, patience, progress["best_score"], progress["best_epoch"])
                break

        summary = {"status": f"interrupted by {interrupted}" if interrupted else ("early stopped" if stopped else "done"),
                   "epoch": progress["epoch"], "monitor": monitor, "best_score": progress["best_score"],
                   "best_epoch": progress["best_epoch"], "run_dir": str(run_dir)}
        if parent_best:
            summary.update(parent_best=parent_best["score"], improvement=progress["best_score"] - parent_best["score"])
        logger.log_summary(summary)
    finally:
        stop.close()
        logger.finish("interrupted" if interrupted else "done")

    if not interrupted:
        log.info("Best val %s %.4f at epoch %d; checkpoints in %s", monitor, progress["best_score"],
                 progress["best_epoch"], ckpt_dir)
        if parent_best:
            delta = summary["improvement"]
            log.info("New best %s %.4f (epoch %d) %s the parent's best %.4f (epoch %d of %s) by %+.4f.", monitor,
                     progress["best_score"], progress["best_epoch"], "beats" if delta > 0 else "does not beat",
                     parent_best["score"], parent_best["epoch"], parent_best["path"], delta)
    return summary
