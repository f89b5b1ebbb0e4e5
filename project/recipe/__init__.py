"""The training recipe, one module per lifecycle step: train.py (the lifecycle: plan, setup, loop, save,
report), run.py (the run object), setup.py, loop.py, epoch_end.py, restore.py, validation.py, messages.py,
limits.py, divergence.py."""
