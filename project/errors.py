class UserError(Exception):
    """A mistake in what the user asked for (a bad value, a missing file).

    run.py prints the message as one paragraph and exits with status 2, without a traceback and without
    touching any checkpoint. The message names the bad value and says how to fix it.
    """
