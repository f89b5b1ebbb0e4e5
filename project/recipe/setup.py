"""Set-up: build every component from the config, the loaders, and a phase's objective, optimizer and scheduler.

Every component comes from the config through hydra.utils.instantiate; runtime arguments (the model's
parameters for the optimizer, the optimizer for the scheduler, the run dir for the logger) are passed here."""
import logging
import os
from pathlib import Path

import torch
from hydra.utils import instantiate

from project import distributed, phases, rng, runtime, tasks
from project.rundirs import lineage
from project.data.loader import RunLoader
from project.errors import UserError
from project.loggers import NullTracker
from project.nonfinite import NonFiniteGuard
from project.recipe.limits import check_overfit
from project.recipe.restore import restore
from project.recipe.run import Run
from project.runtime import pick_device
from project.state import EMA, RNG, Progress, TrainMeter
from project.throughput import Throughput

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


def setup(cfg, config, overrides, plan, run_dir: Path, job: dict) -> Run:
    """Build every component from the config, in the phase the run continues in, then restore what the plan says."""
    t = cfg.trainer
    device = prepare_process(t)
    schedule = phases.schedule_phases(cfg)
    rng.seed_everything(cfg.seed)
    final = phases.build_objective(cfg, schedule[-1])
    data = build_data(cfg)
    tasks.check_objective(cfg, final, data)
    model = build_model(cfg, data, device)
    # the one training state, in load order: the model before the optimizer, the RNG last
    run = Run(cfg=cfg, config=config, overrides=overrides, run_dir=run_dir, device=device, data=data,
              schedule=schedule, final=final, full_counts=phases.module_counts(model), state={"model": model})
    index, start = plan.phase if plan is not None else (0, 0)
    phases.drop_modules(model, phases.dropped_before(schedule, index))
    register_state(run, plan, job, index, start)
    restore(run, plan)
    runtime.use_deterministic(t)  # after the probe: from here on an op without a deterministic version is an error
    run.guard = NonFiniteGuard(t.on_nonfinite, device)
    run.perf = Throughput(device, distributed.current().world)  # measured afresh at every start, never saved
    run.loaders = build_loaders(cfg, data, device, before_fork=run.writer.wait)
    return run


def prepare_process(t) -> torch.device:
    """Threads, numeric switches and the device of this process (one rank of a several-process job)."""
    dist = distributed.current()
    # never more threads than the cores this process may use (a launcher's share, taskset, a SLURM allocation,
    # the other ranks of this job on the same host)
    cores = max(1, len(os.sched_getaffinity(0)) // dist.local_world)
    torch.set_num_threads(t.num_threads or min(torch.get_num_threads(), cores))
    runtime.apply_switches(t)  # matmul precision, cuDNN benchmark; cuBLAS's setting before anything runs on a GPU
    distributed.check_batch(t.batch_size)
    return pick_device(t.device, dist.local_rank)


def build_data(cfg) -> dict:
    """The task's data (project/tasks.py); trainer.overfit_batches adds the split it validates on."""
    t, data = cfg.trainer, tasks.build_data(cfg)
    if t.get("overfit_batches"):  # validated on the training batches themselves, without augmentation
        augmented = cfg.get("augment", {}).get("transforms")
        data["overfit_val"] = tasks.build_data(cfg, augment=False)["train"] if augmented else data["train"]
        check_overfit(t, data)
    return data


def build_model(cfg, data: dict, device: torch.device) -> torch.nn.Module:
    """The model on its device, probed with a batch, in the layout and with the BatchNorm the trainer asks for."""
    t = cfg.trainer
    model = tasks.build_model(cfg, data).to(device)
    tasks.probe_model(cfg, model, data, device)
    if t.get("channels_last"):  # before the EMA copy is made: it inherits the layout and the input conversion
        runtime.to_channels_last(model)
    if t.sync_batchnorm and distributed.current().enabled:  # BatchNorm statistics over the global batch
        if device.type != "cuda":
            raise UserError("trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm runs on CUDA only. On the "
                            "CPU leave it off (each rank normalises its part of the batch) or use a model without "
                            "BatchNorm. Nothing was trained or written.")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def register_state(run: Run, plan, job: dict, index: int, start: int) -> None:
    """Register the rest of the one training state after the model, in load order (the RNG last)."""
    t, device = run.cfg.trainer, run.device
    if t.ema.decay is not None:
        run.state["ema"] = EMA(run.model, t.ema.decay)
    enter_phase(run, index, start, lr_from_config=plan is not None and plan.lr_from_config)  # optimizer, scheduler
    run.state["scaler"] = torch.amp.GradScaler(device.type, init_scale=t.grad_scaler.init_scale,
                                               growth_interval=t.grad_scaler.growth_interval,
                                               enabled=str(t.precision) == "16-mixed")
    run.state["progress"] = Progress(phase_index=index, phase_start=start)
    run.state["train_meter"] = TrainMeter(run.objective.meter(run.data, device), device)
    # only rank 0 logs the run (W&B, metrics.csv); the other ranks keep an entry that saves and loads the same
    tracker = NullTracker()
    if distributed.current().main:
        tracker = instantiate(run.cfg.logger)(run.run_dir, run_meta(run.cfg, run.config, run.schedule, plan, job))
    run.state["tracker"] = tracker
    run.state["rng"] = RNG()


def build_loaders(cfg, data: dict, device: torch.device, before_fork=None) -> dict:
    """One loader per split for the whole run: its workers persist across epochs and are forked once, after
    `before_fork()` (the checkpoint writer thread must not run while they fork)."""
    workers, batch_size = data.get("num_workers", 0), cfg.trainer.batch_size
    shard = distributed.shard if distributed.current().enabled else None
    # trainer.overfit_batches: validation's epoch 0 is the training loader's epoch 0 (same seed and order), on the
    # unaugmented training split; validation_pass() takes its first N batches
    val = (RunLoader(data["overfit_val"], batch_size, seed=cfg.seed, num_workers=workers, before_fork=before_fork)
           if "overfit_val" in data else
           RunLoader(data["val"], batch_size, seed=0, shuffle=False, num_workers=workers, before_fork=before_fork))
    return {"train": RunLoader(data["train"], batch_size, seed=cfg.seed, num_workers=workers,
                               pin_memory=device.type == "cuda", shard=shard, before_fork=before_fork),
            "val": val}


def enter_phase(run: Run, index: int, start: int, lr_from_config: bool = False) -> None:
    """Drop the phase's modules (from the EMA copy too), build its objective, optimizer (state carried over by
    parameter name) and scheduler, and compile the model again if it changed."""
    phase = run.schedule[index]
    dropped = phases.drop_modules(run.model, phase["drop_modules"])
    if run.ema is not None:
        run.ema.drop_modules(phase["drop_modules"], like=run.model)
    previous = run.state.get("optimizer")  # None while set-up registers the state
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


def close_loaders(run: Run) -> None:
    for loader in run.loaders.values():
        loader.close()
