"""Batches in a fixed order per (seed, epoch), so a run can resume at any batch by index.

Resuming mid-epoch slices the epoch's batch list instead of replaying the loader, and the order never draws
from the global RNG, so restoring the RNG state is enough to make a resumed run match an uninterrupted one.
"""
import torch
from torch.utils.data import DataLoader, Dataset


class TensorSamples(Dataset):
    """An in-memory dataset of aligned tensors (images, targets, ...), indexed a whole batch at a time."""

    def __init__(self, *tensors: torch.Tensor):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        return tuple(t[i] for t in self.tensors)


def batch_order(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[torch.Tensor]:
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    else:
        order = torch.arange(n)
    return list(order.split(batch_size))


def epoch_batches(dataset, batch_size: int, *, seed: int, epoch: int, start: int = 0, shuffle: bool = True,
                  num_workers: int = 0, pin_memory: bool = False, shard=None):
    """Yield batches (tuples of tensors) start, start+1, ... of this epoch's order. `shard` maps a global batch's
    indices to this process's part (several processes, one job): the order, hence the samples of each optimizer
    step, do not depend on how many processes share them."""
    batches = batch_order(len(dataset), batch_size, seed, epoch, shuffle)[start:]
    if shard is not None:
        batches = [shard(b) for b in batches]
    if isinstance(dataset, TensorSamples):
        return (dataset[b] for b in batches)
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed + epoch),
                      persistent_workers=False)
