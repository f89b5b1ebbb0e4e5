class UserError(Exception):
    """A mistake in what the user asked for (a bad value, a missing file).

    run.py prints the message as one paragraph and exits with status 2, without a traceback and without
    touching any checkpoint. The message names the bad value and says how to fix it.
    """


class TrainingDiverged(Exception):
    """The loss became NaN or inf (trainer.on_nonfinite). run.py prints the message, which names the last good
    checkpoint and the command to continue from it, and exits with status 3. Nothing was saved after the bad step."""


class RunDirUnavailable(UserError):
    """The run dir is held by another live process, or cannot be written. Reported without writing anything
    into it (not even training.log: it may be another run's)."""


class DiskError(Exception):
    """No space, no quota, no permission or a read-only file system while writing a run's files. run.py prints
    the message (the file, bytes needed and free, which checkpoints are intact, how to continue) and exits 4."""


class Interrupted(Exception):
    """A sweep job stopped by a signal after saving last.pth: a launcher reports it as interrupted, not failed, and
    a search sweeper does not take its partial score."""


class WorkerDied(Exception):
    """A DataLoader worker process died (the out-of-memory killer, a kill -9): not a stop signal, which workers
    ignore. run.py prints the message (where the run was, the last intact checkpoint, the command to continue) and
    exits with status 5."""


class UnreadableFile(UserError):
    """An image or mask file that its decoder cannot read (truncated, not an image, no permission). Raised in a
    DataLoader worker, it reaches the main process as this type again: torch rebuilds it from one string (the
    worker's traceback ending in this message), which `text` takes back out. The recipe saves the run at its
    last step boundary before reporting it (project/recipe/bad_files.py); data.on_bad_file=skip skips such files."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path  # None once rebuilt from a worker's traceback: the message names it

    @property
    def text(self) -> str:
        text = str(self)
        if "\nOriginal Traceback" in text:  # torch's "Caught UnreadableFile in DataLoader worker process N. ..."
            text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
        return text
