"""A trained model applied to image files, as evaluation and prediction both need it: decode, resize to the
training size, normalise as in training, softmax (optionally averaged with the mirror image, paired channels
swapped back), then the probabilities resized bilinearly to each image's original size before the argmax (never
argmax first: a class map cannot be interpolated).
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from project.data.folder import decode
from project.data.normalisation import to_input


def read(path: Path, in_channels: int = 3, decoder: str = "pil") -> torch.Tensor:
    """An image file as uint8 (C, H, W); an unreadable file is a UserError naming it."""
    from project.errors import UserError

    try:
        return decode(Path(path), in_channels, decoder)
    except Exception as e:  # noqa: BLE001 - PIL and torchvision raise many kinds for a file that is no image
        raise UserError(f"{path} is not an image that can be read ({type(e).__name__}: {e}). Remove it from the "
                        "folder or replace it with an intact image.") from None


def prepare(images: list[torch.Tensor], desc: dict) -> torch.Tensor:
    """uint8 images of any sizes -> one batch of model inputs at the training size, normalised as in training
    (desc: checkpoints.loading.model_card's image_size, mean, std)."""
    return torch.stack([to_input(im, desc["image_size"], desc["mean"], desc["std"]) for im in images])


def swap_channels(probs: torch.Tensor, flip_pairs) -> torch.Tensor:
    """Exchange the channels of each (left, right) class pair: what a mirrored image predicts, put back."""
    order = list(range(probs.shape[1]))
    for a, b in flip_pairs or []:
        order[a], order[b] = b, a
    return probs[:, order]


@torch.no_grad()
def probabilities(model, batch: torch.Tensor, tta: bool = False, flip_pairs=None) -> torch.Tensor:
    """Softmax over the classes, (N, K, H, W) or (N, K); with tta (segmentation), the mean of the image's and its
    mirror's, the mirror's flipped back and its paired channels swapped back."""
    probs = model(batch).float().softmax(1)
    if tta:
        mirrored = model(batch.flip(-1)).float().softmax(1)
        if mirrored.dim() == 4:  # per-pixel: back to the image's orientation, left/right classes swapped back
            mirrored = swap_channels(mirrored.flip(-1), flip_pairs)
        probs = (probs + mirrored) / 2  # class scores (N, K) of a mirror need no turning back
    return probs


def at_size(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One image's (K, h, w) probabilities at its original (H, W), bilinearly."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
