"""An image or mask that cannot be read (project.errors.UnreadableFile, data.on_bad_file=error) never costs the run:
met among the training batches, the run is saved at the optimizer-step boundary before that batch, exactly as a
stop signal saves it (last.pth), and stops with one paragraph naming the file, what is wrong with it and how to go
on; `resume=full` continues once the file is fixed. The batch's error arrives in this process when the loop asks
for the batch, after the previous step is complete, so nothing of the bad batch has touched the state.

Not saved (the paragraph names the last intact checkpoint instead): inside a gradient-accumulation window (its
first batches' gradients and loss are half summed, and a file holds no gradients), with several ranks (saving
gathers every rank's RNG state, and the other ranks are not there to join), and before the epoch's first step
(the end of the previous epoch is saved already). Met outside the training batches (validation), the paragraph
names the last intact checkpoint too.
"""
import logging

from project import distributed
from project.checkpoints import files as checkpoint
from project.data.folder import FIX
from project.errors import UnreadableFile, UserError
from project.recipe.epoch_end import save
from project.recipe.run import Run

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


class Explained(UnreadableFile):
    """The paragraph is complete: where the run was saved and how to continue."""


def saving_before(run: Run, batches, epoch: int, start: int, n: int):
    """Epoch `epoch`'s training batches from batch `start`; when batch i cannot be read, the run is saved before it
    (when it can be: see the module's doc) and the paragraph raised."""
    i = start
    try:
        for batch in batches:
            yield batch
            i += 1  # the loop asks for the next batch once this one's step is done
    except UnreadableFile as e:
        where = f"{e.text} It is in batch {i + 1}/{n} of epoch {epoch + 1}."
        raise Explained(f"{where} {saved_before(run, epoch, i) or intact(run)} {FIX} {go_on(run)}", e.path) from None


def saved_before(run: Run, epoch: int, i: int) -> str | None:
    """Save last.pth at the step boundary before batch i, as a stop signal does, where the state is at one."""
    progress = run.progress
    if distributed.current().enabled or progress.batch_in_epoch != i or i == 0:
        return None
    save(run, ["last.pth"])
    run.writer.wait()
    last = run.ckpt_dir / "last.pth"
    log.info("Unreadable file: saved %s at epoch %d, batch %d.", last, epoch + 1, i)
    return (f"The run was saved before that batch, as a stop signal saves it: {last} holds epoch {epoch + 1} up to "
            f"batch {i} (optimizer step {progress.global_step}).")


def last_saved(run: Run) -> dict | None:
    last = run.ckpt_dir / "last.pth"
    try:
        return checkpoint.load(last) if last.is_file() else None
    except UserError:
        return None


def intact(run: Run) -> str:
    """Which checkpoint of this run holds what, where nothing was saved now."""
    saved = last_saved(run)
    if saved is None:
        return "No checkpoint of this run was written yet."
    at = (f"epoch {saved['epoch'] + 1} up to batch {saved['batch_in_epoch']}" if saved.get("batch_in_epoch") else
          f"the end of epoch {saved['epoch']}")
    return f"The last checkpoint of this run is {run.ckpt_dir / 'last.pth'} ({at}, optimizer step {saved['global_step']})."


def go_on(run: Run) -> str:
    if last_saved(run) is None:
        return "Then run the same command again."
    return f"Then continue with: python run.py resume=full resume.checkpoint={run.run_dir}"


def explained(run: Run, error: UnreadableFile) -> Explained:
    """The paragraph for an unreadable file met outside the training batches (validation), or the one already
    complete (`saving_before`)."""
    if isinstance(error, Explained):
        return error
    return Explained(f"{error.text} It is a validation sample. {intact(run)} {FIX} {go_on(run)}", error.path)
