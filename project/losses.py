import torch
import torch.nn.functional as F
from torch import nn


class CEDiceLoss(nn.Module):
    """Cross-entropy + dice_weight * (1 - soft Dice), Dice averaged over the classes present in the batch."""

    def __init__(self, dice_weight: float = 1.0, ignore_index: int = 255, smooth: float = 1.0):
        super().__init__()
        self.dice_weight, self.ignore_index, self.smooth = dice_weight, ignore_index, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        if self.dice_weight == 0:
            return ce
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.softmax(dim=1) * valid
        onehot = F.one_hot(target.where(valid.squeeze(1), 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return ce + self.dice_weight * (1 - dice.mean())
