"""Augmentation from config (conf/augment/*.yaml), on torchvision's transforms v2.

A conf/augment option is a list of v2 transforms built with hydra.utils.instantiate. The folder datasets apply
it to the training split, image and mask together (tv_tensors.Image / tv_tensors.Mask: v2 resamples masks by
nearest neighbour and fills them with what `fill()` says), after decoding and before the resize to
`data.image_size` and the normalisation.

Written here because torchvision lacks them: `fill()` (a per-type fill, which YAML cannot key by class),
`FlipPairs` (a horizontal flip that also swaps left/right labels, e.g. l_eye <-> r_eye: flipping a face without
it teaches the model to confuse them) and `sample_rng()` (each sample's random draws from its own seed).
"""
import contextlib
import hashlib

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


def fill(image=0, mask=255) -> dict:
    """v2's per-type fill: images padded with `image`, masks with `mask` (the data's ignore_index)."""
    return {tv_tensors.Image: image, tv_tensors.Mask: mask}


def compose(transforms) -> v2.Compose | None:
    """The option's list as one transform (None for augment=none)."""
    transforms = [t for t in (transforms or []) if t is not None]
    return v2.Compose(transforms) if transforms else None


class FlipPairs(v2.RandomHorizontalFlip):
    """A horizontal flip that swaps the paired labels of a mask where it flips: `pairs` [[4, 5], [6, 7]] turns a
    flipped l_eye (4) into r_eye (5) and back. Any other value (background, ignore_index) is kept."""

    def __init__(self, pairs=(), p: float = 0.5):
        super().__init__(p=p)
        self.pairs = [tuple(int(i) for i in pair) for pair in (pairs or [])]
        size = max([256, *(i + 1 for pair in self.pairs for i in pair)])
        self.lut = torch.arange(size)
        for a, b in self.pairs:
            self.lut[a], self.lut[b] = b, a

    def transform(self, inpt, params):
        flipped = super().transform(inpt, params)  # only called when this sample is flipped
        if isinstance(inpt, tv_tensors.Mask) and self.pairs:
            return tv_tensors.wrap(self.lut[flipped.long()].to(flipped.dtype), like=flipped)
        return flipped


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """One 63-bit seed per (run seed, epoch, sample index): the same sample draws the same numbers in any
    process (0 or N DataLoader workers, any number of ranks) and other numbers in another epoch."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@contextlib.contextmanager
def sample_rng(seed: int, epoch: int, index: int):
    """v2 transforms draw from the global torch RNG: run them with the CPU generator seeded for this sample and
    restored afterwards (fork_rng; not torch.manual_seed, which would also reseed CUDA's generators)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(sample_seed(seed, epoch, index))
        yield
