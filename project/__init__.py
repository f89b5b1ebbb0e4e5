"""Train, stop, and continue PyTorch runs configured with Hydra."""
