"""trainer.profiler (debug=profile): torch.profiler over a window of optimizer steps after start-up and warm-up.

torch.profiler.schedule(wait, warmup, active, repeat=1): the first `wait` steps are not traced (allocator and
thread-pool start-up), the next `warmup` are traced and discarded, the next `active` are recorded. When the
window ends, the trace is written as Chrome/Perfetto JSON (export_chrome_trace) to <run dir>/profile/trace.json
and the top operators by self CPU time (self device time on a GPU) go to the log and to profile/operators.txt.
A window the run does not reach is written as far as it got when training ends, and the log says so.
Imported only when the profiler is on.
"""
import logging
import os
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from project.atomic import replacing, write_atomic

log = logging.getLogger(__name__)

OPEN_HINT = ("open it at https://ui.perfetto.dev (Open trace file) or in Chrome at chrome://tracing (Load); "
             "each optimizer step is a ProfilerStep#N slice")


class StepProfiler:
    """`step()` after every optimizer step; `stop()` when training ends (writes a window cut short)."""

    def __init__(self, settings, run_dir: Path, device: torch.device):
        self.wait, self.warmup, self.active = int(settings.wait), int(settings.warmup), int(settings.active)
        self.row_limit = int(settings.row_limit)
        self.device = torch.device(device)
        self.dir = Path(run_dir) / "profile"
        self.steps, self.written = 0, False
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        if self.device.type != "cuda":  # kineto looks for GPUs anyway and logs a spurious ERROR line on a CPU host
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        # one cycle (repeat=1): torch's note that a cycle's end clears the events does not apply
        warnings.filterwarnings("ignore", message="Warning: Profiler clears events", category=UserWarning)
        self.profiler = profile(activities=activities, on_trace_ready=self.write,
                                schedule=schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=1))
        self.profiler.start()
        first = self.wait + self.warmup + 1
        log.info("Profiling optimizer steps %d-%d with torch.profiler (after %d start-up and %d warm-up steps): the "
                 "trace goes to %s", first, first + self.active - 1, self.wait, self.warmup, self.dir / "trace.json")

    def step(self) -> None:
        self.steps += 1
        self.profiler.step()

    def stop(self) -> None:
        recorded = self.steps - self.wait - self.warmup
        self.profiler.stop()  # a window cut short is written here (on_trace_ready)
        if recorded < self.active:
            log.warning(
                "The profiler recorded %d of %d steps: training ended after %d optimizer steps, before the window "
                "(steps %d-%d) was over. Train more steps (trainer.limit_train_batches, trainer.max_epochs) or "
                "shorten it (trainer.profiler.wait / warmup / active).", max(recorded, 0), self.active, self.steps,
                self.wait + self.warmup + 1, self.wait + self.warmup + self.active)

    def write(self, prof) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        trace = self.dir / "trace.json"
        with replacing(trace) as partial:
            prof.export_chrome_trace(str(partial))
        on_gpu = self.device.type == "cuda"
        sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort_by, row_limit=self.row_limit)
        write_atomic(self.dir / "operators.txt", table + "\n")
        self.written = True
        first = self.wait + self.warmup + 1
        log.info("Profile of optimizer steps %d-%d: the top %d operators by self %s time (also in %s):\n%s\n"
                 "Trace: %s (%.1f MB): %s.", first, min(self.steps, first + self.active - 1), self.row_limit,
                 "CUDA" if on_gpu else "CPU", self.dir / "operators.txt", table, trace, trace.stat().st_size / 1e6,
                 OPEN_HINT)
