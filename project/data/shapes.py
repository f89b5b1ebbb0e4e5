"""A generated segmentation set: ellipses (class 1), rectangles (2) and triangles (3) on textured backgrounds.

Backgrounds are striped, shapes are filled with one random colour each, so the outline, not the colour, tells
the classes apart. Deterministic
from the seed; train uses `seed`, val `seed + 1`. About 0.2 s for the default 960 images of 64x64.
"""
import numpy as np
import torch

from project.data.loader import TensorSamples
from project.data.normalisation import LEGACY, checked, to_input

CLASSES = ("background", "ellipse", "rectangle", "triangle")


def _texture(rng, size, yy, xx):
    """A random colour with an oriented sinusoidal stripe pattern, shape (3, size, size)."""
    fx, fy = rng.uniform(0.12, 0.3, 2) * rng.choice([-1, 1], 2)
    wave = np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 6.3))
    return rng.uniform(0.2, 0.8, (3, 1, 1)).astype(np.float32) + rng.uniform(0.15, 0.3, (3, 1, 1)) * rng.choice([-1, 1], (3, 1, 1)) * wave


def _shape_mask(rng, kind, size, yy, xx):
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    r = rng.uniform(0.15, 0.3) * size
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    aspect = rng.uniform(0.5, 1.0)
    if kind == 1:  # ellipse
        return (u / r) ** 2 + (v / (r * aspect)) ** 2 <= 1
    if kind == 2:  # rectangle
        return (np.abs(u) <= r) & (np.abs(v) <= r * aspect)
    # triangle: inside three half-planes at 120 degrees
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = angle + k * 2 * np.pi / 3
        inside &= (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a) <= r * 0.6
    return inside


def generate(n: int, size: int, seed: int, norm: dict = LEGACY) -> TensorSamples:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    for i in range(n):
        images[i] = _texture(rng, size, yy, xx)
        for _ in range(rng.integers(1, 3)):
            kind = int(rng.integers(1, 4))
            inside = _shape_mask(rng, kind, size, yy, xx)
            colour = rng.uniform(0.0, 1.0, (3, 1)).astype(np.float32)  # flat fill: outline and kind are the cue
            images[i][:, inside] = colour
            masks[i][inside] = kind
        images[i] += rng.standard_normal((3, size, size), dtype=np.float32) * 0.05
    return TensorSamples(to_input(torch.from_numpy(images), size, norm["mean"], norm["std"]), torch.from_numpy(masks))


def build(image_size=64, train_size=768, val_size=192, seed=0, mean=LEGACY["mean"], std=LEGACY["std"]):
    norm = checked(mean, std, 3)
    return {"train": generate(train_size, image_size, seed, norm),
            "val": generate(val_size, image_size, seed + 1, norm), "normalisation": norm,
            "classes": list(CLASSES), "model_args": {"num_classes": len(CLASSES), "in_channels": 3}}
