"""trainer.on_nonfinite: what the loop does when the loss is NaN or inf (stop, or skip the step)."""
import logging

from project.errors import TrainingDiverged
from project.recipe.messages import diverged_message
from project.recipe.run import Run

log = logging.getLogger("project.recipe")  # one name for every recipe module: uniform log lines


def check_finite(run: Run) -> None:
    """trainer.on_nonfinite=error: stop (exit code 3) at the first check after a NaN/inf loss (one host sync)."""
    step = run.guard.check()
    if step is not None:
        raise TrainingDiverged(diverged_message(run, step, "the loss became NaN or inf"))


def skip_nonfinite(run: Run) -> None:
    t, progress = run.cfg.trainer, run.progress
    progress.nonfinite_skips += 1
    log.warning("Non-finite loss at optimizer step %d: update skipped (%d so far, at most %d).",
                progress.global_step + 1, progress.nonfinite_skips, t.max_nonfinite_skips)
    if progress.nonfinite_skips > t.max_nonfinite_skips:
        raise TrainingDiverged(diverged_message(
            run, progress.global_step + 1,
            f"the loss was NaN or inf in more than trainer.max_nonfinite_skips={t.max_nonfinite_skips} steps"))
