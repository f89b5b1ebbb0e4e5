"""Networks for tests that need a model without BatchNorm (its batch statistics differ between one process and
the shards of several, so the same global batch gives other updates)."""
import atexit
import os

import torch
import torch.distributed as dist
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


class NaNOnRanks(NoNormNet):
    """A network whose output turns NaN at its `nan_call`-th training forward on the ranks `nan_ranks` of a
    several-process job (gradients included: the NaN flows back through it): a non-finite loss on some ranks only, at
    a known step. With `weights_dir`, each rank writes the weights it ended with to weights_dir/rank<r>.pth when its
    process exits (only rank 0 writes checkpoints)."""

    trained = None  # the instance that ran the last training forward: the one this rank trained

    def __init__(self, num_classes: int, in_channels: int, nan_ranks=(), nan_call: int = 0, weights_dir=None):
        super().__init__(num_classes, in_channels)
        self.nan_ranks, self.nan_call, self.weights_dir, self.calls = list(nan_ranks), nan_call, weights_dir, 0
        if weights_dir is not None:
            atexit.unregister(NaNOnRanks.write_weights)  # once, whichever instances the run builds
            atexit.register(NaNOnRanks.write_weights)

    def forward(self, x):
        out = super().forward(x)
        if not self.training:
            return out
        NaNOnRanks.trained = self
        self.calls += 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        return out * float("nan") if self.calls == self.nan_call and rank in self.nan_ranks else out

    @staticmethod
    def write_weights():
        net = NaNOnRanks.trained
        if net is not None and net.weights_dir is not None:
            rank = int(os.environ.get("RANK", "0"))  # the process group may be gone by now
            torch.save(net.state_dict(), os.path.join(net.weights_dir, f"rank{rank}.pth"))
