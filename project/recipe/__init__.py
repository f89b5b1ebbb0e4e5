"""The training recipe, one module per lifecycle step: train.py (the lifecycle: plan, setup, loop, save,
report), run.py (the run object), setup.py, loop.py, epoch_end.py (validate, record, save), restore.py,
validation.py (the validation pass), messages.py (what the recipe says), limits.py (how many batches),
divergence.py (a NaN/inf loss)."""
