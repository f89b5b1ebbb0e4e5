"""What users do with a run's results: inspect a checkpoint, analyze curves, compare runs and sweeps, preview the
training data. Each module is a command (project-<name>, or python -m project.results.<name>)."""
