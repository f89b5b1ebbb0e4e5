"""How much of the data a run uses: every batch, or the first few (trainer.limit_train_batches,
limit_val_batches, overfit_batches), and whether that makes the run a trial."""
import math

from project.errors import UserError
from project.recipe.run import Run


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
