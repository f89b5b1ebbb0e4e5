"""A generated face-parsing folder in CelebAMask-HQ's layout and class indices, for tests, benchmarks and the
README's pictures (nothing is downloaded): ROOT/train/{images,masks}/NAME.{jpg,png} and ROOT/test/images/.

Each face is an ellipse of skin with hair, neck, brows, eyes, nose and lips at jittered places and colours.
The person's left eye (l_eye, 4) is on the image's right, as in CelebAMask-HQ.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# CelebAMask-HQ indices used here
SKIN, NOSE, L_EYE, R_EYE, L_BROW, R_BROW, U_LIP, L_LIP, HAIR, NECK = 1, 2, 4, 5, 6, 7, 11, 12, 13, 17


def face(rng, size: int) -> tuple[Image.Image, Image.Image]:
    s = size / 64
    mask = Image.new("L", (size, size), 0)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 120, 3)))
    m, d = ImageDraw.Draw(mask), ImageDraw.Draw(image)
    cx, cy = size / 2 + rng.uniform(-5, 5) * s, size / 2 + rng.uniform(-3, 3) * s
    w, h = rng.uniform(15, 19) * s, rng.uniform(20, 24) * s
    skin = tuple(int(v) for v in rng.integers(120, 230, 3))

    def shape(kind, box, label, colour):
        getattr(m, kind)(box, fill=label)
        getattr(d, kind)(box, fill=colour)

    shape("rectangle", (cx - w * 0.45, cy + h * 0.6, cx + w * 0.45, size), NECK, tuple(int(v * 0.85) for v in skin))
    shape("ellipse", (cx - w * 1.1, cy - h * 1.15, cx + w * 1.1, cy + h * 0.5), HAIR,
          tuple(int(v) for v in rng.integers(0, 90, 3)))
    shape("ellipse", (cx - w, cy - h, cx + w, cy + h), SKIN, skin)
    for side, eye, brow in ((-1, R_EYE, R_BROW), (1, L_EYE, L_BROW)):  # the person's left is the image's right
        ex, ey = cx + side * w * 0.42, cy - h * 0.18
        shape("ellipse", (ex - 3 * s, ey - 1.6 * s, ex + 3 * s, ey + 1.6 * s), eye, (40, 40, 60))
        shape("rectangle", (ex - 3.5 * s, ey - 5 * s, ex + 3.5 * s, ey - 3.5 * s), brow, (60, 40, 30))
    shape("polygon", [(cx, cy - 2 * s), (cx - 2.5 * s, cy + 5 * s), (cx + 2.5 * s, cy + 5 * s)], NOSE,
          tuple(int(v * 0.8) for v in skin))
    shape("rectangle", (cx - 5 * s, cy + 9 * s, cx + 5 * s, cy + 10.5 * s), U_LIP, (170, 60, 70))
    shape("rectangle", (cx - 4.5 * s, cy + 10.5 * s, cx + 4.5 * s, cy + 12 * s), L_LIP, (190, 80, 90))
    noise = rng.normal(0, 6, (size, size, 3))
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))
    return image, mask


def write(root, train: int = 40, test: int = 8, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("train", train), ("test", test)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        if split == "train":
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = face(rng, size)
            image.save(root / split / "images" / f"{i:04d}.jpg", quality=90)
            if split == "train":
                mask.save(root / split / "masks" / f"{i:04d}.png")
    return root
