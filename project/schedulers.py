"""Learning-rate schedules, stepped once per epoch.

The closed-form ones compute the LR as a pure function of the epoch and the *current* config, and save only
their progress (the epoch). Resuming therefore never resurrects an old base LR or an old horizon: a run resumed
with a new optimizer.lr or a longer trainer.max_epochs follows the new schedule from the epoch it stopped at.
"""
import logging
import math

from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

PROGRESS_KEYS = ("last_epoch", "_step_count", "_last_lr")

log = logging.getLogger(__name__)


class _ClosedForm(LRScheduler):
    def factor(self, epoch: int) -> float:
        raise NotImplementedError

    def get_lr(self):
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def state_dict(self):
        return {k: self.__dict__[k] for k in PROGRESS_KEYS if k in self.__dict__}

    def load_state_dict(self, state_dict):
        self.__dict__.update({k: state_dict[k] for k in PROGRESS_KEYS if k in state_dict})
        # set the LR the restored epoch calls for, from the current base LRs
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def step(self, metric=None):  # the trainer passes the val metric to every scheduler
        super().step()


class Cosine(_ClosedForm):
    """Linear warm-up for `warmup_epochs` (capped below half the run: capped_warmup), then cosine decay to
    `min_lr_ratio * lr` at `max_epochs`."""

    def __init__(self, optimizer, max_epochs: int, warmup_epochs: int = 0, min_lr_ratio: float = 0.0):
        self.max_epochs, self.min_lr_ratio = max_epochs, min_lr_ratio
        self.warmup_epochs = capped_warmup(warmup_epochs, max_epochs)
        if self.warmup_epochs < warmup_epochs:
            log.info("scheduler.warmup_epochs=%d capped at %d for a run of %d epochs: the warm-up stays under half "
                     "of it, so the LR peaks and then anneals (set scheduler.warmup_epochs=%d to silence this).",
                     warmup_epochs, self.warmup_epochs, max_epochs, self.warmup_epochs)
        super().__init__(optimizer)

    def factor(self, epoch):
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        span = max(1, self.max_epochs - self.warmup_epochs)
        progress = min(1.0, (epoch - self.warmup_epochs) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def capped_warmup(warmup_epochs: int, max_epochs: int) -> int:
    """The warm-up a run of `max_epochs` gets: less than half of it, so its last epoch is below the peak (a
    2-epoch continuation with warmup_epochs=1 would otherwise ramp up for the whole run and end at the peak).
    A function of the config alone, so every resume of the same run computes the same LRs."""
    return min(warmup_epochs, max(0, (max_epochs - 1) // 2))


class Step(_ClosedForm):
    """Multiply the LR by `gamma` every `step_size` epochs."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def factor(self, epoch):
        return self.gamma ** (epoch // self.step_size)


class Constant(_ClosedForm):
    def factor(self, epoch):
        return 1.0


class Plateau(ReduceLROnPlateau):
    """torch's ReduceLROnPlateau; its settings come from the current config, only its progress is restored."""

    _PROGRESS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch", "_last_lr")

    def step(self, metric=None):
        if metric is not None:  # an epoch without validation leaves the plateau count alone
            super().step(metric)

    def state_dict(self):
        return {k: self.__dict__[k] for k in self._PROGRESS if k in self.__dict__}

    def load_state_dict(self, state_dict):
        self.__dict__.update({k: state_dict[k] for k in self._PROGRESS if k in state_dict})
