"""The non-finite loss guard (trainer.on_nonfinite): a diverged run must never train on, or save, NaN weights.

The step stays free of host syncs: each loss is checked on the device and the first bad step is recorded in a
device tensor. `check()` reads it (one sync) on logging steps and before every save, so no checkpoint is ever
written after a non-finite step. With `skip`, each optimizer step reads its window's flag (one sync a step,
the price of skipping) and the trainer drops the update, up to trainer.max_nonfinite_skips. Several ranks drop it
together when any rank's loss was not finite: their flags ride on the stop agreement's all-reduce
(distributed.agree_step), the same one host sync. Dropping it includes what the window's forward passes changed:
the model's buffers (BatchNorm running statistics) are put back as they were before the window (`window_start`
keeps a copy, in skip mode only).
"""
import torch


class NonFiniteGuard:
    def __init__(self, mode: str, device):
        self.mode = mode
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # optimizer step, -1 = none yet
        self.window_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.buffers = []  # skip mode: (buffer, its value before the window)

    def window_start(self, model: torch.nn.Module) -> None:
        """skip mode, before a window's first forward: keep the model's buffers, which the forward passes update."""
        if self.mode == "skip":
            self.buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Record a batch's loss, which belongs to optimizer step `step` (no host sync)."""
        bad = ~torch.isfinite(loss.detach())
        self.window_bad |= bad
        self.first_bad.masked_fill_(bad & (self.first_bad < 0), step)

    def skip_step(self, any_rank: bool | None = None) -> bool:
        """skip mode, at an optimizer step: True if this window's loss was not finite (drop the update). Several
        ranks pass `any_rank`, whether any rank's was (their `window_bad` all-reduced): all drop it or none does."""
        if self.mode != "skip":
            return False
        bad = bool(self.window_bad) if any_rank is None else any_rank
        self.window_bad.zero_()
        self.first_bad.fill_(-1)
        if bad:  # the NaN/inf batches also reached the BatchNorm running statistics: put them back
            with torch.no_grad():
                for buffer, before in self.buffers:
                    buffer.copy_(before)
        return bad

    def check(self) -> int | None:
        """The first optimizer step whose loss was not finite, or None (error mode; one host sync)."""
        if self.mode == "skip":
            return None
        step = int(self.first_bad)
        return None if step < 0 else step
