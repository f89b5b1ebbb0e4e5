"""How fast an epoch trains, and why: images/s, the share of the epoch spent waiting for the next batch, the step
time and, on a GPU, the peak memory (issue 27). Never part of the training state: a resume measures afresh.

Measuring adds no host-device synchronisation to the step. On the CPU the marks are time.perf_counter(); on a
GPU they are CUDA events recorded in the stream, read only where the loop synchronises anyway (after the loss's
.item() every trainer.log_every_n_steps, and at the epoch's end), when every recorded event has completed.

Each batch gives three marks: the end of the previous step (the epoch's start for the first batch), the batch
in hand in the main process, and the end of its step. Data wait is the time from the first to the second, the step
the time from the second to the third. On a GPU both are the device's own timeline: the wait is the time it sat
idle while the main process fetched the batch (a host running ahead of the device waits for data for free)."""
import time

import torch

INPUT_BOUND = 0.5  # above this share of an epoch waiting for data, the run is input-bound


class Throughput:
    """One epoch's measurement at a time: start_epoch(), then arrived() and done() per batch, read() where the loop
    has synchronised, end_epoch() for the epoch's figures (also kept in `epochs` for the run's summary)."""

    def __init__(self, device: torch.device, world: int = 1):
        self.cuda = device.type == "cuda"
        self.device, self.world = device, world
        self.epochs: list[dict] = []  # every finished epoch's figures, in this process
        self.warned = False           # the input-bound advice is given once per run
        self.start_epoch()

    def start_epoch(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.images, self.batches, self.wait, self.step = 0, 0, 0.0, 0.0
        self.pending: list[tuple] = []  # (previous step's end, arrival, end) not yet read
        self.tic = time.perf_counter()
        self.ended = self.arrival = self.mark()

    def mark(self):
        """Now: a host time on the CPU, a recorded CUDA event on a GPU (never waited on here)."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def arrived(self) -> None:
        """The next batch is in hand (before it is moved to the device: the copy is part of the step)."""
        self.arrival = self.mark()

    def done(self, images: int) -> None:
        """The batch's step is done (its optimizer step too, when its accumulation window ends)."""
        end = self.mark()
        self.pending.append((self.ended, self.arrival, end))
        self.ended = end
        self.images += images
        self.batches += 1
        if not self.cuda:
            self.read()

    def read(self) -> None:
        """Add up the marks recorded so far. On a GPU call it only after a synchronisation (loss.item()): marks
        still in flight wait for the next read, which never waits on them."""
        if self.cuda and self.pending and not self.pending[-1][2].query():
            return
        for previous, arrival, end in self.pending:
            self.wait += elapsed(previous, arrival)
            self.step += elapsed(arrival, end)
        self.pending = []

    def images_per_s(self) -> float:
        """This epoch so far, the whole job's (every rank trains as many images), by the host's clock."""
        return self.images * self.world / max(time.perf_counter() - self.tic, 1e-9)

    def end_epoch(self) -> dict:
        """The epoch's figures as metrics.csv columns; called after the epoch's last step has synchronised."""
        if self.cuda and self.pending and not self.pending[-1][2].query():
            self.pending[-1][2].synchronize()  # never in the loop: its last step's loss.item() has completed them
        self.read()
        wall = max(time.perf_counter() - self.tic, 1e-9)
        figures = {"perf_images_per_s": round(self.images_per_s(), 2),
                   "perf_data_wait": round(min(self.wait / wall, 1.0), 4),
                   "perf_step_ms": round(1000 * self.step / max(self.batches, 1), 3)}
        if self.cuda:
            figures["perf_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
            figures["perf_peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(self.device) / 2**30, 3)
        self.epochs.append(figures)
        return figures

    def last(self) -> dict:
        """The newest epoch's figures; empty before any epoch ended."""
        return self.epochs[-1] if self.epochs else {}

    def summary(self) -> dict:
        """The run's means over its epochs in this process (empty when none finished): the tracker's summary."""
        if not self.epochs:
            return {}
        n = len(self.epochs)
        return {"perf/mean_images_per_s": round(sum(e["perf_images_per_s"] for e in self.epochs) / n, 2),
                "perf/mean_data_wait": round(sum(e["perf_data_wait"] for e in self.epochs) / n, 4)}

    def input_bound(self, figures: dict) -> bool:
        """True the first time an epoch waits for data more than INPUT_BOUND of its time."""
        if self.warned or figures.get("perf_data_wait", 0.0) <= INPUT_BOUND:
            return False
        self.warned = True
        return True


def elapsed(start, end) -> float:
    """Seconds between two marks (host times, or completed CUDA events)."""
    if isinstance(start, float):
        return end - start
    return start.elapsed_time(end) / 1000.0


def epoch_text(figures: dict) -> str:
    """The epoch line's part: `1234 img/s, data wait 12%, step 45.6 ms, peak 1.20/1.50 GiB`."""
    if not figures:
        return ""
    text = (f"{figures['perf_images_per_s']:.0f} img/s, data wait {figures['perf_data_wait']:.0%}, "
            f"step {figures['perf_step_ms']:.1f} ms")
    if "perf_peak_allocated_gib" in figures:
        text += f", peak {figures['perf_peak_allocated_gib']:.2f}/{figures['perf_peak_reserved_gib']:.2f} GiB"
    return text
