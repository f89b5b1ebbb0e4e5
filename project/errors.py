class UserError(Exception):
    """A mistake in what the user asked for (a bad value, a missing file).

    run.py prints the message as one paragraph and exits with status 2, without a traceback and without
    touching any checkpoint. The message names the bad value and says how to fix it.
    """


class TrainingDiverged(Exception):
    """The loss became NaN or inf (trainer.on_nonfinite). run.py prints the message, which names the last good
    checkpoint and the command to continue from it, and exits with status 3. Nothing was saved after the bad step."""
