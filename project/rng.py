"""Seeding; the RNG states themselves are the training state's "rng" entry (project/state.py)."""
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
