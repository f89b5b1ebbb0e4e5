"""The training recipe, written out: set up, then for each epoch: enter the phase if it changed, train the epoch,
validate, record, save.

Every component comes from the config through hydra.utils.instantiate; runtime arguments (the model's
parameters for the optimizer, the optimizer for the scheduler, the run dir for the logger) are passed here.
Everything a resume restores is one entry of `run.state` (project/state.py); what to continue from, and what
to restore, is decided before anything is built (project/resume.py).
"""
import contextlib
import functools
import itertools
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from project import distributed, noise, phases, resume, rng, tasks
from project.checkpoints import files as checkpoint
from project.checkpoints import foreign
from project.data import splits
from project.data.loader import RunLoader, is_worker_death
from project.errors import DiskError, TrainingDiverged, UserError, WorkerDied
from project.nonfinite import NonFiniteGuard
from project.loggers import NullTracker, read_rows
from project.rundirs import lineage
from project import runtime
from project.runtime import StopRequest, pick_device, record_environment, restore_history
from project.state import EMA, RNG, Progress, TrainMeter, load_state_dicts, state_dicts
from project.validate import AUTOCAST_DTYPES, check_added_keys, check_config

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What the loop works with. `state` is what a checkpoint holds and a resume restores; everything else is
    rebuilt from the config at every start."""

    cfg: DictConfig
    config: dict                   # cfg resolved, as saved in checkpoints
    overrides: list                # the command-line overrides that give cfg (resume=full recomposes from them)
    run_dir: Path
    device: torch.device
    data: dict
    schedule: list                 # the phases (project/phases.py)
    final: object                  # the last phase's objective: its metric decides best_model.pth
    model: torch.nn.Module         # the eager model: its state_dict never holds `_orig_mod.` keys
    full_counts: dict              # parameters per top-level module, before any phase dropped one
    state: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)  # the config-group choices that give cfg ({"model": "unet", ...})
    family: dict | None = None     # where this run dir comes from: lineage.json's fixed part (results/lineage.py)
    phase: dict | None = None
    objective: object = None
    net: torch.nn.Module | None = None   # what the step calls: the model, DDP-wrapped and compiled as configured
    ddp: torch.nn.Module | None = None   # the DDP wrapper of a several-process job (for no_sync)
    guard: NonFiniteGuard | None = None
    stop: StopRequest | None = None
    writer: checkpoint.BackgroundWriter = field(default_factory=checkpoint.BackgroundWriter)
    loaders: dict = field(default_factory=dict)  # "train", "val": one RunLoader each for the whole run
    last_saved: tuple | None = None       # (path, epoch) of the newest checkpoint, for the divergence message
    provenance: dict = field(default_factory=dict)  # this start's code and versions: each checkpoint's summary key
    profiler: object = None               # trainer.profiler.enabled: project/profiling.StepProfiler

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def num_workers(self) -> int:
        return self.data.get("num_workers", 0)

    @property
    def autocast_dtype(self):
        return AUTOCAST_DTYPES[str(self.cfg.trainer.precision)]

    @property
    def validates_ema(self) -> bool:
        return "ema" in self.state and bool(self.cfg.trainer.ema.validate)


def train(cfg: DictConfig, run_dir: Path, search_dirs: list[Path], job: dict | None = None) -> dict:
    """Train as the config says and return a summary.

    `search_dirs` are where resume.checkpoint=latest looks for runs; `job` describes the Hydra job
    ({"overrides": [...], "sweep_dir": str or None}); with it, resume=full recomposes the continued run's config.
    Bad input raises UserError before any file is written.
    """
    check_config(cfg)
    typed = [o for o in (job or {}).get("overrides", []) if not o.startswith("hydra.")]
    check_added_keys(cfg, typed)
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
    tracker = run.state["tracker"]
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
    from project.evaluation.scoring import after_fit

    return after_fit(run, summary)


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


def close_loaders(run: Run) -> None:
    for loader in run.loaders.values():
        loader.close()


def worker_died_message(run: Run, error: RuntimeError) -> str:
    """One paragraph for a DataLoader worker that died (out of memory, kill -9): where the run was, which
    checkpoint is intact, and how to continue."""
    progress = run.state["progress"]
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


def signal_name(signum: int) -> str:
    try:
        return f"killed by {signal.Signals(signum).name}"
    except ValueError:
        return f"killed by signal {signum}"


def setup(cfg, config, overrides, plan, run_dir: Path, job: dict) -> Run:
    """Build every component from the config, in the phase the run continues in, then restore what the plan says."""
    t = cfg.trainer
    dist = distributed.current()
    # never more threads than the cores this process may use (a launcher's share, taskset, a SLURM allocation,
    # the other ranks of this job on the same host)
    cores = max(1, len(os.sched_getaffinity(0)) // dist.local_world)
    torch.set_num_threads(t.num_threads or min(torch.get_num_threads(), cores))
    runtime.apply_switches(t)  # matmul precision, cuDNN benchmark; cuBLAS's setting before anything runs on a GPU
    distributed.check_batch(t.batch_size)
    device = pick_device(t.device, dist.local_rank)
    schedule = phases.plan(cfg)
    rng.seed_everything(cfg.seed)
    final = phases.build_objective(cfg, schedule[-1])
    data = tasks.build_data(cfg)
    if t.get("overfit_batches"):  # validated on the training batches themselves, without augmentation
        augmented = cfg.get("augment", {}).get("transforms")
        data["overfit_val"] = tasks.build_data(cfg, augment=False)["train"] if augmented else data["train"]
        check_overfit(t, data)
    tasks.check_objective(cfg, final, data)
    model = tasks.build_model(cfg, data).to(device)
    tasks.probe_model(cfg, model, data, device)
    if t.get("channels_last"):  # before the EMA copy is made: it inherits the layout and the input conversion
        runtime.to_channels_last(model)
    if t.sync_batchnorm and dist.enabled:  # BatchNorm statistics over the global batch, not each rank's part
        if device.type != "cuda":
            raise UserError("trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm runs on CUDA only. On the "
                            "CPU leave it off (each rank normalises its part of the batch) or use a model without "
                            "BatchNorm. Nothing was trained or written.")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    run = Run(cfg=cfg, config=config, overrides=overrides, run_dir=run_dir, device=device, data=data,
              schedule=schedule, final=final, model=model, full_counts=phases.module_counts(model))
    index, start = plan.phase if plan is not None else (0, 0)
    phases.drop_modules(model, phases.dropped_before(schedule, index))

    # the one training state, in load order: the model before the optimizer, the RNG last
    run.state["model"] = model
    if t.ema.decay is not None:
        run.state["ema"] = EMA(model, t.ema.decay)
    enter_phase(run, index, start, lr_from_config=plan is not None and plan.lr_from_config)  # optimizer, scheduler
    run.state["scaler"] = torch.amp.GradScaler(device.type, init_scale=t.grad_scaler.init_scale,
                                               growth_interval=t.grad_scaler.growth_interval,
                                               enabled=str(t.precision) == "16-mixed")
    run.state["progress"] = Progress(phase_index=index, phase_start=start)
    run.state["train_meter"] = TrainMeter(run.objective.meter(data, device), device)
    # only rank 0 logs the run (W&B, metrics.csv); the other ranks keep an entry that saves and loads the same
    tracker = instantiate(cfg.logger)(run_dir, run_meta(cfg, config, schedule, plan, job)) if dist.main else None
    run.state["tracker"] = tracker or NullTracker()
    run.state["rng"] = RNG()
    restore(run, plan)
    runtime.use_deterministic(t)  # after the probe: from here on an op without a deterministic version is an error
    run.guard = NonFiniteGuard(t.on_nonfinite, device)
    run.loaders = build_loaders(cfg, data, device, before_fork=run.writer.wait)
    return run


def build_loaders(cfg, data: dict, device: torch.device, before_fork=None) -> dict:
    """One loader per split for the whole run: its workers persist across epochs and are forked once, after
    `before_fork()` (the checkpoint writer thread must not run while they fork)."""
    workers, batch_size = data.get("num_workers", 0), cfg.trainer.batch_size
    shard = distributed.shard if distributed.current().enabled else None
    # trainer.overfit_batches: validation's epoch 0 is the training loader's epoch 0 (same seed and order), on the
    # unaugmented training split; evaluate() takes its first N batches
    val = (RunLoader(data["overfit_val"], batch_size, seed=cfg.seed, num_workers=workers, before_fork=before_fork)
           if "overfit_val" in data else
           RunLoader(data["val"], batch_size, seed=0, shuffle=False, num_workers=workers, before_fork=before_fork))
    return {"train": RunLoader(data["train"], batch_size, seed=cfg.seed, num_workers=workers,
                               pin_memory=device.type == "cuda", shard=shard, before_fork=before_fork),
            "val": val}


def check_overfit(t, data: dict) -> None:
    full = math.ceil(len(data["train"]) / t.batch_size)
    if t.overfit_batches > full:
        raise UserError(
            f"trainer.overfit_batches={t.overfit_batches}, but the training split has only {full} batches of "
            f"trainer.batch_size={t.batch_size} ({len(data['train'])} samples): choose at most "
            f"trainer.overfit_batches={full}. Nothing was trained or written.")


def batches_per_epoch(run: Run, split: str) -> int:
    """Batches an epoch trains ("train") or a validation scores ("val"): all of them, or as trainer.overfit_batches
    or trainer.limit_<split>_batches say (an int: that many, at most all; a float: that fraction, at least one)."""
    limit = batch_limit(run, split)
    return math.ceil(len(split_data(run, split)) / run.cfg.trainer.batch_size) if limit is None else limit


def batch_limit(run: Run, split: str) -> int | None:
    """The first how many batches of an epoch's order are used; None: all (an unlimited run's loops unchanged)."""
    t = run.cfg.trainer
    full = math.ceil(len(split_data(run, split)) / t.batch_size)
    limit = t.get("overfit_batches") or t.get(f"limit_{split}_batches")
    if limit is None:
        return None
    n = min(limit, full) if isinstance(limit, int) else max(1, int(full * limit))
    return None if n == full else n


def split_data(run: Run, split: str):
    """The dataset a split's loader reads: overfit_batches validates on the (unaugmented) training split."""
    return run.data["overfit_val"] if split == "val" and "overfit_val" in run.data else run.data[split]


def limits(cfg) -> dict | None:
    """The settings that make a run a trial rather than a training run (the checkpoints' `limited` key); None for
    a run that trains on everything."""
    t = cfg.trainer
    found = {k: t.get(k) for k in ("limit_train_batches", "limit_val_batches", "overfit_batches")
             if t.get(k) and not (isinstance(t.get(k), float) and t.get(k) == 1.0)}  # 1.0: all of them
    return found or None


def restore(run: Run, plan) -> None:
    """Load what the plan says into the built state (state.RESTORES), in the registry's order."""
    if plan is None:
        return
    progress, saved = run.state["progress"], plan.checkpoint
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
        # another script's file: its epoch is its own count, said so (epoch_note)
        log.info("Lineage: %s", " -> ".join(f"{e['path']}@{e['epoch']} ({e['mode']}"
                                            + (f"; {e['epoch_note']})" if e.get("epoch_note") else ")")
                                            for e in progress.lineage))


def score_start(run: Run) -> None:
    """A continuation from other weights scores them first, here: same data, same metric, a metrics.csv row with
    phase "start". They are the first candidate for best_model.pth, so a run never ends with worse weights than
    it started from; a best score stored in the file (another metric, other data, another script) gates nothing."""
    progress, objective = run.state["progress"], run.objective
    if objective.monitor != run.final.monitor:  # a pretraining phase first: its score is not the final metric
        log.info("Starting weights not scored: the first phase (%s) reports %s, not %s.", run.phase["name"],
                 objective.monitor, run.final.monitor)
        return
    model = run.state["ema"].module if run.validates_ema else run.model
    val = {}
    if distributed.current().main:
        val = evaluate(model, objective, run.loaders["val"], run.device, run.data, run.autocast_dtype,
                       limit=batch_limit(run, "val"))
    val = distributed.broadcast(val)
    per_class = val.pop("per_class", {})
    val.pop("batches", None)
    score = val[objective.monitor]
    progress.start_score = {"score": score, "epoch": progress.epoch, "metric": objective.monitor}
    progress.best_score, progress.best_epoch, progress.best_per_class = score, progress.epoch, per_class
    progress.val_metrics = val
    tracker = run.state["tracker"]
    tracker.log_epoch({"epoch": progress.epoch, "phase": "start", **{f"val_{k}": v for k, v in val.items()}})
    if per_class:
        tracker.log_per_class({"epoch": progress.epoch, "phase": "start", **per_class})
    save(run, ["best_model.pth"])
    log.info("Starting weights, scored here: val %s %.4f (%s) | the first candidate for best_model.pth",
             objective.monitor, score, format_metrics(val))


def restore_foreign(run: Run, plan) -> None:
    """resume=full from a file another script wrote: weights, optimizer state, epoch and best score, as far as it
    has them; everything else starts fresh, and the table says so. Not a bit-exact continuation."""
    saved, progress, optimizer = plan.checkpoint, run.state["progress"], run.state["optimizer"]
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
    run.state["scheduler"].load_state_dict({"last_epoch": saved["epoch"] - progress.phase_start})
    progress.lineage = [plan.lineage_entry]
    best = "none in the file" if saved["best_score"] is None else f"{saved['best_name']} {saved['best_score']:.4f}"
    rows = [("restored", "weights", f"{saved['weights_key'] or 'the bare state dict'}, {len(weights)} tensors"
             + (f", prefix {' '.join(stripped)} stripped" if stripped else "")),
            ("restored", "optimizer state", f"{len(saved['optimizer_state_dict']['state'])} parameters, "
             f"positional; hyperparameters from the current config"),
            ("restored", "epoch", f"{foreign.epoch_words(saved['epoch'], saved.get('history_epochs'))}: taken as the epochs done, training goes on "
             f"with epoch {saved['epoch'] + 1}"),
            ("shown", "stored best", f"{best}: computed by another script, not comparable; the starting "
             "weights are scored here instead"),
            ("derived", "learning rate", f"{optimizer.param_groups[0]['lr']:.3g}: the schedule at epoch "
             f"{saved['epoch']} under the current config"),
            ("fresh", "RNG", "the file has none: seeded from seed"),
            ("fresh", "data position", "the epoch starts at its first batch"),
            ("fresh", "early stopping", "counter at 0"),
            ("fresh", "scaler, EMA", "if turned on")]
    table = "\n".join(f"  {a:8s}  {b:15s}  {c}" for a, b, c in rows)
    log.info("Continuing %s, written by another script: NOT a bit-exact continuation.\n%s", plan.path, table)


def enter_phase(run: Run, index: int, start: int, lr_from_config: bool = False) -> None:
    """Drop the phase's modules (from the EMA copy too), build its objective, optimizer (state carried over by
    parameter name) and scheduler, and compile the model again if it changed."""
    phase = run.schedule[index]
    dropped = phases.drop_modules(run.model, phase["drop_modules"])
    if "ema" in run.state:
        run.state["ema"].drop_modules(phase["drop_modules"], like=run.model)
    previous = run.state.get("optimizer")
    optimizer = phases.build_optimizer(run.cfg, phase, run.model, lr_from_config)
    carried = phases.carry_state(previous, optimizer)
    run.state["optimizer"] = optimizer
    run.state["scheduler"] = phases.build_scheduler(run.cfg, phase, optimizer, length=phase["end"] - start)
    run.phase, run.objective = phase, phases.build_objective(run.cfg, phase)
    t = run.cfg.trainer
    net, run.ddp = run.model, None
    if distributed.current().enabled:  # gradients averaged across the ranks; a dropped module means a new wrapper
        ids = [run.device.index] if run.device.type == "cuda" else None
        net = run.ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    run.net = torch.compile(net, backend=t.compile_backend) if t.compile else net
    if previous is not None:
        log.info("Phase %d/%d %r from epoch %d: dropped %s, new optimizer (state of %d/%d parameters kept), "
                 "lr %.2e, monitor %s", index + 1, len(run.schedule), phase["name"], start + 1, dropped or "nothing",
                 carried, len(phases.param_names(optimizer)), optimizer.param_groups[0]["lr"],
                 run.objective.monitor)


def train_loop(run: Run) -> dict:
    t, progress = run.cfg.trainer, run.state["progress"]
    interrupted = None
    announce_limits(run)
    if t.get("profiler", {}).get("enabled") and distributed.current().main:
        from project.profiling import StepProfiler

        run.profiler = StepProfiler(t.profiler, run.run_dir, run.device)
    try:
        for epoch in range(progress.epoch, t.max_epochs):
            if epoch >= run.phase["end"] or progress.phase_stopped and not run.phase["last"]:
                progress.phase_index, progress.phase_start = run.phase["index"] + 1, epoch
                progress.bad_epochs, progress.phase_stopped = 0, False
                enter_phase(run, progress.phase_index, epoch)
            interrupted = train_epoch(run, epoch)
            if interrupted or end_epoch(run, epoch):
                break
    finally:
        if run.profiler is not None:
            run.profiler.stop()
    return summarize(run, interrupted)


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


def train_epoch(run: Run, epoch: int) -> str | None:
    """Train one epoch from progress.batch_in_epoch; returns the name of a stop signal that ended it early."""
    t, progress, meter = run.cfg.trainer, run.state["progress"], run.state["train_meter"]
    start, n = progress.batch_in_epoch, batches_per_epoch(run, "train")
    if start == 0:
        meter.reset(run.objective.meter(run.data, run.device))
    # overfit_batches: epoch 0's order every epoch; a limit ends the epoch after its first n batches
    order = 0 if t.get("overfit_batches") else epoch
    batches = run.loaders["train"].epoch(order, start)  # the first epoch forks the workers (after the writer)
    if batch_limit(run, "train") is not None:
        batches = itertools.islice(batches, max(n - start, 0))
    bar = tqdm(batches, total=n, initial=start, desc=f"epoch {epoch + 1}/{t.max_epochs}", leave=False,
               disable=None, dynamic_ncols=True)
    run.model.train()
    k, tic, seen = t.accumulate_grad_batches, time.perf_counter(), 0
    for i, batch in enumerate(bar, start=start):
        batch = tuple(b.to(run.device, non_blocking=True) for b in batch)
        window = min(k, n - i // k * k)  # batches in this accumulation window: an epoch's last may be shorter
        if i % k == 0:
            run.guard.window_start(run.model)  # on_nonfinite=skip: a dropped window leaves the buffers as they were
        steps_now = not ((i + 1) % k and i + 1 < n)  # the window's last batch: the optimizer steps after it
        # several ranks: gradients are averaged once per window (no_sync before), each rank's weighed by its share
        # of the global batch, which makes the average the global batch's mean even when it does not split evenly
        with run.ddp.no_sync() if run.ddp is not None and not steps_now else contextlib.nullcontext():
            loss, outputs = forward(run, batch)
            share = len(batch[0]) * distributed.current().world / global_size(run, i)
            run.state["scaler"].scale(loss * share / window if share != 1 or window != 1 else loss).backward()
        meter.loss_sum += loss.detach()
        run.guard.observe(loss, progress.global_step + 1)
        seen += len(batch[0])
        if not steps_now:
            continue  # inside a window: gradients accumulate, and a stop waits for the window's end
        optimizer_step(run)
        progress.global_step += 1
        progress.batch_in_epoch = i + 1
        if run.profiler is not None:
            run.profiler.step()
        if distributed.current().enabled:  # every rank stops at the same step, whichever caught the signal
            run.stop.signum = distributed.agree_stop(run.stop.signum)
        if progress.global_step % t.log_every_n_steps == 0 or i + 1 == n:
            check_finite(run)
            # train metrics are sampled on these steps only: scoring every batch costs ~3% of a step
            meter.meter.update(outputs, batch)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen / (time.perf_counter() - tic):.0f}")
        if run.stop.signum and stop_here(run, epoch, n):
            bar.close()
            return run.stop.caught
    bar.close()
    if epoch + 1 < t.max_epochs:  # workers load the next epoch's first batches while this one validates and saves
        run.loaders["train"].prefetch(order if t.get("overfit_batches") else epoch + 1)
    return None


def global_size(run: Run, i: int) -> int:
    """Samples in global batch i of an epoch (the last may be smaller)."""
    return min(run.cfg.trainer.batch_size, len(run.data["train"]) - i * run.cfg.trainer.batch_size)


def forward(run: Run, batch: tuple):
    dtype = run.autocast_dtype
    try:
        with torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None):
            return run.objective(run.net, batch)
    except Exception as e:  # torch.compile compiles at the first call: its failures surface here
        explained = runtime.nondeterministic_error(e, run.device)  # trainer.deterministic=true, even when compiling
        if explained is not None:
            raise explained from None
        if run.cfg.trainer.compile and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise UserError(
                f"trainer.compile=true failed while compiling the model with backend "
                f"{run.cfg.trainer.compile_backend!r} ({type(e).__name__}: {reason}). Train without compiling "
                "(trainer.compile=false), or try trainer.compile_backend=aot_eager (no C compiler needed); "
                "inductor needs a working C++ compiler on the CPU and Triton on the GPU.") from None
        raise


def optimizer_step(run: Run) -> None:
    """One update from the window's gradients: unscale, clip, step (the scaler skips it on inf/NaN gradients and
    backs off), then the EMA."""
    t, state = run.cfg.trainer, run.state
    optimizer, scaler, meter = state["optimizer"], state["scaler"], state["train_meter"]
    if run.guard.skip_step():  # on_nonfinite=skip and this window's loss was not finite
        optimizer.zero_grad(set_to_none=True)
        skip_nonfinite(run)
        return
    if t.gradient_clip_val is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        meter.add_grad_norm(torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.gradient_clip_val))
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    if scale is not None and scaler.get_scale() < scale:  # torch has no "skipped" flag: the scale backed off
        meter.skipped_steps += 1
    optimizer.zero_grad(set_to_none=True)
    if "ema" in state:
        state["ema"].update(run.model)


def stop_here(run: Run, epoch: int, n: int) -> bool:
    """A stop signal, at an optimizer-step boundary: save last.pth, then hand the signal on. True: stop now."""
    progress = run.state["progress"]
    run.stop.caught = run.stop.name
    save(run, ["last.pth"])
    run.writer.wait()  # on disk before the launcher's handler (submitit's requeue) may end the process
    distributed.barrier()  # no rank leaves before rank 0's file is on disk
    log.info("Caught %s: saved %s at epoch %d, batch %d/%d.", run.stop.caught, run.ckpt_dir / "last.pth",
             epoch + 1, progress.batch_in_epoch, n)
    if go_on_after_hand_over(run):
        return False  # the launcher let us go on (submitit ignores SIGTERM)
    log.info("Stopped. Continue with: python run.py resume=full resume.checkpoint=%s", run.run_dir)
    return True


def go_on_after_hand_over(run: Run) -> bool:
    """Rank 0 hands the signal to the launcher (submitit acts on rank 0 only) and tells the other ranks what it
    decided. When the launcher ends rank 0 instead (submitit's requeue), the others stop too: the connection to
    rank 0 is gone, and SLURM requeues the whole job."""
    if distributed.current().main:
        return distributed.broadcast(run.stop.hand_over())
    try:
        return distributed.broadcast(None)
    except RuntimeError:
        log.warning("Rank 0 ended after saving (its launcher took the signal over): this rank stops as well.")
        return False


def end_epoch(run: Run, epoch: int) -> bool:
    """Validate, update best scores and early stopping, record, save. True when training is finished."""
    t, phase, progress, meter = run.cfg.trainer, run.phase, run.state["progress"], run.state["train_meter"]
    meter.loss_sum = distributed.mean(meter.loss_sum)  # the job's train loss and metrics, not one rank's
    meter.meter.load_state_dict(distributed.sum_counts(meter.meter.state_dict()))
    train_metrics = meter.compute(batches_per_epoch(run, "train"))
    lr = run.state["optimizer"].param_groups[0]["lr"]
    trained = progress.batch_in_epoch  # the epoch's batches, up to the last optimizer step
    progress.epoch, progress.batch_in_epoch, progress.train_metrics = epoch + 1, 0, train_metrics
    # validate every trainer.eval_interval epochs of a phase, and at its end; patience counts validations
    val, validated = {}, None
    if (epoch + 1 - progress.phase_start) % t.eval_interval == 0 or epoch + 1 == phase["end"]:
        # several ranks: rank 0 validates the whole set (the job's numbers, as one process would) with the
        # unwrapped model, the others take its result so that every rank decides the same
        model = run.net if not distributed.current().enabled else run.model
        if run.validates_ema:
            model = run.state["ema"].module
        if distributed.current().main:
            val = evaluate(model, run.objective, run.loaders["val"], run.device, run.data, run.autocast_dtype,
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
    run.state["scheduler"].step(None if not val else score if run.objective.higher_is_better else -score)
    patience = phase["early_stopping"].patience
    progress.phase_stopped = patience is not None and progress.bad_epochs >= patience
    phase_done = progress.phase_stopped or epoch + 1 == phase["end"]
    finished = phase["last"] and phase_done

    # the row goes first: a kill before the save re-does this epoch and restore_history drops the row
    scores = [k for k in train_metrics if k not in ("grad_norm", "skipped_steps")]
    scores += [k for k in val if k not in scores]  # validation-only scores (image_f_score)
    run.state["tracker"].log_epoch({
        "epoch": epoch + 1, "phase": phase["name"], "lr": lr, "train_loss": train_metrics["loss"],
        **{f"train_{k}": v for k, v in train_metrics.items() if k != "loss"},
        **{f"val_{k}": val.get(k, "") for k in scores}})  # same names; "" = not validated
    if val and per_class:
        run.state["tracker"].log_per_class({"epoch": epoch + 1, "phase": phase["name"], **per_class})
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
    progress, objective, phase = run.state["progress"], run.objective, run.phase
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


def save(run: Run, files: list[str]) -> None:
    """Snapshot the state now (later steps cannot change the copy) and write it in the background."""
    check_finite(run)  # never a checkpoint after a non-finite step
    run.writer.wait()
    progress = run.state["progress"]
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
    t, progress, phase, objective, final = run.cfg.trainer, run.state["progress"], run.phase, run.objective, run.final
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


def check_finite(run: Run) -> None:
    """trainer.on_nonfinite=error: stop (exit code 3) at the first check after a NaN/inf loss (one host sync)."""
    step = run.guard.check()
    if step is not None:
        raise TrainingDiverged(diverged_message(run, step, "the loss became NaN or inf"))


def skip_nonfinite(run: Run) -> None:
    t, progress = run.cfg.trainer, run.state["progress"]
    progress.nonfinite_skips += 1
    log.warning("Non-finite loss at optimizer step %d: update skipped (%d so far, at most %d).",
                progress.global_step + 1, progress.nonfinite_skips, t.max_nonfinite_skips)
    if progress.nonfinite_skips > t.max_nonfinite_skips:
        raise TrainingDiverged(diverged_message(
            run, progress.global_step + 1,
            f"the loss was NaN or inf in more than trainer.max_nonfinite_skips={t.max_nonfinite_skips} steps"))


def diverged_message(run: Run, step: int, what: str) -> str:
    progress, lr = run.state["progress"], run.cfg.optimizer.lr
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


def summarize(run: Run, interrupted: str | None) -> dict:
    progress = run.state["progress"]
    stopped_early = progress.phase_stopped and run.phase["last"]
    summary = {"status": f"interrupted by {interrupted}" if interrupted else "early stopped" if stopped_early else "done",
               "epoch": progress.epoch, "monitor": run.final.monitor, "best_score": progress.best_score,
               "best_epoch": progress.best_epoch, "phase_best": progress.phase_best, "run_dir": str(run.run_dir),
               "signal": signal.Signals[interrupted] if interrupted else None}
    parent, start = progress.parent_best, progress.start_score
    if parent and not parent.get("foreign"):  # the parent's own best (another script's is not comparable)
        summary["parent_best"] = parent["score"]
    if start is not None and progress.best_score is not None:  # what this run gained, measured here
        summary.update(start_score=start["score"], improvement=progress.best_score - start["score"])
    elif "parent_best" in summary and progress.best_score is not None:
        summary["improvement"] = progress.best_score - parent["score"]
    run.state["tracker"].log_summary(summary)
    return summary


def report(run: Run, summary: dict) -> None:
    """The final lines: the best score next to the run's late level (noise.py), and for a continuation, the new
    best against its starting weights scored here (never against a number computed elsewhere)."""
    progress, parent, start = run.state["progress"], run.state["progress"].parent_best, run.state["progress"].start_score
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
            log.info("No epoch beat the starting weights (val %s %.4f, scored here): best_model.pth keeps them.",
                     monitor, start["score"])
        else:
            log.info("New best %s %.4f (epoch %d) beats the starting weights' %.4f (scored here, same data and "
                     "metric) by %+.4f %s.", monitor, progress.best_score, progress.best_epoch, start["score"], delta,
                     verdict)
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
    val = run.state["progress"].val_metrics
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


def announce(run: Run) -> None:
    """Prepare the run dir and say what this run is."""
    t, progress, model = run.cfg.trainer, run.state["progress"], run.model
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


def run_meta(cfg, config: dict, schedule: list, plan, job: dict) -> dict:
    """What a tracker needs to name, group and link this run (resume=full: its saved state names the run)."""
    overrides = [o for o in job.get("overrides", []) if not o.startswith(("hydra.", "resume.checkpoint="))]
    parent = None
    if plan is not None and plan.mode == "reset_optimizer":
        saved = plan.checkpoint
        parent = {"checkpoint": str(plan.path), "logger": saved.get("logger"), "best_score": saved["best_score"],
                  "best_epoch": saved["best_epoch"], "artifact": lineage.parent_artifact(saved, plan.path)}
    return {"config": config, "run_name": ",".join(overrides) or cfg.name,
            "group": job.get("sweep_dir") or cfg.name, "job_type": cfg.resume.mode,
            "tags": lineage.tags(cfg, schedule), "parent": parent}


@torch.no_grad()
def evaluate(model, objective, loader: RunLoader, device, data, dtype=None, limit: int | None = None) -> dict:
    """The objective's validation scores, and per class ("per_class": {"f1/<class>": ...}) where it has them;
    "batches": how many were scored (all, or the first `limit`: trainer.limit_val_batches, overfit_batches)."""
    model.eval()
    meter = objective.val_meter(data, device) if hasattr(objective, "val_meter") else objective.meter(data, device)
    generator = torch.Generator().manual_seed(0)  # val masks (SimMIM) are the same every epoch
    total, batches = torch.zeros((), device=device), 0
    batches_ = loader.epoch(0)  # keys (0, 0, index): the same samples every time
    for batch in batches_ if limit is None else itertools.islice(batches_, limit):
        batch = tuple(b.to(device, non_blocking=True) for b in batch)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, outputs = objective(model, batch, generator=generator)
        total += loss
        batches += 1
        meter.update(outputs, batch)
    scores = {"loss": (total / max(batches, 1)).item(), **meter.compute()}
    scores = {**scores, "per_class": meter.per_class()} if hasattr(meter, "per_class") else scores
    return {**scores, "batches": batches}


def better(score, best, higher_is_better: bool, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return score > best + min_delta if higher_is_better else score < best - min_delta


def format_metrics(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "loss")
