"""The validation pass: the objective's scores on the validation loader, and the job's one result of it."""
import itertools

import torch

from project import distributed
from project.data.loader import RunLoader
from project.recipe.limits import batch_limit
from project.recipe.run import Run


@torch.no_grad()
def validation_pass(model, objective, loader: RunLoader, device, data, dtype=None, limit: int | None = None) -> dict:
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


def validate(run: Run, model) -> tuple[dict, dict, int | None]:
    """Score `model` with the current phase's objective: (scores, per-class scores, batches scored). Several ranks:
    rank 0 validates the whole set (the job's numbers, as one process would), the others take its result so that
    every rank decides the same."""
    val = {}
    if distributed.current().main:
        val = validation_pass(model, run.objective, run.loaders["val"], run.device, run.data, run.autocast_dtype,
                              limit=batch_limit(run, "val"))
    val = distributed.broadcast(val)
    per_class = val.pop("per_class", {})
    return val, per_class, val.pop("batches", None)
