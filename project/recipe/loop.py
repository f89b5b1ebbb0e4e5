"""The loop: the epochs and phases, one epoch's batches, the forward pass, the optimizer step, and a stop signal
handled at an optimizer-step boundary."""
import contextlib
import itertools
import logging
import signal

import torch
from tqdm import tqdm

from project import distributed, runtime
from project.errors import UserError
from project.recipe.bad_files import saving_before
from project.recipe.divergence import check_finite, skip_nonfinite
from project.recipe.epoch_end import end_epoch, save
from project.recipe.limits import batch_limit, batches_per_epoch
from project.recipe.messages import announce_limits
from project.recipe.run import Run
from project.recipe.setup import enter_phase

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


def train_loop(run: Run) -> dict:
    t, progress = run.cfg.trainer, run.progress
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


def train_epoch(run: Run, epoch: int) -> str | None:
    """Train one epoch from progress.batch_in_epoch; returns the name of a stop signal that ended it early."""
    t, progress, meter = run.cfg.trainer, run.progress, run.train_meter
    start, n = progress.batch_in_epoch, batches_per_epoch(run, "train")
    if start == 0:
        meter.reset(run.objective.meter(run.data, run.device))
    # overfit_batches: epoch 0's order every epoch; a limit ends the epoch after its first n batches
    order = 0 if t.get("overfit_batches") else epoch
    bar = epoch_bar(run, epoch, order, start, n)
    run.model.train()
    k, perf = t.accumulate_grad_batches, run.perf
    perf.start_epoch()
    for i, batch in enumerate(bar, start=start):
        perf.arrived()  # the time since the last step's end went to waiting for this batch
        batch = tuple(b.to(run.device, non_blocking=True) for b in batch)
        if i % k == 0:
            run.guard.window_start(run.model)  # on_nonfinite=skip: a dropped window leaves the buffers as they were
        steps_now = not ((i + 1) % k and i + 1 < n)  # the window's last batch: the optimizer steps after it
        loss, outputs = accumulate(run, batch, i, n, steps_now)
        meter.loss_sum += loss.detach()
        run.guard.observe(loss, progress.global_step + 1)
        if not steps_now:
            perf.done(len(batch[0]))
            continue  # inside a window: gradients accumulate, and a stop waits for the window's end
        skip, agreed = agree_step(run)
        optimizer_step(run, skip)
        perf.done(len(batch[0]))
        progress.global_step += 1
        progress.batch_in_epoch = i + 1
        if run.profiler is not None:
            run.profiler.step()
        if progress.global_step % t.log_every_n_steps == 0 or i + 1 == n:
            check_finite(run)
            # train metrics are sampled on these steps only: scoring every batch costs ~3% of a step
            meter.meter.update(outputs, batch)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{perf.images_per_s():.0f}")
            perf.read()  # loss.item() has synchronised: the step's CUDA events are complete
        # several ranks act on the signal they agreed on: one caught since then waits for the next step's agreement
        if (agreed if distributed.current().enabled else run.stop.signum) and stop_here(run, epoch, n):
            bar.close()
            return run.stop.caught
    bar.close()
    perf.end_epoch()  # the last step has synchronised (loss.item() above)
    if epoch + 1 < t.max_epochs:  # workers load the next epoch's first batches while this one validates and saves
        run.loaders["train"].prefetch(order if t.get("overfit_batches") else epoch + 1)
    return None


def epoch_bar(run: Run, epoch: int, order: int, start: int, n: int) -> tqdm:
    """The epoch's batches in the loader's order `order`, from batch `start` (a limit ends the epoch after its
    first n), behind a progress bar."""
    batches = run.loaders["train"].epoch(order, start)  # the first epoch forks the workers (after the writer)
    batches = saving_before(run, batches, epoch, start, n)  # an unreadable file: saved at the step before, then stop
    if batch_limit(run, "train") is not None:
        batches = itertools.islice(batches, max(n - start, 0))
    return tqdm(batches, total=n, initial=start, desc=f"epoch {epoch + 1}/{run.cfg.trainer.max_epochs}", leave=False,
                disable=None, dynamic_ncols=True)


def accumulate(run: Run, batch: tuple, i: int, n: int, steps_now: bool):
    """Forward and backward of batch i of n, adding to its accumulation window's gradients: (loss, outputs)."""
    k = run.cfg.trainer.accumulate_grad_batches
    window = min(k, n - i // k * k)  # batches in this accumulation window: an epoch's last may be shorter
    # several ranks: gradients are averaged once per window (no_sync before), each rank's weighed by its share
    # of the global batch, which makes the average the global batch's mean even when it does not split evenly
    with run.ddp.no_sync() if run.ddp is not None and not steps_now else contextlib.nullcontext():
        loss, outputs = forward(run, batch)
        share = len(batch[0]) * distributed.current().world / global_size(run, i)
        run.scaler.scale(loss * share / window if share != 1 or window != 1 else loss).backward()
    return loss, outputs


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


def agree_step(run: Run) -> tuple[bool, int | None]:
    """Before an optimizer step: (drop the update, the stop signal every rank acts on after it). One process: its own
    loss flag (trainer.on_nonfinite=skip only: one host sync), and None (it reads its signal after the update).
    Several ranks decide both in one tiny all-reduce and one host sync, so they stay replicas: a non-finite loss on
    any rank drops the update on all (the averaged gradients are NaN on every rank), and all stop at the same step."""
    if not distributed.current().enabled:
        return run.guard.skip_step(), None
    agreed, any_bad = distributed.agree_step(run.stop.signum, run.guard.window_bad)
    run.stop.signum = agreed or run.stop.signum  # keep a signal this rank caught after sending its flags
    return run.guard.skip_step(any_bad), agreed


def optimizer_step(run: Run, skip: bool) -> None:
    """One update from the window's gradients: unscale, clip, step (the scaler skips it on inf/NaN gradients and
    backs off), then the EMA. `skip` (agree_step): drop it instead."""
    t, optimizer, scaler, meter = run.cfg.trainer, run.optimizer, run.scaler, run.train_meter
    if skip:  # on_nonfinite=skip and this window's loss was not finite, on this rank or another
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
    if run.ema is not None:
        run.ema.update(run.model)


def stop_here(run: Run, epoch: int, n: int) -> bool:
    """A stop signal, at an optimizer-step boundary: save last.pth, then hand the signal on. True: stop now."""
    progress = run.progress
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


def summarize(run: Run, interrupted: str | None) -> dict:
    """What train() returns and the tracker's summary: how the run ended, its best, what a continuation gained."""
    progress = run.progress
    status = "early stopped" if progress.phase_stopped and run.phase["last"] else "done"
    summary = {"status": f"interrupted by {interrupted}" if interrupted else status,
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
    summary.update(run.perf.summary())  # the mean images/s and data-wait share of this process's epochs
    run.tracker.log_summary(summary)
    return summary
