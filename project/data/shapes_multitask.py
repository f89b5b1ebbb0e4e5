"""Generated images with two 3-class labels and a tabular vector correlated with them.

Each image holds 1-3 shapes on a striped background (the drawing of data=shapes). Labels:
  diagnosis  which kind the largest shape is (ellipse, rectangle, triangle)
  change     how many shapes there are (1, 2 or 3)
The tabular "clinical" vector is a noisy one-hot of both labels plus pure-noise features: it helps, it does not
give the answer away. Deterministic from the seed; train uses `seed`, val `seed + 1`.
"""
import numpy as np
import torch

from project.data.loader import TensorSamples
from project.data.normalisation import LEGACY, checked, to_input
from project.data.shapes import _shape_mask, _texture

TASKS = {"diagnosis": 3, "change": 3}


def generate(n: int, size: int, seed: int, tabular_dim: int, norm: dict = LEGACY) -> TensorSamples:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 3, size, size), np.float32)
    diagnosis, change = np.empty(n, np.int64), np.empty(n, np.int64)
    for i in range(n):
        images[i] = _texture(rng, size, yy, xx)
        count, largest = int(rng.integers(1, 4)), (0, -1)
        for _ in range(count):
            kind = int(rng.integers(1, 4))
            inside = _shape_mask(rng, kind, size, yy, xx)
            images[i][:, inside] = rng.uniform(0.0, 1.0, (3, 1)).astype(np.float32)
            largest = max(largest, (int(inside.sum()), kind - 1))
        images[i] += rng.standard_normal((3, size, size), dtype=np.float32) * 0.05
        diagnosis[i], change[i] = largest[1], count - 1
    tabular = rng.standard_normal((n, tabular_dim)).astype(np.float32)
    tabular[np.arange(n), diagnosis] += 1.0  # features 0-2: diagnosis, 3-5: change, the rest noise
    tabular[np.arange(n), 3 + change] += 1.0
    images = to_input(torch.from_numpy(images), size, norm["mean"], norm["std"])
    return TensorSamples(images, torch.from_numpy(tabular), torch.from_numpy(diagnosis), torch.from_numpy(change))


def build(image_size=64, train_size=512, val_size=128, seed=0, tabular_dim=8, mean=LEGACY["mean"],
          std=LEGACY["std"]):
    if tabular_dim < 6:
        raise ValueError("data.tabular_dim must be at least 6 (3 diagnosis + 3 change features)")
    norm = checked(mean, std, 3)
    return {"train": generate(train_size, image_size, seed, tabular_dim, norm),
            "val": generate(val_size, image_size, seed + 1, tabular_dim, norm), "tasks": dict(TASKS),
            "normalisation": norm,
            "model_args": {"tasks": dict(TASKS), "tabular_dim": tabular_dim, "in_channels": 3, "img_size": image_size}}
