"""Run directories: the lock, their records, and reading them back."""
