"""What the folder datasets share: decoding, the sample pipeline (augment, resize, normalise) and class names,
colours and flip pairs checked once.

A folder dataset is indexed by keys `(seed, epoch, index)` (`takes_keys`): the key seeds that sample's
augmentation (augment.sample_rng), so a sample is the same whichever process reads it, with 0 or N DataLoader
workers and any number of ranks. A plain int index is epoch 0 of seed 0.
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from project.data.normalisation import to_input
from project.data.loader import Skipped
from project.errors import UnreadableFile, UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DECODERS = ("pil", "torchvision")  # they differ numerically on JPEGs (another IDCT), so the run records which


def split_key(key) -> tuple[int, int, int]:
    return tuple(key) if isinstance(key, (tuple, list)) else (0, 0, int(key))


# what decoders raise for a file they cannot read: Pillow OSError (truncated, not an image), SyntaxError, EOFError or
# ValueError (broken headers, tiles); torchvision.io RuntimeError
DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, RuntimeError)
ON_BAD_FILE = ("error", "skip")
FIX = ("Replace the file with a readable copy (or remove it), or set data.on_bad_file=skip to leave unreadable files "
       "out of their batches with a warning naming each; `project-preview --check-files` with the run's data "
       "overrides lists every unreadable file before a long run.")


def unreadable(kind: str, path: Path, error: Exception) -> UnreadableFile:
    """The error for a file its decoder cannot read, in one line (it travels back from a worker as one)."""
    reason = " ".join(str(error).split()) or type(error).__name__
    return UnreadableFile(f"{kind} {path} cannot be read: {reason}.", path)


def decode(path: Path, channels: int, decoder: str) -> torch.Tensor:
    """An image file as a uint8 tensor (channels, H, W): grayscale or RGB, whatever the file holds. A file the
    decoder cannot read raises UnreadableFile naming it."""
    try:
        if decoder == "torchvision":
            from torchvision.io import ImageReadMode, decode_image

            return decode_image(str(path), mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
        from torchvision.transforms.v2.functional import pil_to_tensor

        with Image.open(path) as image:
            return pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))
    except DECODE_ERRORS as e:
        raise unreadable("Image", path, e) from None


def read_mask(path: Path) -> torch.Tensor:
    """A class-index PNG as an int64 (H, W) tensor: the pixel values themselves, also for palette ('P') PNGs,
    whichever image decoder the run uses. A file Pillow cannot read raises UnreadableFile naming it."""
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("L", "P", "I", "I;16", "1"):
                raise UserError(f"Mask {path} is a {mask.mode} image; masks are single-channel PNGs whose pixel "
                                "values are class indices (mode L or P).")
            return torch.from_numpy(np.array(mask, dtype=np.int64))
    except DECODE_ERRORS as e:
        raise unreadable("Mask", path, e) from None


def unreadable_files(files, channels: int, decoder: str, threads: int = 1) -> list[str]:
    """What is wrong with each of `files` ((kind, path): "image" or "mask") that training cannot read (opened as
    training opens them, with the same decoder; also a mask that is not single-channel), in their order. Pillow
    decodes outside the GIL, so threads help."""
    from concurrent.futures import ThreadPoolExecutor

    def check(file):
        kind, path = file
        try:
            decode(path, channels, decoder) if kind == "image" else read_mask(path)
        except UserError as e:  # UnreadableFile, or a mask of another mode
            return str(e)
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return [problem for problem in pool.map(check, files) if problem is not None]


def read_or_skip(read, key, on_bad_file: str):
    """A dataset's sample `read(key)`; with data.on_bad_file=skip, a sample whose file cannot be read is a Skipped
    marker, which the loader's collate leaves out of its batch (the same samples whichever worker reads them)."""
    try:
        return read(key)
    except UnreadableFile as e:
        if on_bad_file != "skip":
            raise
        return Skipped(str(e))


def check_mask(mask: torch.Tensor, path: Path, num_classes: int, ignore_index: int) -> None:
    bad = (mask >= num_classes) & (mask != ignore_index) | (mask < 0)
    if bad.any():
        value = int(mask[bad][0])
        raise UserError(f"Mask {path} holds the value {value}, which is neither a class index (0..{num_classes - 1}, "
                        f"data.num_classes={num_classes}) nor data.ignore_index={ignore_index}. Fix the mask, or set "
                        "data.num_classes / data.ignore_index to what the masks use.")


class Pipeline:
    """decoded image (+ mask) -> augment (training only, seeded per sample) -> the model's input (normalisation's
    to_input: resized, normalised by `norm`, {"mean", "std"}) and the mask resized alike."""

    def __init__(self, image_size: int, norm: dict, augment=None):
        self.size, self.norm, self.augment = [int(image_size), int(image_size)], norm, augment

    def __call__(self, key, image: torch.Tensor, mask: torch.Tensor | None = None):
        # torchvision is imported here, not at the top: its package imports torch._dynamo (about 1.2 s), which a
        # run on generated data or a command that reads no image folder should not pay at start-up
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        from project.data.augment import sample_rng

        seed, epoch, index = split_key(key)
        sample = (tv_tensors.Image(image),) if mask is None else (tv_tensors.Image(image), tv_tensors.Mask(mask))
        if self.augment is not None:
            with sample_rng(seed, epoch, index):
                sample = self.augment(*sample)
            sample = sample if isinstance(sample, tuple) else (sample,)  # v2 returns one input unpacked
        image = to_input(sample[0].as_subclass(torch.Tensor), self.size[0], self.norm["mean"], self.norm["std"])
        rest = (v2.functional.resize(m, self.size, antialias=True) for m in sample[1:])
        return (image, *(m.as_subclass(torch.Tensor).long() for m in rest))


def image_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS}


def palette(n: int) -> list[list[int]]:
    """Distinct colours for classes without declared ones (the PASCAL VOC bit-interleaving palette)."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append([r, g, b])
    return colors


def describe_classes(num_classes: int, classes=None, colors=None, flip_pairs=None) -> dict:
    """Names, colours and flip pairs, checked against the number of classes once, with the fix named."""
    classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise UserError(f"data.classes names {len(classes)} classes but data.num_classes={num_classes}; list one name "
                        "per class index, in index order.")
    colors = [list(map(int, c)) for c in colors] if colors is not None else palette(num_classes)
    if len(colors) != num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
        raise UserError(f"data.colors must give one [R, G, B] (0..255) per class: {num_classes} colours for "
                        f"data.num_classes={num_classes}, got {len(colors)}.")
    pairs = [[int(a), int(b)] for a, b in (flip_pairs or [])]
    flat = [i for pair in pairs for i in pair]
    if any(not 0 <= i < num_classes for i in flat) or len(set(flat)) != len(flat):
        raise UserError(f"data.flip_pairs={pairs}: each pair holds two class indices (0..{num_classes - 1}) that "
                        "swap under a horizontal flip, e.g. [[4, 5], [6, 7]]; no index may appear twice.")
    return {"classes": classes, "colors": colors, "flip_pairs": pairs}


def check_on_bad_file(value: str) -> str:
    if value not in ON_BAD_FILE:
        raise UserError(f"data.on_bad_file={value!r} is unknown: use error (stop at an unreadable image or mask, "
                        "naming it, after saving the run) or skip (leave such files out, with a warning naming each).")
    return value


def check_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise UserError(f"data.decoder={decoder!r} is unknown: use pil (Pillow) or torchvision (torchvision.io, "
                        "libjpeg-turbo). They decode JPEGs slightly differently, so a run keeps the one it began with.")
    return decoder
