"""Train, stop, and continue PyTorch runs configured with Hydra."""


def __getattr__(name):
    """`from project import load_model` without importing torch when run.py imports the package first."""
    if name == "load_model":
        from project.checkpoints.loading import load_model

        return load_model
    raise AttributeError(f"module 'project' has no attribute {name!r}")
