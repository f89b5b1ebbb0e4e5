"""CEDiceLoss against the textbook formula it replaced (a one-hot of the batch, the ignore mask multiplied in)."""
import pytest
import torch
import torch.nn.functional as F

from project.losses import CEDiceLoss


def one_hot_formula(logits, target, dice_weight=1.0, ignore_index=255, smooth=1.0):
    """The loss as it was written before (an int64 one-hot, probabilities times the mask)."""
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    valid = (target != ignore_index).unsqueeze(1)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.where(valid.squeeze(1), 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return ce + dice_weight * (1 - ((2 * inter + smooth) / (denom + smooth)).mean())


@pytest.mark.parametrize("ignored", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("dice_weight", [0.0, 1.0, 2.5])
def test_value_and_gradient_equal_the_one_hot_formula(ignored, dice_weight):
    g = torch.Generator().manual_seed(int(ignored * 10 + dice_weight * 100))
    logits = torch.randn(3, 5, 17, 13, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 17, 13), generator=g)  # class 4 never present: its Dice term still counts
    target[torch.rand(target.shape, generator=g) < ignored] = 255
    mine, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    a = CEDiceLoss(dice_weight=dice_weight)(mine, target)
    b = one_hot_formula(theirs, target, dice_weight=dice_weight)
    if ignored == 1.0:  # cross-entropy over no pixel is NaN in both
        assert a.isnan() and b.isnan()
        return
    a.backward(), b.backward()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-12)


def test_float32_batch_of_the_story_size_matches_to_float_tolerance():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 64, 64, generator=g)
    target = torch.randint(0, 19, (2, 64, 64), generator=g)
    target[:, :5] = 255
    torch.testing.assert_close(CEDiceLoss()(logits, target), one_hot_formula(logits, target), rtol=1e-5, atol=1e-6)
