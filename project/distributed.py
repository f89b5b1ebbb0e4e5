"""One job on several processes: torch.distributed (DDP), started by torchrun or by SLURM tasks.

The ranks come from the launcher's environment (torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT;
SLURM with several tasks: submitit's TorchDistributedEnvironment). One process, as before, when nothing says
otherwise. Rank 0 decides the run dir and is the only one that writes it; every step consumes the global batch
a single process would (trainer.batch_size split across the ranks); the ranks agree on stopping, and on dropping
a non-finite step, at step edges.
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from project.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


_current = Dist()
_device = torch.device("cpu")  # where small collectives put their tensors: the GPU under NCCL


def current() -> Dist:
    return _current


def from_env() -> Dist:
    """The ranks the launcher started: torchrun's variables, else SLURM's tasks (through submitit)."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env:
        return Dist(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")),
                    int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        from submitit.helpers import TorchDistributedEnvironment

        tde = TorchDistributedEnvironment().export()  # sets MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK
        return Dist(tde.rank, tde.world_size, tde.local_rank, tde.local_world_size)
    return Dist()


def init(timeout_s: float) -> Dist:
    """Join the process group (NCCL on GPUs, gloo on the CPU); a no-op for one process."""
    global _current, _device
    dist = from_env()
    if dist.enabled and not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist.local_rank)
            _device = torch.device("cuda", dist.local_rank)
        torch_dist.init_process_group(backend, rank=dist.rank, world_size=dist.world,
                                      timeout=datetime.timedelta(seconds=timeout_s))
    _current = dist
    return dist


def close() -> None:
    """Leave the process group once training has returned, as torch asks: left to the interpreter's exit, gloo's
    threads are torn down by static destructors, and a rank aborted now and then after finishing ("terminate called
    without an active exception", exit -6), failing a run that had saved everything."""
    if _current.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def broadcast(obj):
    """Rank 0's value on every rank."""
    if not _current.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's value, in rank order, on every rank."""
    if not _current.enabled:
        return [obj]
    out = [None] * _current.world
    torch_dist.all_gather_object(out, obj)
    return out


def agree_step(signum: int | None, bad: torch.Tensor) -> tuple[int | None, bool]:
    """What every rank decides at an optimizer step, in one tiny collective (MAX) and one host sync: the stop signal
    any rank caught (the highest number: all ranks stop at the same step), and whether any rank's loss in this
    window was not finite (`bad`, a device flag: with trainer.on_nonfinite=skip all ranks drop the update, since the
    averaged gradients carry one rank's NaN to every rank)."""
    flags = torch.zeros(2, dtype=torch.int64, device=_device)
    flags[0] = signum or 0
    flags[1].copy_(bad)
    torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
    signum, any_bad = flags.tolist()
    return signum or None, bool(any_bad)


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (a copy), e.g. the epoch's train loss."""
    if not _current.enabled:
        return value
    value = value.clone()
    torch_dist.all_reduce(value)
    return value / _current.world


def sum_counts(tree):
    """A metric meter's state (counts and sums: tensors, numbers, dicts of them) summed over the ranks: the
    job's counts. One process: unchanged."""
    if not _current.enabled:
        return tree
    if isinstance(tree, dict):
        return {k: sum_counts(v) for k, v in tree.items()}
    if torch.is_tensor(tree):
        total = tree.to(_device, copy=True)
        torch_dist.all_reduce(total)
        return total.to(tree.device)
    total = torch.tensor(float(tree), dtype=torch.float64, device=_device)
    torch_dist.all_reduce(total)
    return type(tree)(total.item())


def zeros_like(tree):
    """The same structure with every count 0: what ranks other than 0 resume a meter with (rank 0 holds the job's
    counts so far)."""
    if isinstance(tree, dict):
        return {k: zeros_like(v) for k, v in tree.items()}
    return torch.zeros_like(tree) if torch.is_tensor(tree) else type(tree)(0)


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch (contiguous parts, sizes differ by at most one)."""
    if not _current.enabled:
        return indices
    return indices.tensor_split(_current.world)[_current.rank]


def check_batch(batch_size: int) -> None:
    if _current.enabled and batch_size % _current.world:
        raise UserError(f"trainer.batch_size={batch_size} does not divide by the {_current.world} processes of this "
                        f"job: it is the global batch, split across them. Use a multiple of {_current.world}, e.g. "
                        f"trainer.batch_size={_current.world * max(1, batch_size // _current.world)}.")


def barrier() -> None:
    if _current.enabled:
        torch_dist.barrier()

