import torch
import torch.nn.functional as F
from torch import nn


class CEDiceLoss(nn.Module):
    """Cross-entropy + dice_weight * (1 - soft Dice), the soft Dice averaged over all classes, ignored pixels
    (`ignore_index`) left out of both terms.

    The Dice sums are taken per class without a one-hot of the batch (an int64 (N, H, W, C) tensor, 8 bytes a
    pixel and class) and without multiplying the whole probability map by the ignore mask: the probability of each
    pixel's own class is gathered and added into its class (index_add_), the class's probability mass is one
    contraction with the mask. No host-device sync: nothing here reads a value back.
    """

    def __init__(self, dice_weight: float = 1.0, ignore_index: int = 255, smooth: float = 1.0):
        super().__init__()
        self.dice_weight, self.ignore_index, self.smooth = dice_weight, ignore_index, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits, dim=1)  # once, for both terms
        ce = F.nll_loss(log_probs, target, ignore_index=self.ignore_index)
        if self.dice_weight == 0:
            return ce
        probs, classes = log_probs.exp(), logits.shape[1]
        valid = target != self.ignore_index
        own = target.where(valid, 0)  # an ignored pixel counts for class 0 with weight 0
        weight = valid.to(probs.dtype)
        p_own = probs.gather(1, own.unsqueeze(1)).squeeze(1) * weight  # (N, H, W): small next to (N, C, H, W)
        zeros = probs.new_zeros(classes)
        inter = zeros.index_add(0, own.flatten(), p_own.flatten())
        count = zeros.index_add(0, own.flatten(), weight.flatten())
        mass = torch.einsum("nchw,nhw->c", probs, weight)
        dice = (2 * inter + self.smooth) / (mass + count + self.smooth)
        return ce + self.dice_weight * (1 - dice.mean())
