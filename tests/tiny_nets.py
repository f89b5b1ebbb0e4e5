"""Networks for tests that need a model without BatchNorm (its batch statistics differ between one process and
the shards of several, so the same global batch gives other updates)."""
from torch import nn


class NoNormNet(nn.Module):
    """(N, in_channels, H, W) -> (N, num_classes, H, W) per-pixel logits; convolutions and ReLUs only."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.head(self.body(x))


class FailsOnRank1(NoNormNet):
    """A network whose forward raises on rank 1 of a several-process job at its 3rd training call: one rank
    crashing while the others wait in a collective."""

    calls = 0

    def forward(self, x):
        import torch.distributed as dist

        if self.training and dist.is_initialized() and dist.get_rank() == 1:
            FailsOnRank1.calls += 1
            if FailsOnRank1.calls == 3:
                raise RuntimeError("rank 1 broke on purpose")
        return super().forward(x)
