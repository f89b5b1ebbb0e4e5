"""Checkpoint files: writing, reading ours and other scripts' files, a model back from one."""
